"""One forward pass over a block of new tokens in each of several cache rows, and the load-time
probe that the model computes such passes exactly.

A block is a draft tree (verify) or a run of prompt tokens (prefill chunk): its tokens, their
depths below the row's length (`position_ids = len_i + depth`) and which of the block's tokens
each one sees. Two layouts:

- padded: row `i` of the float 4D mask `[b, 1, q, max_i len_i + q]` shows query `j` the row's
  own cached prefix `[0, len_i)` and the block tokens it sees; blocks shorter than `q` are
  padded with queries that see only key 0 (something finite, so no softmax row is all-hidden)
  and whose logits are ignored. Generic over architectures through transformers' custom 4D mask.
- ragged (blocks of different sizes, on models that run `attention.py`): the blocks flattened
  into one sequence of `sum n_i` tokens, so a row pays for the nodes it verifies, not for the
  longest tree (`attention.RaggedLayout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from generation import cpu_attention
from generation.attention import RaggedLayout, runs_ragged
from generation.kv_cache import BatchKVCache
from generation.models import UnsupportedModelError
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
    ids = np.zeros((b, q), dtype=np.int64)
    positions = np.repeat(lengths[:, None], q, axis=1)
    for i, block in enumerate(blocks):
        n = len(block)
        ids[i, :n] = block.tokens
        ids[i, n:] = block.tokens[0]
        positions[i, :n] += block.depth
    ids, positions = torch.from_numpy(ids).to(device), torch.from_numpy(positions).to(device)
    return ids, positions, _padded_mask(blocks, lengths, int(lengths.max()) + q, dtype, device)


def _padded_mask(
    blocks: Sequence[Block],
    lengths: np.ndarray,
    kv_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """The float mask `[b, 1, q, kv_len]` of blocks padded to the longest, `q`: each query sees
    its row's prefix and the block tokens it sees; a padding query sees key 0 only."""
    b, q = len(blocks), max(map(len, blocks))
    visible = np.zeros((b, q, kv_len), dtype=bool)
    for i, (block, start) in enumerate(zip(blocks, lengths.tolist(), strict=True)):
        n = len(block)
        visible[i, :n, :start] = True
        visible[i, :n, start : start + n] = block.sees
        visible[i, n:, 0] = True
    return _float_mask(visible[:, None], dtype, device)


