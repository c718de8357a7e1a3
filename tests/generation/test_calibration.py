"""Per-request calibration: drafts deepen where a request keeps accepting them and shrink where
it keeps rejecting them."""

import numpy as np
from genhelpers import seen_once

from generation.calibration import Calibrator
from trie_store.draft import Draft


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
