"""Hypothesis properties of drafts from both channels, and a cross-check of the two.

The request channel (`NgramIndex`: occurrences expanded at draft time) and the global channel
(`GlobalTrie`: stored nodes, built here by the test oracle from every window's prefixes) are
independent implementations of one definition, so on the same data they must draft the same
subtree with the same scores.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from triehelpers import draft_paths, scored_paths, trie_from_paths, window_counts

from trie_store import (
    Draft,
    GlobalTrie,
    NgramIndex,
    RequestDrafter,
    TrieConfig,
    ancestor_mask,
    merge_drafts,
)

tokens = st.lists(st.integers(0, 5), min_size=1, max_size=60)
configs = st.builds(
    TrieConfig,
    branch_length=st.integers(0, 6),
    max_context=st.integers(1, 4),
    prior=st.sampled_from([0.0, 0.5, 1.0]),
)
budgets = st.integers(0, 40)
FAST = settings(max_examples=60, deadline=None)


def global_trie(segments: list[list[int]], config: TrieConfig) -> GlobalTrie:
    return trie_from_paths(window_counts(segments, config.branch_length), config)


def occurs(needle: list[int], segments: list[list[int]]) -> bool:
    n = len(needle)
    return any(seg[i : i + n] == needle for seg in segments for i in range(len(seg) - n + 1))


def check_draft(draft: Draft, context: list[int], budget: int, config: TrieConfig, segments):
    draft.validate()
    assert draft.tokens[0] == context[-1]
    assert draft.size <= budget
    for i, path in enumerate(draft_paths(draft)):
        assert draft.depth[i] == len(path)  # depth is the distance to the root
    mask = ancestor_mask(draft)
    for i in range(len(draft)):
        ancestors, j = {i}, i
        while j > 0:
            j = int(draft.parent[j])
            ancestors.add(j)
        assert set(np.flatnonzero(mask[i]).tolist()) == ancestors
    # matched on some k context tokens: each drafted path extends them to a stored n-gram
    width = config.branch_length + 1
    for path in draft_paths(draft)[1:]:
        assert any(
            k + len(path) <= width and occurs(context[len(context) - k :] + list(path), segments)
            for k in range(1, min(config.max_context, len(context)) + 1)
        ), path


@FAST
@given(st.lists(tokens, min_size=1, max_size=3), tokens, configs, budgets)
def test_request_drafts_are_valid_trees_of_stored_ngrams(segments, context, config, budget):
    draft = NgramIndex(segments, config).draft(context, budget)
    check_draft(draft, context, budget, config, segments)


@FAST
@given(st.lists(tokens, min_size=1, max_size=3), tokens, configs, budgets)
def test_global_drafts_are_valid_trees_of_stored_ngrams(segments, context, config, budget):
    trie = global_trie(segments, config)
    check_draft(trie.draft(context, budget), context, budget, config, segments)


@FAST
@given(st.lists(tokens, min_size=1, max_size=3), tokens, configs)
def test_request_and_global_tries_agree(segments, context, config):
    # an empty last segment closes the live one, whose open end the request index leaves out
    request = NgramIndex([*segments, []], config, max_matches=1000)
    shared = global_trie(segments, config)
    a, b = request.draft(context, 10_000), shared.draft(context, 10_000)
    assert scored_paths(a) == scored_paths(b)


@FAST
@given(tokens, st.lists(st.integers(1, 5), min_size=1, max_size=12), configs, budgets)
def test_observing_the_answer_equals_seeding_with_it(prompt, steps, config, budget):
    answer = [(7 * i + s) % 6 for i, s in enumerate(steps)]
    drafter = RequestDrafter(prompt, config=config)
    context = list(prompt)
    for token in answer:
        drafter.observe([token])
        context.append(token)
    seeded = NgramIndex([context], config)
    assert drafter.draft(context, budget) == seeded.draft(context, budget)


@FAST
@given(
    st.lists(tokens, min_size=1, max_size=3),
    st.lists(tokens, min_size=1, max_size=3),
    tokens,
    configs,
    budgets,
    st.floats(0, 1),
)
def test_merged_drafts_hold_each_path_once(
    request_segments, global_segments, context, config, budget, weight
):
    shared = global_trie(global_segments, config)
    a = NgramIndex(request_segments, config).draft(context, budget)
    b = shared.draft(context, budget)
    merged = merge_drafts(a, b, budget, weight)
    merged.validate()  # includes: no two siblings with one token, i.e. no duplicate path
    assert merged.size <= budget
    union = set(draft_paths(a)) | set(draft_paths(b))
    assert set(draft_paths(merged)) <= union
    assert merged.size == min(budget, len(union) - 1)  # nothing lost but what the budget cut


junk = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.floats(allow_nan=True),
    st.integers(-(2**70), 2**70),
    st.lists(st.one_of(st.integers(-3, 3), st.floats(-2, 2), st.text(max_size=1)), max_size=4),
    st.lists(st.lists(st.integers(0, 3), max_size=2), max_size=3),
)


@FAST
@given(junk, junk)
def test_junk_input_gives_a_value_error_or_a_valid_result(tokens, budget):
    drafter = RequestDrafter([1, 2, 3, 1, 2], global_trie=GlobalTrie())
    for call in (
        lambda: drafter.draft(tokens, budget),
        lambda: drafter.draft(tokens, 4),
        lambda: drafter.observe(tokens),
        lambda: GlobalTrie.from_arrays(tokens, tokens, budget).draft([1, 2], 4),
    ):
        try:
            result = call()
        except ValueError:
            continue
        if isinstance(result, Draft):
            result.validate()
