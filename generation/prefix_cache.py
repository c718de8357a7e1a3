"""Exact prefix KV reuse across requests: KV blocks of prompt tokens, keyed by the token ids.

A prompt's KV entries depend only on its tokens and their positions, so a request whose prompt
starts with tokens already computed (the instruction every RAG prompt shares; the passages of a
popular question) can take their keys and values as they are and prefill only the rest: the
same KV up to float rounding, the same answer. As vLLM's automatic prefix caching does, the
cache holds blocks of `BLOCK` tokens, each keyed by a hash chain (its parent block's key and its
own token ids), so a block is found only after the very same tokens at the very same positions.
A key is only an address: each block keeps its parent and its tokens, and a lookup checks both,
so a hash collision costs a miss, never someone else's KV.

Bounded in bytes (`max_bytes`), least recently used first. A lookup or an insert touches its
chain from the last block to the first, so every block is more recent than any of its children:
the least recently used block is a leaf, and parents outlive their children (a cached block's
whole prefix is always cached). Blocks of a lookup's `Match` stay pinned (never evicted) until
it is released, and an insert pins its own chain while it runs, so it never evicts what it has
just stored; when nothing else can go, it stores fewer blocks rather than exceed the bound.

Pure bookkeeping over torch tensors: the decode engine decides what to look up, what to insert
and where the KV goes. Not thread-safe: the model's thread calls everything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 32  # tokens per block: only whole blocks are cached and reused
ROOT_KEY = 0  # the parent key of a prompt's first block

# A block's key from its parent's key and its token ids (replaceable: tests force collisions).
KeyFn = Callable[[int, tuple[int, ...]], int]


def block_key(parent: int, tokens: tuple[int, ...]) -> int:
    """The hash chain's next link: Python's tuple hash, fixed for ints across processes."""
    return hash((parent, tokens))


@dataclass
class PrefixCacheStats:
    """Counters as vLLM names them: prompt tokens looked up (`queries`) and served from the
    cache (`hits`), blocks evicted; and the cache's size now (`bytes`, `blocks`)."""

    queries: int = 0
    hits: int = 0
    evictions: int = 0
    bytes: int = 0
    blocks: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class Block:
    """`BLOCK` tokens' keys and values, one `[kv_heads, BLOCK, head_dim]` tensor per layer."""

    __slots__ = ("children", "key", "keys", "nbytes", "parent", "pins", "tokens", "values")

    def __init__(
        self,
        key: int,
        parent: Block | None,
        tokens: tuple[int, ...],
        keys: tuple[torch.Tensor, ...],
        values: tuple[torch.Tensor, ...],
    ) -> None:
        self.key, self.parent, self.tokens = key, parent, tokens
        self.keys, self.values = keys, values
        self.nbytes = sum(t.numel() * t.element_size() for t in (*keys, *values))
        self.children = 0  # cached blocks whose parent this is
        self.pins = 0  # matches and inserts holding it


