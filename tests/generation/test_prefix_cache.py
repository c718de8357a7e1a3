"""PrefixCache on hand-built token lists and KV tensors: whole-block matches of exactly the same
tokens at the same positions, copies of the right KV, the byte bound with LRU eviction of leaves,
pins, collisions, and (hypothesis) the same evictions as a naive reference model."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.prefix_cache import BLOCK, PrefixCache, block_key

LAYERS, HEADS, DIM = 2, 2, 3


def kv(tokens, capacity=None):
    """Per-layer keys and values `[HEADS, capacity, DIM]` whose entry at position i depends on
    every token up to i (as a model's KV does) and on the layer; zeros past the tokens."""
    capacity = len(tokens) if capacity is None else capacity
    keys, values = [], []
    for layer in range(LAYERS):
        k = torch.zeros(HEADS, capacity, DIM, dtype=torch.float64)
        for i in range(len(tokens)):
            k[:, i] = float(hash((layer, tuple(tokens[: i + 1]))) % 1_000_003)
        keys.append(k)
        values.append(-k)
    return keys, values


def block_bytes(block_size=BLOCK):
    return 2 * LAYERS * HEADS * block_size * DIM * 8  # keys and values, float64


def served(match, n=None):
    """The KV a match writes into an empty row of `n` positions."""
    n = match.n_tokens if n is None else n
    keys, values = kv([], capacity=n)
    match.copy_to(keys, values)
    return keys, values


def tokens_of(seed, n):
    return np.random.default_rng(seed).integers(0, 50_000, n).tolist()


def test_a_miss_then_a_hit_of_whole_blocks_with_the_same_kv():
    cache = PrefixCache(max_bytes=10 * block_bytes())
    prompt = tokens_of(0, 3 * BLOCK + 5)
    with cache.lookup(prompt) as miss:
        assert (miss.n_tokens, miss.blocks) == (0, [])
    assert cache.insert(prompt, *kv(prompt)) == 3 * BLOCK  # the partial block stays out
    with cache.lookup(prompt) as hit:
        assert (hit.n_tokens, len(hit.blocks)) == (3 * BLOCK, 3)
        keys, values = served(hit)
    want_keys, want_values = kv(prompt[: 3 * BLOCK])
    for got, want in zip(keys + values, want_keys + want_values, strict=True):
        assert torch.equal(got, want)
    assert (cache.stats.queries, cache.stats.hits) == (2 * len(prompt), 3 * BLOCK)
    assert (cache.stats.blocks, cache.stats.bytes) == (3, 3 * block_bytes())
    assert cache.stats.hit_rate == pytest.approx(3 * BLOCK / (2 * len(prompt)))


def test_only_the_same_tokens_at_the_same_positions_match():
    cache = PrefixCache(max_bytes=10 * block_bytes())
    prompt = tokens_of(1, 3 * BLOCK)
    cache.insert(prompt, *kv(prompt))
    second_block_differs = [*prompt[: BLOCK + 7], prompt[BLOCK + 7] + 1, *prompt[BLOCK + 8 :]]
    with cache.lookup(second_block_differs) as match:
        assert match.n_tokens == BLOCK
    with cache.lookup([prompt[0] + 1, *prompt[1:]]) as match:
        assert match.n_tokens == 0
    shifted = [7, *prompt]  # the same tokens one position later are another KV
    with cache.lookup(shifted) as match:
        assert match.n_tokens == 0
    with cache.lookup(prompt[: 2 * BLOCK - 1]) as match:  # a longer prompt's prefix: whole blocks
        assert match.n_tokens == BLOCK


def test_a_shared_prefix_is_stored_once_and_longer_prompts_extend_it():
    cache = PrefixCache(max_bytes=10 * block_bytes())
    head = tokens_of(2, 2 * BLOCK)
    a, b = head + tokens_of(3, BLOCK), head + tokens_of(4, BLOCK)
    cache.insert(a, *kv(a))
    cache.insert(b, *kv(b))
    assert cache.stats.blocks == 4  # the head's two blocks, one tail each
    with cache.lookup(b + tokens_of(5, BLOCK)) as match:
        assert match.n_tokens == 3 * BLOCK
        keys, _ = served(match)
    assert torch.equal(keys[1], kv(b)[0][1])


def test_blocks_are_copies_taken_from_a_wider_buffer_row():
    cache = PrefixCache(max_bytes=10 * block_bytes())
    prompt = tokens_of(6, 2 * BLOCK)
    keys, values = kv(prompt, capacity=3 * BLOCK)  # a cache row's capacity exceeds the prompt
    cache.insert(prompt, keys, values)
    want = [k[:, : 2 * BLOCK].clone() for k in keys]
    for k in keys:
        k.fill_(99.0)  # the row is reused by the next sequence
    with cache.lookup(prompt) as match:
        got, _ = served(match, n=3 * BLOCK)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g[:, : 2 * BLOCK], w)
        assert not g[:, 2 * BLOCK :].any()  # nothing past the prefix is written


