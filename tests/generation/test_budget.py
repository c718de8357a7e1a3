import itertools

import numpy as np
import pytest
from genhelpers import seen_once
from hypothesis import given
from hypothesis import strategies as st

from generation.budget import choose_nodes, choose_rows
from generation.step_cost import BatchCosts, StepCostCurve
from trie_store.draft import Draft


def curve(t_ms: dict[int, float]) -> StepCostCurve:
    return StepCostCurve(t_ms=t_ms, device="test", dtype="float32", model="test", threads=1)


def choose_draft_size(draft: Draft, cost: StepCostCurve, max_size: int) -> int:
    """A lone sequence's draft size: the batch's choice at b = 1, as the decoder makes it."""
    k = min(max_size, draft.size)
    return choose_rows([draft.expected_accepted()[: k + 1]], cost.times) - 1


# Shapes of the curves measured here: a CPU where t(q) grows with q, a GPU where it stays flat.
CPU = curve({1: 48.0, 2: 77.0, 4: 104.0, 8: 94.0, 16: 116.0, 32: 150.0, 64: 260.0})
GPU = curve({1: 10.0, 2: 10.0, 4: 10.1, 8: 10.2, 16: 10.4, 32: 10.8, 64: 11.5})


def chain(scores: list[float]) -> Draft:
    """A one-branch draft whose node `i` is accepted with probability `scores[i]`."""
    n = len(scores)
    return Draft(
        tokens=np.arange(n + 1, dtype=np.int64),
        parent=np.arange(-1, n, dtype=np.int32),
        depth=np.arange(n + 1, dtype=np.int32),
        scores=np.array([1.0, *scores]),
    )


def test_no_draft_means_a_plain_step():
    assert choose_draft_size(Draft.root_only(7), CPU, 16) == 0
    assert choose_draft_size(Draft.root_only(7), GPU, 16) == 0


def test_weak_draft_is_dropped_on_cpu_but_verified_on_gpu():
    draft = chain([0.3, 0.2, 0.1, 0.05])
    # CPU: the best k (1) yields 1.3 tokens for 77 ms, worse than 1 token for 48 ms.
    assert choose_draft_size(draft, CPU, 16) == 0
    # GPU: every extra node costs almost nothing, so all four are worth verifying.
    assert choose_draft_size(draft, GPU, 16) == 4


def test_cpu_picks_the_k_with_the_best_rate():
    # 16 nodes, each almost surely accepted: (1 + 16 * 0.95) / t(17) = 16.2 / 118.1 beats
    # 15 nodes at (1 + 15 * 0.95) / t(16) = 15.25 / 116 and every shorter cut
    draft = chain([0.95] * 16)
    assert choose_draft_size(draft, CPU, 16) == 16
    # capped by max_size, the best that is allowed
    assert choose_draft_size(draft, CPU, 7) == 7


def test_non_monotone_curve_can_skip_to_a_cheaper_larger_pass():
    # t(4) = 104 > t(8) = 94 on this CPU: a draft good enough for 3 nodes takes 7 instead
    draft = chain([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.01])
    assert choose_draft_size(draft, CPU, 16) == 7


def test_ties_go_to_the_smaller_draft():
    flat = curve({1: 10.0, 64: 10.0})
    assert choose_draft_size(chain([0.5, 0.0, 0.0]), flat, 16) == 1


def test_max_size_zero_is_a_plain_step():
    assert choose_draft_size(chain([0.99] * 4), GPU, 0) == 0


@given(
    scores=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=40).map(
        lambda s: sorted(s, reverse=True)
    ),
    max_size=st.integers(0, 50),
    times=st.lists(st.floats(1.0, 500.0), min_size=7, max_size=7),
)
def test_choice_is_the_exhaustive_best(scores, max_size, times):
    cost = curve(dict(zip((1, 2, 4, 8, 16, 32, 64), times, strict=True)))
    draft = chain(scores)
    k = choose_draft_size(draft, cost, max_size)
    assert 0 <= k <= min(max_size, draft.size)
    out = draft.expected_accepted()
    rates = [(1 + out[j]) / cost.time(j + 1) for j in range(min(max_size, draft.size) + 1)]
    assert rates[k] == pytest.approx(max(rates), rel=1e-12)
    assert rates[k] >= rates[0]  # never worse than the plain step by the model's own measure


def test_joint_choice_shrinks_drafts_as_the_batch_grows():
    costs = BatchCosts(
        {
            b: StepCostCurve(
                {q: 20.0 + 6.0 * b * q for q in (1, 2, 4, 8, 16)}, "cpu", "float32", "m", 2, batch=b
            )
            for b in (1, 2, 4, 8)
        }
    )  # fmt: skip: weights streamed once a pass, then every row costs the same
    good = seen_once(8).expected_accepted()
    for b, want in ((1, True), (8, False)):
        q = choose_rows([good] * b, lambda qs, b=b: costs.times(b, qs))
        assert (q > 1) == want
    # a fixed draft size sets a floor; sequences with short drafts pad to it
    assert choose_rows([np.zeros(1), good], lambda qs: costs.times(2, qs), floor=5) >= 5


def test_ragged_choice_spends_nodes_where_they_are_accepted():
    # one confident sequence, one with nothing to copy: only the first gets nodes
    confident = chain([0.95] * 8).expected_accepted()
    nothing = chain([0.05] * 8).expected_accepted()
    nodes = choose_nodes([confident, nothing], lambda qs: 20.0 + 4.0 * qs)
    assert nodes[0] == 9
    assert nodes[1] == 1
    # a floor (a fixed draft size) is kept whatever it costs
    assert choose_nodes([confident, nothing], lambda qs: 20.0 + 4.0 * qs, [1, 5])[1] == 5
    # when a row costs more than any draft can pay back, plain steps
    assert choose_nodes([confident, nothing], lambda qs: 1.0 + 100.0 * qs) == [1, 1]


sorted_scores = st.lists(st.floats(0.0, 1.0), min_size=0, max_size=4).map(
    lambda s: sorted(s, reverse=True)
)


@given(
    drafts=st.lists(sorted_scores, min_size=1, max_size=3),
    floors=st.lists(st.integers(1, 5), min_size=3, max_size=3),
    base=st.floats(1.0, 100.0),
    slope=st.floats(0.0, 50.0),
)
def test_ragged_choice_is_the_exhaustive_best(drafts, floors, base, slope):
    expected = [chain(s).expected_accepted() for s in drafts]
    floors = [min(f, len(e)) for f, e in zip(floors, expected, strict=False)]

    def times(qs):
        return base + slope * np.asarray(qs, dtype=float)

    def rate(nodes):
        tokens = sum(1.0 + e[n - 1] for e, n in zip(expected, nodes, strict=True))
        return tokens / float(times(sum(nodes) / len(nodes)))

    nodes = choose_nodes(expected, times, floors)
    assert all(f <= n <= len(e) for f, n, e in zip(floors, nodes, expected, strict=True))
    every = itertools.product(
        *[range(f, len(e) + 1) for f, e in zip(floors, expected, strict=True)]
    )
    assert rate(nodes) == pytest.approx(max(map(rate, every)), rel=1e-9)