def _float_mask(visible: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0 where a key is seen, the dtype's lowest value where it is hidden."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=device)
    return mask.masked_fill_(torch.from_numpy(~visible).to(device), torch.finfo(dtype).min)


def pad_attention(sizes: np.ndarray) -> bool:
    """Whether a ragged pass runs its attention as one padded call over all rows (each row's
    cache read once, the queries padded to the longest tree) instead of one call for the roots
    and one per tree: when the longest tree's extra nodes are no more than the trees. Both are
    exact; measured on CPU at b = 8 (docs/batching.md, "Attention of a ragged pass")."""
    return int(sizes.max()) - 1 <= int((sizes > 1).sum())


def ragged_inputs(
    blocks: Sequence[Block],
    lengths: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
    kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, RaggedLayout]:
    """`input_ids [1, N]` and `position_ids [1, N]` of the flattened blocks, and their layout
    (`kernel`: for the CPU kernel, which takes the rows unpadded in one call)."""
    sizes = np.array([len(block) for block in blocks])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ids = np.concatenate([block.tokens for block in blocks])[None]
    positions = np.concatenate([s + block.depth for s, block in zip(lengths, blocks, strict=True)])
    kv_len = int((lengths + sizes).max())
    root_sees = np.arange(kv_len)[None] <= lengths[:, None]
    tree_masks: list[torch.Tensor | None] = []
    grid = grid_mask = None
    if kernel:
        grid_mask = _padded_mask(blocks, lengths, kv_len, dtype, device)
    elif pad_attention(sizes):
        q = int(sizes.max())
        slots = np.concatenate([i * q + np.arange(n) for i, n in enumerate(sizes)])
        grid = torch.from_numpy(slots).to(device)
        grid_mask = _padded_mask(blocks, lengths, kv_len, dtype, device)
    else:
        for start, block in zip(lengths.tolist(), blocks, strict=True):
            n = len(block)
            if n == 1:
                tree_masks.append(None)
                continue
            visible = np.ones((n - 1, start + n), dtype=bool)
            visible[:, start:] = block.sees[1:]
            tree_masks.append(_float_mask(visible[None, None], dtype, device))
    layout = RaggedLayout(
        offsets,
        torch.from_numpy(offsets).to(device),
        sizes,
        _float_mask(root_sees[:, None, None], dtype, device),
        tree_masks,
        grid,
        grid_mask,
        kernel,
    )
    ids, positions = torch.from_numpy(ids).to(device), torch.from_numpy(positions[None]).to(device)
    return ids, positions, layout


@torch.inference_mode()
def forward_blocks(
    model: PreTrainedModel,
    cache: BatchKVCache,
    rows: slice,
    blocks: Sequence[Block],
    logits_to_keep: int = 0,
    ragged: bool = False,
) -> list[torch.Tensor]:
    """Per block, the logits `[n, vocab]` of its tokens (the last `logits_to_keep` of the
    padded pass, 0 = all) in one pass over `blocks[j]` in cache row `rows.start + j`; the blocks'
    entries are written after each row's length, which the caller then advances
    (`BatchKVCache.keep` / `extend`). `ragged`: flatten blocks of different sizes (the model
    must run `attention.py`)."""
    if rows.stop - rows.start != len(blocks):
        raise ValueError(f"{len(blocks)} blocks for rows {rows}")
    sizes = np.array([len(block) for block in blocks])
    lengths = cache.lengths[rows]
    if ragged and (sizes != sizes[0]).any():
        cache.plan_forward(rows, 0, sizes)
        kernel = cpu_attention.takes_ragged(model, sizes)
        input_ids, position_ids, layout = ragged_inputs(
            blocks, lengths, model.dtype, model.device, kernel
        )
        logits = model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=layout.root_mask,  # passed through as is; the layout decides
            ragged_layout=layout,
            cache=cache,
            use_cache=True,
        ).logits[0]
        return list(torch.split(logits, sizes.tolist()))
    cache.plan_forward(rows, int(sizes.max()))
    input_ids, position_ids, mask = block_inputs(blocks, lengths, model.dtype, model.device)
    logits = model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        cache=cache,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    ).logits
    return [logits[i, : min(len(block), logits.shape[1])] for i, block in enumerate(blocks)]


@torch.inference_mode()
def prefill_row(
    model: PreTrainedModel, cache: BatchKVCache, row: int, ids: np.ndarray, chunk: int
) -> None:
    """Append `ids` to row `row` in passes of at most `chunk` tokens."""
    for at in range(0, len(ids), chunk):
        part = ids[at : at + chunk]
        forward_blocks(model, cache, slice(row, row + 1), [Block.chain(part)], logits_to_keep=1)
        cache.extend(row, len(part))


# Tree-vs-sequential logit error, relative to the logits' spread, above which the 4D mask is
# taken as ignored: rounding stays orders of magnitude below; a mask ignored changes logits by
# about their own spread. bfloat16 (8-bit mantissa) rounds the default model to ~0.15 of it
# (a mask ignored: >= 1.0).
_PROBE_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3, torch.bfloat16: 0.4}
_PROBE_TOLERANCE_HALF = 5e-2


# The probe's draft below a cached prefix ending at `start`: the true path (nodes 0, 2, 4, 5)
# interleaved with wrong siblings, so a model that ignores the mask or the positions gives
# different logits on it.
_PROBE_PATH = np.array([0, 2, 4, 5])
_PROBE_ALONE = (4,)  # cached tokens per row: one sequence alone,
_PROBE_BATCH = (4, 1, 6)  # and rows of unequal length in one pass