def test_the_least_recently_used_leaf_goes_first():
    cache = PrefixCache(max_bytes=3 * block_bytes())
    a, b = tokens_of(7, 2 * BLOCK), tokens_of(8, 2 * BLOCK)
    cache.insert(a, *kv(a))
    cache.insert(b, *kv(b))  # room for b's second block: a's leaf goes, a's root stays
    assert cache.stats.evictions == 1
    with cache.lookup(a) as match:
        assert match.n_tokens == BLOCK
    with cache.lookup(b) as match:
        assert match.n_tokens == 2 * BLOCK
    c = tokens_of(9, BLOCK)
    cache.insert(c, *kv(c))  # a was used before b: a's root goes
    with cache.lookup(a) as match:
        assert match.n_tokens == 0
    assert (cache.stats.evictions, cache.stats.blocks) == (2, 3)


def test_a_parent_outlives_its_children_even_when_used_long_ago():
    cache = PrefixCache(max_bytes=3 * block_bytes())
    a = tokens_of(10, 2 * BLOCK)
    cache.insert(a, *kv(a))
    b = tokens_of(11, BLOCK)
    cache.insert(b, *kv(b))
    with cache.lookup(a) as match:  # a's leaf touched: its root is touched after it
        assert match.n_tokens == 2 * BLOCK
    c = tokens_of(12, BLOCK)
    cache.insert(c, *kv(c))
    with cache.lookup(a) as match:  # b was the least recently used
        assert match.n_tokens == 2 * BLOCK
    with cache.lookup(b) as match:
        assert match.n_tokens == 0


def test_pinned_blocks_are_never_evicted():
    cache = PrefixCache(max_bytes=2 * block_bytes())
    a, b = tokens_of(13, 2 * BLOCK), tokens_of(14, 2 * BLOCK)
    cache.insert(a, *kv(a))
    held = cache.lookup(a)
    assert cache.insert(b, *kv(b)) == 0  # nothing can make room: b is not stored
    assert cache.stats.bytes <= cache.max_bytes
    with cache.lookup(a) as match:
        assert match.n_tokens == 2 * BLOCK
    held.release()
    held.release()  # idempotent
    assert cache.insert(b, *kv(b)) == 2 * BLOCK
    assert cache.stats.evictions == 2


def test_an_insert_never_evicts_its_own_chain():
    cache = PrefixCache(max_bytes=2 * block_bytes())
    long = tokens_of(15, 4 * BLOCK)
    assert cache.insert(long, *kv(long)) == 2 * BLOCK  # stops at the bound, keeps its prefix
    assert cache.stats.evictions == 0
    with cache.lookup(long) as match:
        assert match.n_tokens == 2 * BLOCK
    again = long[: 2 * BLOCK] + tokens_of(16, BLOCK)
    assert cache.insert(again, *kv(again)) == 2 * BLOCK  # its own head is pinned, not evicted


def test_a_hash_collision_is_a_miss_never_wrong_kv():
    cache = PrefixCache(max_bytes=10 * block_bytes(), key_fn=lambda parent, tokens: 42)
    a, b = tokens_of(17, 2 * BLOCK), tokens_of(18, 2 * BLOCK)
    assert cache.insert(a, *kv(a)) == BLOCK  # a's 2nd block collides with its 1st: not stored
    with cache.lookup(b) as match:  # b's first block has a's key
        assert match.n_tokens == 0
    assert cache.insert(b, *kv(b)) == 0  # the slot is a's
    with cache.lookup(a) as match:
        keys, _ = served(match)
    assert torch.equal(keys[0], kv(a[:BLOCK])[0][0])


def test_a_collision_with_another_parent_is_a_miss():
    def first_token_only(parent, tokens):  # ignores the parent: a chain collides across prompts
        return tokens[0]

    cache = PrefixCache(max_bytes=10 * block_bytes(), key_fn=first_token_only)
    a = list(range(2 * BLOCK))
    b = [1000, *range(1, BLOCK), *a[BLOCK:]]  # its 2nd block = a's, after another parent
    cache.insert(a, *kv(a))
    assert cache.insert(b, *kv(b)) == BLOCK  # its 2nd block's key is taken by a's
    with cache.lookup(b) as match:
        assert match.n_tokens == BLOCK


def test_a_zero_budget_stores_nothing():
    cache = PrefixCache(max_bytes=0)
    prompt = tokens_of(19, 2 * BLOCK)
    assert cache.insert(prompt, *kv(prompt)) == 0
    assert (cache.stats.blocks, cache.stats.bytes, len(cache)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [({"max_bytes": -1}, "max_bytes"), ({"max_bytes": 1.5}, "max_bytes"),
     ({"max_bytes": 1, "block_size": 0}, "block_size")],
)  # fmt: skip
def test_bad_settings_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        PrefixCache(**args)


