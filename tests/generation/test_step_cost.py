import json
import time

import numpy as np
import pytest
import torch
from genhelpers import cheap_costs, tiny_model

import generation.step_cost as step_cost
from generation.models import LoadedModel
from generation.step_cost import (
    BatchCosts,
    CostFeedback,
    StepCostCurve,
    batch_qs,
    batch_sizes,
    load_or_measure,
    measure_step_costs,
    row_sizes,
    tree_draft,
)


def curve(t_ms: dict[int, float]) -> StepCostCurve:
    return StepCostCurve(t_ms=t_ms, device="cpu", dtype="float32", model="m", threads=2)


def test_time_interpolates_between_measured_points():
    c = curve({1: 30.0, 4: 60.0, 16: 120.0})
    assert c.time(1) == 30.0
    assert c.time(4) == 60.0
    assert c.time(2) == pytest.approx(40.0)
    assert c.time(10) == pytest.approx(90.0)
    np.testing.assert_allclose(c.times(np.array([1, 2, 16])), [30.0, 40.0, 120.0])


def test_time_outside_the_measured_range():
    c = curve({2: 40.0, 4: 50.0, 8: 70.0})
    assert c.time(1) == 40.0  # flat below the first point
    assert c.time(12) == pytest.approx(90.0)  # the last slope, 5 ms per token, above
    falling = curve({1: 40.0, 16: 30.0})
    assert falling.time(64) == 30.0  # never extrapolated downwards
    with pytest.raises(ValueError, match="q >= 1"):
        c.time(0)


def test_curve_rejects_empty_or_non_positive_times():
    for bad in ({}, {1: 0.0}, {0: 5.0}, {1: -2.0}):
        with pytest.raises(ValueError, match="positive"):
            curve(bad)


def test_curve_json_round_trip_sorts_and_keeps_fields():
    c = curve({16: 33.5, 1: 30.0})
    back = StepCostCurve.from_json(c.to_json())
    assert list(back.t_ms) == [1, 16]
    assert back.t_ms == {1: 30.0, 16: 33.5}
    assert (back.device, back.dtype, back.model, back.threads, back.batch) == (
        "cpu",
        "float32",
        "m",
        2,
        1,
    )


@pytest.mark.parametrize("q", [1, 2, 5, 16, 64])
def test_tree_draft_is_a_valid_best_first_tree_with_branches(q):
    draft = tree_draft(q, np.random.default_rng(q), vocab=100)
    draft.validate()
    assert len(draft) == q
    if q >= 4:  # not just a chain
        assert draft.depth.max() < q - 1


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    model = tiny_model("llama", dtype=torch.float32)
    return LoadedModel(model=model, tokenizer=None, name="tiny/llama")


def test_measure_gives_a_curve_for_each_q(tiny):
    c = measure_step_costs(tiny, qs=(4, 1, 4), context_len=40, repeats=2, warmup=1)
    assert list(c.t_ms) == [1, 4]
    assert all(t > 0 for t in c.t_ms.values())
    assert (c.device, c.dtype, c.model, c.context_len) == ("cpu", "float32", "tiny/llama", 40)
    assert c.threads == torch.get_num_threads()
    assert c.batch == 1
    pair = measure_step_costs(tiny, qs=(1, 2), context_len=40, repeats=1, warmup=0, batch=2)
    assert pair.batch == 2
    assert list(pair.t_ms) == [1, 2]


def test_measure_rejects_bad_settings(tiny):
    with pytest.raises(ValueError, match="context window"):
        measure_step_costs(tiny, qs=(1, 64), context_len=460)  # 524 > 512
    with pytest.raises(ValueError, match="positive"):
        measure_step_costs(tiny, qs=(0, 1), context_len=10)
    with pytest.raises(ValueError, match="repeats"):
        measure_step_costs(tiny, qs=(1,), context_len=10, repeats=0)
    with pytest.raises(ValueError, match="batch"):
        measure_step_costs(tiny, qs=(1,), context_len=10, batch=0)