def _probe_draft(true: np.ndarray, wrong: np.ndarray, start: int) -> Draft:
    t, w = true[start:], wrong[start:]
    return Draft(
        tokens=np.array([t[0], w[1], t[1], w[2], t[2], t[3]], dtype=np.int64),
        parent=np.array([-1, 0, 0, 1, 2, 4], dtype=np.int32),
        depth=np.array([0, 1, 1, 2, 2, 3], dtype=np.int32),
        scores=np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]),
    )


@torch.inference_mode()
def check_tree_attention(model: PreTrainedModel) -> bool:
    """Raise UnsupportedModelError unless draft trees get the logits plain decoding gets, alone
    and in a batch; return whether the ragged layout gets them too (else the padded one runs).

    Architecture lists go stale; a probe does not. Twelve tokens; alone: four cached (prefilled
    in chunks), then a tree; batched: three rows with 4, 1 and 6 cached tokens, each with such a
    tree, one of them cut short so that it is padded (or flattened, ragged), in one pass.
    """
    vocab = model.get_input_embeddings().num_embeddings
    ids = (torch.arange(12, device=model.device) * 7919 + 11) % vocab
    true = ids.cpu().numpy()
    wrong = (true + 1) % vocab
    name = type(model).__name__
    try:
        reference = model(input_ids=ids.unsqueeze(0)).logits[0].float()
        alone = _probe_rows(model, true, wrong, _PROBE_ALONE)
        batch = _probe_rows(model, true, wrong, _PROBE_BATCH)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{name} failed on a draft tree with a custom 4D attention mask "
            f"({type(exc).__name__}: {exc}); lookahead decoding needs transformers' 4D-mask support"
        ) from exc
    tolerance = _PROBE_TOLERANCE.get(model.dtype, _PROBE_TOLERANCE_HALF)
    scale = reference.std().clamp_min(1e-6)

    def error(rows: list[tuple[int, torch.Tensor, torch.Tensor]]) -> float:
        return max(
            ((logits - reference[start + depth]).abs().max() / scale).item()
            for start, logits, depth in rows
        )

    if error(alone) > tolerance:
        raise UnsupportedModelError(
            f"{name} ignores the custom 4D attention mask or position ids: draft-tree logits "
            f"differ from plain decoding; lookahead decoding would not be lossless"
        )
    if (worst := error(batch)) > tolerance:
        raise UnsupportedModelError(
            f"{name} gives other logits to draft trees batched in rows of different lengths "
            f"(per-row position ids and 4D mask) than to plain decoding ({worst:.3g}, "
            f"relative); batched lookahead decoding would not be lossless"
        )
    if not runs_ragged(model):
        return False
    try:
        ragged = _probe_rows(model, true, wrong, _PROBE_BATCH, ragged=True)
    except Exception:  # e.g. an attention feature the ragged pass does not model: padded runs
        return False
    return error(ragged) <= tolerance


def _probe_rows(
    model: PreTrainedModel,
    true: np.ndarray,
    wrong: np.ndarray,
    starts: tuple[int, ...],
    ragged: bool = False,
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per row: its cached length, the true path's logits, and their depths."""
    cache = BatchKVCache(model, len(starts))
    drafts = []
    for row, start in enumerate(starts):
        prefill_row(model, cache, row, true[:start], chunk=3)
        drafts.append(_probe_draft(true, wrong, start))
    if len(drafts) > 1:
        drafts[1] = drafts[1].truncate(2)  # padded to the others' six nodes
    blocks = [Block.of_draft(d) for d in drafts]
    logits = forward_blocks(model, cache, slice(0, len(drafts)), blocks, ragged=ragged)
    out = []
    for row, (start, draft) in enumerate(zip(starts, drafts, strict=True)):
        path = _PROBE_PATH[len(draft) > _PROBE_PATH]
        depth = torch.from_numpy(draft.depth[path].astype(np.int64)).to(logits[row].device)
        out.append((start, logits[row][path].float(), depth))
    return out
