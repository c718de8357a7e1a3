"""RequestDrafter: the per-request draft source the decode loop holds."""

import json
import subprocess
import sys

import numpy as np
import pytest
from triehelpers import trie_from_paths, window_counts

from trie_store import Draft, Drafter, RequestDrafter, TrieConfig


def test_drafts_continuation_of_the_prompt_and_passages():
    drafter = RequestDrafter([1, 2, 3, 4, 5, 1, 2, 3, 6], passages=[[7, 1, 2, 3, 4, 9]])
    draft = drafter.draft([0, 1, 2, 3], 8)
    draft.validate()
    # "1 2 3" occurs three times: continued by "4 5 ..." (prompt), "6" (prompt), "4 9" (passage)
    assert draft.tokens.tolist()[:5] == [3, 4, 6, 5, 9]
    assert draft.parent.tolist()[:5] == [-1, 0, 0, 1, 1]
    assert draft.scores[1:5].tolist() == pytest.approx([2 / 4, 1 / 4, 2 / 4 * 1 / 3, 2 / 4 * 1 / 3])


def test_observe_lets_the_answer_continue_the_prompt():
    drafter = RequestDrafter([10, 11, 12])
    assert drafter.draft([12, 13], 4).size == 0
    drafter.observe([13, 14, 10, 11])
    draft = drafter.draft([10, 11], 4)  # "10 11" -> "12 13 14" via prompt + answer
    assert draft.tokens.tolist() == [11, 12, 13, 14, 10]


def test_global_channel_fills_in_what_the_request_lacks():
    config = TrieConfig(branch_length=4)
    shared = trie_from_paths(window_counts([[5, 6, 7, 8]], 4), config)
    drafter = RequestDrafter([1, 2, 5, 9], config=config, global_trie=shared)
    draft = drafter.draft([4, 5], 4)
    draft.validate()
    # the request channel's 9 (1/2, weighted 0.9) ranks first; the global chain 6 7 8
    # (1/2, 1/4, 1/8, weighted 0.1) fills the rest of the budget
    assert draft.tokens.tolist() == [5, 9, 6, 7, 8]
    assert draft.parent.tolist() == [-1, 0, 0, 2, 3]
    assert draft.scores[1:].tolist() == pytest.approx([0.45, 0.05, 0.025, 0.0125])
    assert drafter.draft([4, 3], 4) == Draft.root_only(3)  # neither channel knows "3"


def test_is_a_drafter_and_rejects_bad_input():
    drafter: Drafter = RequestDrafter([1, 2, 3])
    assert drafter.draft([1, 2], 0) == Draft.root_only(2)
    with pytest.raises(ValueError, match="context"):
        drafter.draft([], 4)
    with pytest.raises(ValueError, match="negative"):
        drafter.observe(np.array([1, -2]))
    with pytest.raises(ValueError, match="request_weight"):
        RequestDrafter([1], request_weight=1.5)


def imported_by(statement: str, names: set[str]) -> list[str]:
    """Which of `names` a fresh interpreter has in sys.modules after `statement`."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted({names!r} & set(sys.modules))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_trie_store_imports_neither_torch_nor_ray():
    assert imported_by("import trie_store, trie_store.sharing", {"torch", "ray"}) == []


def test_the_drafting_half_imports_nothing_of_the_sharing_half():
    names = {"trie_store.sharing", "redis", "prometheus_client"}
    assert imported_by("import trie_store", names) == []
    assert imported_by("import trie_store.sharing", names) == ["redis", "trie_store.sharing"]