def test_load_or_measure_caches_per_setup(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKAHEAD_RAG_CACHE", str(tmp_path))
    calls = []

    def fake_measure(lm, **kwargs):
        calls.append(kwargs)
        return curve({1: 10.0, 32: 20.0})

    monkeypatch.setattr(step_cost, "measure_step_costs", fake_measure)
    monkeypatch.setattr(step_cost, "BUSY_SHARE", 0.0)  # the fake takes no CPU time
    first = load_or_measure(tiny, batch=1)
    assert first.t_ms == {1: 10.0, 32: 20.0}
    assert len(calls) == 1
    assert calls[0]["qs"] == list(step_cost.STARTUP_QS)  # the short start-up measurement
    assert calls[0]["batch"] == 1
    path = step_cost.curve_path(tiny, batch=1)
    assert path.parent == tmp_path / "step_costs"
    assert json.loads(path.read_text())["t_ms"] == {"1": 10.0, "32": 20.0}
    assert load_or_measure(tiny, batch=1).t_ms == first.t_ms  # read back, not measured
    assert len(calls) == 1
    path.write_text("{not json")
    assert load_or_measure(tiny, batch=1).t_ms == first.t_ms  # a corrupt file is measured again
    assert len(calls) == 2
    assert step_cost.curve_path(tiny, batch=2) != path  # another batch size: another curve
    assert step_cost.curve_path(tiny, batch=1, ragged=True) != path  # another layout too
    # another thread count is another setup: another file
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert step_cost.curve_path(tiny, batch=1) != path
    finally:
        torch.set_num_threads(threads)


def test_batch_cost_surface_interpolates_between_measured_sizes():
    costs = cheap_costs()
    for b in (1, 2, 4):
        np.testing.assert_allclose(costs.times(b, np.array([2.0])), 10 + 0.5 * b + 0.1 * b)
    np.testing.assert_allclose(costs.times(3, np.array([1.0])), 10 + 1.5 + 0.15)  # linear in b
    np.testing.assert_allclose(costs.times(8, np.array([1.0])), 10 + 4 + 0.4)  # the last slope
    assert batch_sizes(16) == [1, 2, 4, 8, 16]
    assert batch_sizes(6) == [1, 2, 4, 6]
    assert batch_qs(16) == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="batch sizes"):
        BatchCosts({})


def test_a_measurement_that_never_had_the_cpu_is_used_but_not_cached(
    tiny, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("LOOKAHEAD_RAG_CACHE", str(tmp_path))
    calls = []

    def sleepy_measure(lm, **kwargs):  # wall time passes, no CPU time: someone else ran
        calls.append(kwargs)
        time.sleep(0.05)
        return curve({1: 10.0, 32: 20.0})

    monkeypatch.setattr(step_cost, "measure_step_costs", sleepy_measure)
    assert load_or_measure(tiny, batch=2, ragged=True).t_ms == {1: 10.0, 32: 20.0}
    assert len(calls) == 1
    assert calls[0]["ragged"] is True
    assert not step_cost.curve_path(tiny, batch=2, ragged=True).exists()
    assert "busy" in caplog.text


@pytest.mark.parametrize(("q", "batch"), [(1, 8), (4, 1), (4, 8), (3, 5)])
def test_ragged_rows_average_q(q, batch):
    sizes = row_sizes(q, batch, ragged=True)
    assert len(sizes) == batch
    assert sum(sizes) == q * batch
    assert row_sizes(q, batch, ragged=False) == [q] * batch


def test_feedback_moves_the_surface_towards_the_passes_it_sees():
    costs = BatchCosts({1: curve({1: 50.0, 16: 100.0}), 8: curve({1: 100.0, 16: 300.0})})
    feedback = CostFeedback(costs, weight=0.5)
    assert feedback.times(8, np.array([1.0]))[0] == 100.0  # nothing seen: the curve
    for _ in range(20):
        feedback.observe(8, 1.0, 140.0)  # longer caches than the curve's: 40 ms more
    assert feedback.times(8, np.array([1.0]))[0] == pytest.approx(140.0, rel=1e-3)
    assert feedback.times(1, np.array([1.0]))[0] == 50.0  # per batch size
    for _ in range(50):
        feedback.observe(8, 1.0, 1.0)  # never below half the curve
    assert feedback.times(8, np.array([1.0]))[0] == 50.0
