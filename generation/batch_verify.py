"""One forward pass over a block of new tokens in each of several cache rows.

A block is a draft tree (verify) or a run of prompt tokens (prefill chunk): its tokens, their
depths below the row's length (`position_ids = len_i + depth`) and which of the block's tokens
each one sees. Row `i` of the float 4D mask `[b, 1, q, max_i len_i + q]` shows query `j` the
row's own cached prefix `[0, len_i)` and the block tokens it sees; blocks shorter than `q` are
padded with queries that see only key 0 (something finite, so no softmax row is all-hidden)
and whose logits are ignored. Generic over architectures through transformers' custom 4D mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from generation.batch_cache import BatchKVCache
from trie_store.draft import Draft, ancestor_mask


@dataclass(frozen=True)
class Block:
    """New tokens for one row: `sees[j, k]` says whether token `j` sees block token `k`."""

    tokens: np.ndarray  # int64 [n]
    depth: np.ndarray  # [n], position below the row's length
    sees: np.ndarray  # bool [n, n]

    @classmethod
    def of_draft(cls, draft: Draft) -> Block:
        return cls(draft.tokens, draft.depth, ancestor_mask(draft))

    @classmethod
    def chain(cls, tokens: np.ndarray) -> Block:
        """A run of consecutive tokens: plain causal attention (a prefill chunk)."""
        n = len(tokens)
        return cls(np.asarray(tokens, dtype=np.int64), np.arange(n), np.tri(n, dtype=bool))

    def __len__(self) -> int:
        return len(self.tokens)


def block_inputs(
    blocks: Sequence[Block], lengths: np.ndarray, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`input_ids [b, q]`, `position_ids [b, q]` and the float mask `[b, 1, q, L]`."""
    b, q = len(blocks), max(map(len, blocks))
    kv_len = int(lengths.max()) + q
    ids = np.zeros((b, q), dtype=np.int64)
    positions = np.repeat(lengths[:, None], q, axis=1)
    visible = np.zeros((b, q, kv_len), dtype=bool)
    for i, (block, start) in enumerate(zip(blocks, lengths.tolist(), strict=True)):
        n = len(block)
        ids[i, :n] = block.tokens
        ids[i, n:] = block.tokens[0]
        positions[i, :n] += block.depth
        visible[i, :n, :start] = True
        visible[i, :n, start : start + n] = block.sees
        visible[i, n:, 0] = True
    mask = torch.zeros((b, 1, q, kv_len), dtype=dtype, device=device)
    hidden = torch.from_numpy(~visible).to(device).unsqueeze(1)
    mask.masked_fill_(hidden, torch.finfo(dtype).min)
    return torch.from_numpy(ids).to(device), torch.from_numpy(positions).to(device), mask


@torch.inference_mode()
def forward_blocks(
    model: PreTrainedModel,
    cache: BatchKVCache,
    rows: slice,
    blocks: Sequence[Block],
    logits_to_keep: int = 0,
) -> torch.Tensor:
    """Logits `[b, q, vocab]` (the last `logits_to_keep` queries, 0 = all) of one pass over
    `blocks[j]` in cache row `rows.start + j`; the blocks' entries are written after each row's
    length, which the caller then advances (`BatchKVCache.keep` / `extend`)."""
    if rows.stop - rows.start != len(blocks):
        raise ValueError(f"{len(blocks)} blocks for rows {rows}")
    q = max(map(len, blocks))
    cache.plan_forward(rows, q)
    input_ids, position_ids, mask = block_inputs(
        blocks, cache.lengths[rows], model.dtype, model.device
    )
    out = model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        cache=cache,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return out.logits


@torch.inference_mode()
def prefill_row(
    model: PreTrainedModel, cache: BatchKVCache, row: int, ids: np.ndarray, chunk: int
) -> None:
    """Append `ids` to row `row` in passes of at most `chunk` tokens."""
    for at in range(0, len(ids), chunk):
        part = ids[at : at + chunk]
        forward_blocks(model, cache, slice(row, row + 1), [Block.chain(part)], logits_to_keep=1)
        cache.extend(row, len(part))
