"""The batch's small parts: calibration, the joint goodput choice, the t(b, q) surface, and the
probe that refuses a model that would not be lossless batched."""

import numpy as np
import pytest
import torch
from genhelpers import chain, cheap_costs, tiny_model

from generation import UnsupportedModelError
from generation.budget import choose_rows
from generation.calibration import Calibrator
from generation.step_cost import BatchCosts, StepCostCurve, batch_qs, batch_sizes
from generation.verify import check_tree_attention
from trie_store.draft import Draft


def seen_once(depth: int) -> Draft:
    """A chain the trie saw once: scores 1/2, 1/4, 1/8, ..."""
    d = chain(list(range(1, depth + 1)), root=0)
    return Draft(
        d.tokens, d.parent, d.depth, np.concatenate([[1.0], 0.5 ** np.arange(1, depth + 1)])
    )


def branching() -> Draft:
    """Two branches: the first (score 0.6) with a child, the second (0.3) with a child."""
    return Draft(
        tokens=np.array([0, 1, 2, 3, 4], dtype=np.int64),
        parent=np.array([-1, 0, 0, 1, 2], dtype=np.int32),
        depth=np.array([0, 1, 1, 2, 2], dtype=np.int32),
        scores=np.array([1.0, 0.6, 0.3, 0.3, 0.15]),
    )


def test_calibration_deepens_drafts_a_request_keeps_accepting():
    calibrator = Calibrator()
    draft = seen_once(10)
    assert calibrator.rescore(draft) == draft  # no history: the trie's own estimate
    for _ in range(20):
        verified = calibrator.rescore(draft).truncate(6)
        calibrator.observe(verified, np.arange(7))  # everything accepted
    rescored = calibrator.rescore(draft)
    rescored.validate()
    assert rescored.tokens.tolist() == draft.tokens.tolist()  # a chain keeps its order
    assert rescored.scores[5] > 0.5 > draft.scores[5] * 10
    assert rescored.expected_accepted()[10] > 5


def test_calibration_shrinks_drafts_a_request_keeps_rejecting():
    calibrator = Calibrator()
    draft = seen_once(6)
    for _ in range(20):
        calibrator.observe(calibrator.rescore(draft), np.array([0]))
    rescored = calibrator.rescore(draft)
    assert rescored.scores[1] < 0.1 < draft.scores[1]


def test_calibration_reorders_best_first_and_counts_only_reached_nodes():
    calibrator = Calibrator()
    draft = branching()
    calibrator.rescore(draft)
    calibrator.observe(draft, np.array([0, 2, 4]))  # the second branch was the right one
    # node 1 (0.6) and node 2 (0.3) were tried; node 3 was not (its parent was rejected)
    assert calibrator.trials.sum() == 3
    assert calibrator.hits.sum() == 2
    for _ in range(30):
        verified = calibrator.rescore(draft)
        accepted = [0, *np.flatnonzero(verified.tokens == 2), *np.flatnonzero(verified.tokens == 4)]
        calibrator.observe(verified, np.array(sorted(accepted)))
    rescored = calibrator.rescore(draft)
    rescored.validate()  # parents before children, scores non-increasing
    assert rescored.tokens[1] == 2  # the branch this request accepts now comes first


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


def test_model_that_mixes_up_rows_positions_is_refused():
    model = tiny_model("llama")
    check_tree_attention(model)  # as it is, fine
    forward = model.forward

    def first_row_positions(**kw):
        positions = kw.get("position_ids")
        if positions is not None and positions.shape[0] > 1:
            kw["position_ids"] = positions[:1].expand_as(positions).contiguous()
        return forward(**kw)

    model.forward = first_row_positions
    with pytest.raises(UnsupportedModelError, match="batched in rows of different lengths"):
        check_tree_attention(model)
    assert torch.get_num_threads() >= 1