def test_kv_shorter_than_the_tokens_is_refused():
    cache = PrefixCache(max_bytes=10 * block_bytes())
    prompt = tokens_of(20, 2 * BLOCK)
    keys, values = kv(prompt[:BLOCK])
    with pytest.raises(ValueError, match=r"\[kv_heads, >= 64, head_dim\]"):
        cache.insert(prompt, keys, values)
    with pytest.raises(ValueError, match="layers"):
        cache.insert(prompt, *kv(prompt)[:1], [])
    assert len(cache) == 0


def test_the_key_chains_parent_and_tokens():
    tokens = tuple(range(BLOCK))
    assert block_key(0, tokens) == block_key(0, tokens)
    assert block_key(0, tokens) != block_key(1, tokens)


# ---- against a naive reference model ---------------------------------------------------------

SMALL = 2  # tokens per block in the property test: many shared prefixes from few tokens


class Reference:
    """The cache's contract, naively: blocks named by their whole prefix, a tick per touch."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tick = itertools.count()
        self.used: dict[tuple, int] = {}  # cached prefix -> last touch
        self.pins: dict[tuple, int] = {}

    def prefixes(self, tokens):
        return [tuple(tokens[:end]) for end in range(SMALL, len(tokens) + 1, SMALL)]

    def touch(self, chain):
        for prefix in reversed(chain):
            self.used[prefix] = next(self.tick)

    def lookup(self, tokens, hold):
        chain = []
        for prefix in self.prefixes(tokens):
            if prefix not in self.used:
                break
            chain.append(prefix)
        self.touch(chain)
        if hold:
            for prefix in chain:
                self.pins[prefix] = self.pins.get(prefix, 0) + 1
        return chain

    def release(self, chain):
        for prefix in chain:
            self.pins[prefix] -= 1

    def insert(self, tokens):
        chain = []
        for prefix in self.prefixes(tokens):
            if prefix not in self.used:
                if len(self.used) == self.capacity and not self._evict(set(chain)):
                    break
                self.used[prefix] = next(self.tick)
            chain.append(prefix)
        self.touch(chain)
        return len(chain) * SMALL

    def _evict(self, own):
        leaves = [
            p
            for p in self.used
            if not self.pins.get(p) and p not in own
            and not any(q[: len(p)] == p and len(q) == len(p) + SMALL for q in self.used)
        ]  # fmt: skip
        if not leaves:
            return False
        del self.used[min(leaves, key=self.used.get)]
        return True


operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.lists(st.integers(0, 2), max_size=9)),
        st.tuples(st.just("lookup"), st.lists(st.integers(0, 2), max_size=9), st.booleans()),
        st.tuples(st.just("release"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(0, 6), ops=operations)
def test_evictions_match_the_reference_and_the_invariants_hold(capacity, ops):
    cache = PrefixCache(max_bytes=capacity * block_bytes(SMALL), block_size=SMALL)
    reference = Reference(capacity)
    held = []  # (match, reference chain)
    for op in ops:
        if op[0] == "insert":
            tokens = op[1]
            stored = cache.insert(tokens, *kv(tokens))
            assert stored == reference.insert(tokens)
            with cache.lookup(tokens) as match:  # what it stored is there: its own chain stayed
                assert match.n_tokens == stored
            reference.lookup(tokens, hold=False)
        elif op[0] == "lookup":
            tokens, hold = op[1], op[2]
            match = cache.lookup(tokens)
            chain = reference.lookup(tokens, hold)
            assert match.n_tokens == len(chain) * SMALL
            keys, values = served(match)
            want_keys, want_values = kv(tokens[: match.n_tokens])
            assert all(torch.equal(g, w) for g, w in zip(keys, want_keys, strict=True))
            assert all(torch.equal(g, w) for g, w in zip(values, want_values, strict=True))
            if hold:
                held.append((match, chain))
            else:
                match.release()
        elif held:
            match, chain = held.pop(op[1] % len(held))
            match.release()
            reference.release(chain)
        blocks = list(cache._blocks.values())
        assert {tuple(_prefix(b)) for b in blocks} == set(reference.used)
        assert cache.stats.bytes == sum(b.nbytes for b in blocks) <= cache.max_bytes
        assert cache.stats.blocks == len(blocks)
        for block in blocks:  # parents outlive their children
            assert block.parent is None or block.parent.key in cache._blocks
            assert block.children == sum(b.parent is block for b in blocks)
        for match, _ in held:  # pinned blocks stay
            assert all(cache._blocks.get(b.key) is b for b in match.blocks)


def _prefix(block):
    tokens = []
    while block is not None:
        tokens[:0] = block.tokens
        block = block.parent
    return tokens