class Match:
    """The longest cached prefix of a lookup: `n_tokens` tokens in `blocks`, pinned until
    `release()` (or the end of a `with` block)."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        self.n_tokens = sum(len(b.tokens) for b in blocks)
        self._held = True

    def copy_to(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
        """Write the prefix's KV into per-layer views `[kv_heads, >= n_tokens, head_dim]` (a
        cache row), block by block: positions `[0, n_tokens)` of each layer."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} key layers but {len(values)} value layers")
        start = 0
        with torch.inference_mode():  # the decoder's buffers may be inference tensors
            for block in self.blocks:
                stop = start + len(block.tokens)
                for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
                    k[:, start:stop] = block.keys[layer]
                    v[:, start:stop] = block.values[layer]
                start = stop

    def release(self) -> None:
        """Unpin the blocks (idempotent): they may be evicted again."""
        if self._held:
            self._held = False
            for block in self.blocks:
                block.pins -= 1

    def __enter__(self) -> Match:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PrefixCache:
    """Prompt KV blocks of `block_size` tokens, at most `max_bytes` of tensors, LRU."""

    def __init__(self, max_bytes: int, block_size: int = BLOCK, key_fn: KeyFn = block_key) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.key_fn = key_fn
        self.stats = PrefixCacheStats()
        # Every block by key, least recently used first; a block always precedes its parent.
        self._blocks: OrderedDict[int, Block] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, tokens: Sequence[int] | np.ndarray) -> Match:
        """The longest cached prefix of `tokens` in whole blocks, pinned, and touched as most
        recently used. Counts `tokens` as queried and the match as hits. (A decoder keeps the
        last prompt token out of its KV: it looks up all but that one.)"""
        blocks = self._chain(tokens)
        self._touch(blocks)
        for block in blocks:
            block.pins += 1
        match = Match(blocks)
        self.stats.queries += len(tokens)
        self.stats.hits += match.n_tokens
        return match

    def peek(self, tokens: Sequence[int] | np.ndarray) -> int:
        """How many leading tokens of `tokens` a lookup would serve now; touches, pins and
        counts nothing (what admission order asks of every waiting request)."""
        return len(self._chain(tokens)) * self.block_size

    @torch.inference_mode()  # copies of the decoder's buffers, which may be inference tensors
    def insert(
        self,
        tokens: Sequence[int] | np.ndarray,
        keys: Sequence[torch.Tensor],
        values: Sequence[torch.Tensor],
    ) -> int:
        """Cache the whole blocks of `tokens` whose KV is `keys[layer][:, i]` / `values[layer]
        [:, i]` for token `i` (views `[kv_heads, >= len(tokens), head_dim]`, e.g. a cache row):
        blocks already cached are only touched, new ones are copied. Evicts least recently used
        blocks to make room, never this chain's own; stops early (at a block boundary) when no
        room can be made or a key collides. Returns the tokens of `tokens` now cached."""
        if len(keys) != len(values) or not keys:
            raise ValueError(f"{len(keys)} key layers and {len(values)} value layers")
        short = [t.shape for t in (*keys, *values) if t.dim() != 3 or t.shape[1] < len(tokens)]
        if short:
            raise ValueError(
                f"KV of {len(tokens)} tokens must be [kv_heads, >= {len(tokens)}, head_dim] per "
                f"layer, got {short[0]}"
            )
        chain: list[Block] = []
        try:
            for start, key, block_tokens in self._links(tokens):
                parent = chain[-1] if chain else None
                block = self._blocks.get(key)
                if block is None:
                    span = slice(start, start + self.block_size)
                    views = [t[:, span] for t in (*keys, *values)]
                    if not self._make_room(sum(t.numel() * t.element_size() for t in views)):
                        break
                    copies = tuple(t.clone() for t in views)
                    block = Block(
                        key, parent, block_tokens, copies[: len(keys)], copies[len(keys) :]
                    )
                    self._add(block)
                elif block.parent is not parent or block.tokens != block_tokens:
                    break  # a collision: this chain goes no further
                block.pins += 1
                chain.append(block)
        finally:
            self._touch(chain)
            for block in chain:
                block.pins -= 1
        return len(chain) * self.block_size

    def _links(self, tokens: Sequence[int] | np.ndarray):
        """(start, key, tokens) of each whole block of `tokens`, first to last."""
        ids = np.asarray(tokens, dtype=np.int64).tolist()
        key = ROOT_KEY
        for start in range(0, len(ids) - self.block_size + 1, self.block_size):
            block_tokens = tuple(ids[start : start + self.block_size])
            key = self.key_fn(key, block_tokens)
            yield start, key, block_tokens

    def _chain(self, tokens: Sequence[int] | np.ndarray) -> list[Block]:
        """The cached blocks that match `tokens` from the first, each one checked."""
        chain: list[Block] = []
        for _, key, block_tokens in self._links(tokens):
            block = self._blocks.get(key)
            parent = chain[-1] if chain else None
            if block is None or block.parent is not parent or block.tokens != block_tokens:
                break
            chain.append(block)
        return chain

    def _touch(self, chain: list[Block]) -> None:
        """Most recently used, last block first: each parent ends up after its children."""
        for block in reversed(chain):
            self._blocks.move_to_end(block.key)

    def _make_room(self, nbytes: int) -> bool:
        """Evict unpinned leaves, least recently used first, until `nbytes` more fit."""
        if nbytes > self.max_bytes:
            return False
        while self.stats.bytes + nbytes > self.max_bytes:
            victim = next((b for b in self._blocks.values() if not b.pins and not b.children), None)
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _add(self, block: Block) -> None:
        self._blocks[block.key] = block
        if block.parent is not None:
            block.parent.children += 1
        self.stats.bytes += block.nbytes
        self.stats.blocks += 1

    def _evict(self, block: Block) -> None:
        del self._blocks[block.key]
        if block.parent is not None:
            block.parent.children -= 1
        self.stats.bytes -= block.nbytes
        self.stats.blocks -= 1
        self.stats.evictions += 1
