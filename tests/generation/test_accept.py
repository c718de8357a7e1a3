"""Greedy and sampling acceptance on hand-built trees, model choices and distributions."""

import itertools
from collections import Counter

import numpy as np
import torch
from genhelpers import chain, tree
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from generation.accept import greedy_accept, sample_accept


def test_root_only_emits_the_models_choice():
    nodes, tokens = greedy_accept(chain([], root=9), np.array([4]))
    assert nodes.tolist() == [0]
    assert tokens.tolist() == [4]


def test_whole_chain_accepted_plus_bonus():
    nodes, tokens = greedy_accept(chain([5, 6, 7], root=9), np.array([5, 6, 7, 8]))
    assert nodes.tolist() == [0, 1, 2, 3]
    assert tokens.tolist() == [5, 6, 7, 8]


def test_chain_rejected_midway_takes_the_models_token_there():
    nodes, tokens = greedy_accept(chain([5, 6, 7], root=9), np.array([5, 3, 7, 8]))
    assert nodes.tolist() == [0, 1]
    assert tokens.tolist() == [5, 3]


def test_second_branch_accepted_gives_non_contiguous_path():
    #        0(r)
    #       /    \
    #     1(5)   2(7)
    #      |      |
    #     3(8)   4(9)
    draft = tree([1, 5, 7, 8, 9], [-1, 0, 0, 1, 2])
    nodes, tokens = greedy_accept(draft, np.array([7, 8, 9, 0, 3]))
    assert nodes.tolist() == [0, 2, 4]
    assert tokens.tolist() == [7, 9, 3]


def test_first_of_two_equal_siblings_is_taken():
    draft = tree([1, 5, 5, 6], [-1, 0, 0, 2])
    nodes, tokens = greedy_accept(draft, np.array([5, 2, 6, 0]))
    assert nodes.tolist() == [0, 1]
    assert tokens.tolist() == [5, 2]


@st.composite
def trees_and_targets(draw):
    n = draw(st.integers(1, 40))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    target = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return tree(tokens, parents), np.array(target)


@settings(max_examples=300, deadline=None)
@given(trees_and_targets())
def test_accepted_path_is_the_longest_greedy_walk(case):
    draft, target = case
    nodes, tokens = greedy_accept(draft, target)
    assert nodes[0] == 0
    assert len(tokens) == len(nodes)
    for prev, node in itertools.pairwise(nodes):
        assert draft.parent[node] == prev
        assert draft.tokens[node] == target[prev]
    last = nodes[-1]
    assert tokens[-1] == target[last]
    children = np.flatnonzero(draft.parent == last)
    assert not np.any(draft.tokens[children] == target[last])
    assert np.array_equal(tokens[:-1], draft.tokens[nodes[1:]])


@settings(max_examples=200, deadline=None)
@given(trees_and_targets())
def test_sampling_a_point_mass_is_greedy_acceptance(case):
    draft, target = case

    def one_hot(node):
        p = torch.zeros(4, dtype=torch.float64)
        p[target[node]] = 1.0
        return p

    nodes, tokens = sample_accept(draft, one_hot, torch.Generator().manual_seed(0))
    expected_nodes, expected_tokens = greedy_accept(draft, target)
    assert nodes.tolist() == expected_nodes.tolist()
    assert tokens.tolist() == expected_tokens.tolist()


def test_sample_accept_emits_exactly_the_target_distribution():
    """On a fixed tree with fixed per-node distributions, the emitted sequences follow the
    chain rule of those distributions (chi-square goodness of fit at alpha 1e-3)."""
    #          0
    #       /  |  \
    #    1(2) 2(0) 3(4)
    #    / \         |
    # 4(1) 5(3)     6(2)
    draft = tree([9, 2, 0, 4, 1, 3, 2], [-1, 0, 0, 0, 1, 1, 3])
    rng = np.random.default_rng(3)
    dists = [rng.dirichlet(np.ones(5)) for _ in range(len(draft))]
    expected = Counter()

    def walk(node, probability, prefix):
        for token, p in enumerate(dists[node]):
            hit = np.flatnonzero((draft.parent == node) & (draft.tokens == token))
            if hit.size:
                walk(int(hit[0]), probability * p, (*prefix, token))
            else:
                expected[(*prefix, token)] += probability * p

    walk(0, 1.0, ())
    generator = torch.Generator().manual_seed(11)
    n = 20_000
    seen = Counter()
    for _ in range(n):
        _, tokens = sample_accept(draft, lambda node: torch.tensor(dists[node]), generator)
        seen[tuple(tokens.tolist())] += 1
    assert set(seen) <= set(expected)
    common = [o for o in expected if expected[o] * n >= 5]  # the rest pooled: chi-square's rule
    observed = [seen[o] for o in common] + [n - sum(seen[o] for o in common)]
    wanted = [expected[o] * n for o in common] + [n * (1 - sum(expected[o] for o in common))]
    assert chisquare(observed, wanted).pvalue > 1e-3
