"""The Draft contract between the trie store and the verifier."""

import numpy as np
import pytest

from trie_store import Draft, ancestor_mask


def tree() -> Draft:
    #        0(root=7)
    #       /        \
    #     1(8)       2(9)
    #    /    \        \
    #  3(10)  4(11)    5(12)
    return Draft(
        tokens=np.array([7, 8, 9, 10, 11, 12], dtype=np.int64),
        parent=np.array([-1, 0, 0, 1, 1, 2], dtype=np.int32),
        depth=np.array([0, 1, 1, 2, 2, 2], dtype=np.int32),
        scores=np.array([1.0, 0.6, 0.3, 0.3, 0.2, 0.1]),
    )


def test_root_only_is_an_ordinary_decoding_step():
    draft = Draft.root_only(42)
    draft.validate()
    assert (len(draft), draft.size) == (1, 0)
    assert draft.tokens.tolist() == [42]
    assert ancestor_mask(draft).tolist() == [[True]]


def test_ancestor_mask_is_the_ancestor_relation():
    mask = ancestor_mask(tree())
    assert mask.astype(int).tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1],
    ]


def test_truncate_keeps_the_best_nodes_as_a_tree():
    cut = tree().truncate(3)
    cut.validate()
    assert cut.tokens.tolist() == [7, 8, 9, 10]
    assert tree().truncate(0) == Draft.root_only(7)
    assert tree().truncate(99).size == 5
    with pytest.raises(ValueError, match="size"):
        tree().truncate(-1)


def test_expected_accepted_sums_the_scores():
    assert tree().expected_accepted().tolist() == pytest.approx([0, 0.6, 0.9, 1.2, 1.4, 1.5])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("parent", [-1, 0, 0, 4, 1, 2], "before its child"),
        ("parent", [0, 0, 0, 1, 1, 2], "root"),
        ("depth", [0, 1, 1, 2, 3, 2], "depth"),
        ("scores", [1.0, 0.3, 0.6, 0.3, 0.2, 0.1], "non-increasing"),
        ("scores", [0.5, 0.3, 0.3, 0.3, 0.2, 0.1], "scores"),
        ("scores", [1.0, 1.5, 0.3, 0.3, 0.2, 0.1], "scores"),
        ("tokens", [7, 8, -9, 10, 11, 12], "non-negative"),
        ("tokens", [7, 8, 8, 10, 11, 12], "same token"),
        ("depth", [0, 1, 1, 2, 2], "shape"),
    ],
)
def test_validate_names_what_is_wrong(field, value, message):
    good = tree()
    arrays = {f: getattr(good, f) for f in ("tokens", "parent", "depth", "scores")}
    arrays[field] = np.array(value, dtype=arrays[field].dtype)
    with pytest.raises(ValueError, match=message):
        Draft(**arrays).validate()
