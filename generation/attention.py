"""The engine's attention: transformers' sdpa, plus the ragged verify pass and, on CPU, no
key/value copy for a masked grouped-query block.

Ragged pass (docs/batching.md, "Ragged verify"): the batch's new tokens travel as one flattened
sequence `[1, N]` (row `i`'s `n_i` tokens after row `i - 1`'s), so the linears, the bulk of a
step, cost `N = sum n_i` token rows instead of `b * max n_i`. Attention stays per row, over that
row's own cache: the first token of every row (its tree's root, what plain decoding computes)
attends in one call over all rows, and each tree's other nodes in one call over their own row;
or, when many rows have trees, all of them in one call with the queries padded to the longest
tree (`verify.pad_attention`), so that no row's cache is read twice.
The layout comes in through the model's keyword arguments (`ragged_layout`), which transformers
hands to every attention call.

Grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads): a masked multi-token
query makes transformers' sdpa path `repeat_kv` the whole cache, copying every layer's keys and
values per pass. This module folds instead: the query heads that share a key/value head become
one block of query rows (`[b, kv_heads, groups * q, d]`, the mask repeated per group), so each
key/value head is read once per row, as transformers itself does for a single query token
(`pack_gqa`); for verify-sized blocks only (`FOLD_MAX_QUERIES`), prefill chunks run faster
unfolded. On CPU that is 1.3-1.8x faster per call than torch's kernel taking the grouped
heads directly (`enable_gqa=True`) at b = 8 and q = 2-8, 10-15% of a whole b = 8 verify pass
(docs/perf-notes.md, "Grouped heads folded"); the result differs from it only in float rounding
(float64 tests: 1e-12). Used for ragged passes and, on CPU, for padded ones.

On CPU, decode and verify blocks (up to `cpu_attention.MAX_QUERIES` tokens a row, float32 or
bfloat16) go to the engine's own kernel first (`cpu_attention.py`): each row's cache read once,
and a query's result independent of the rest of the call; a ragged pass is then one kernel call
with every row's tokens as they are, neither padded nor split into roots and trees. Everything
else is transformers' own `sdpa_attention_forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from generation import cpu_attention

NAME = "sdpa_gqa"
# Folding pays for verify-sized blocks and loses for prefill chunks (per call, 9/3 heads, CPU:
# b = 8, q = 8, 1,000 keys 3.1 vs 4.1 ms; b = 1, q = 256, 1,024 keys 9.3 vs 7.3 ms).
FOLD_MAX_QUERIES = 8


@dataclass(frozen=True)
class RaggedLayout:
    """Where each row's tokens sit in the flattened pass and what they see.

    `offsets[i]`: row i's first token in the flat sequence (also as `roots`, an index tensor on
    the model's device, made once per pass, not once per layer); `sizes[i]` its token count;
    `root_mask [b, 1, 1, L]`: each root's keys (its row's prefix and itself); `tree_masks[i]`
    `[1, 1, n_i - 1, len_i + n_i]` for rows with more than one token (None otherwise). Or, when
    attention runs padded (`grid` set, `tree_masks` empty): `grid [N]`, each flat token's slot
    in the `[b * q]` padded queries, and `grid_mask [b, 1, q, L]` the padded pass's mask. Or,
    with `kernel`, the CPU kernel takes every row's tokens unpadded in one call, token `t` of row
    `i` masked by `grid_mask[i, 0, t]` (`cpu_attention.ragged_attention`).
    """

    offsets: np.ndarray
    roots: torch.Tensor
    sizes: np.ndarray
    root_mask: torch.Tensor
    tree_masks: list[torch.Tensor | None]
    grid: torch.Tensor | None = None
    grid_mask: torch.Tensor | None = None
    kernel: bool = False  # the CPU kernel takes the rows as they are, masked by `grid_mask`


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """`query [b, heads, q, d]` over `key/value [b, kv_heads, L, d]` -> `[b, heads, q, d]`: on
    CPU the engine's kernel where it fits (`cpu_attention`); else for up to FOLD_MAX_QUERIES
    tokens a row, the heads of a group folded into one block of rows (longer blocks, prefill
    chunks, or a mask per head: torch's grouped kernel)."""
    if (
        dropout == 0.0
        and (out := cpu_attention.decode_attention(query, key, value, mask, scaling)) is not None
    ):
        return out
    batch, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    fold = groups > 1 and q <= FOLD_MAX_QUERIES and (mask is None or mask.shape[1] == 1)
    if fold:
        query = query.reshape(batch, kv_heads, groups * q, dim)
        if mask is not None and q > 1:  # [rows, 1, q, L] -> [rows, 1, groups * q, L]
            rows, length = mask.shape[0], mask.shape[-1]
            mask = mask.unsqueeze(2).expand(rows, 1, groups, q, length).reshape(rows, 1, -1, length)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
        enable_gqa=groups > 1 and not fold,
    )  # fmt: skip
    return out.reshape(batch, heads, q, dim)


def ragged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: RaggedLayout,
    scaling: float | None,
) -> torch.Tensor:
    """`query [1, heads, N, d]` (the flattened rows), `key/value [b, kv_heads, L, d]` (the rows'
    caches, new entries written) -> `[1, N, heads, d]`."""
    if layout.kernel:  # one call on the CPU kernel, each row its own number of tokens
        out = cpu_attention.ragged_attention(
            query, key, value, layout.grid_mask, layout.offsets, layout.sizes, scaling
        )
        return out.unsqueeze(0)
    if layout.grid is not None:  # one padded call: every row's cache read once
        b, heads, dim = len(layout.sizes), query.shape[1], query.shape[3]
        q = layout.grid_mask.shape[2]
        padded = query.new_zeros(b * q, heads, dim)
        padded[layout.grid] = query[0].transpose(0, 1)
        padded = padded.view(b, q, heads, dim).transpose(1, 2)
        out = attend(padded, key, value, layout.grid_mask, scaling)  # [b, heads, q, d]
        return out.transpose(1, 2).reshape(b * q, heads, dim)[layout.grid].unsqueeze(0)
    roots = query[0, :, layout.roots].transpose(0, 1).unsqueeze(2)  # [b, heads, 1, d]
    out = query.new_empty(query.shape[2], query.shape[1], query.shape[3])  # [N, heads, d]
    out[layout.roots] = attend(roots, key, value, layout.root_mask, scaling)[:, :, 0]
    for row, mask in enumerate(layout.tree_masks):
        if mask is None:
            continue
        at, n = int(layout.offsets[row]), int(layout.sizes[row])
        seen = mask.shape[-1]
        tree = attend(
            query[:, :, at + 1 : at + n],
            key[row : row + 1, :, :seen],
            value[row : row + 1, :, :seen],
            mask,
            scaling,
        )
        out[at + 1 : at + n] = tree[0].transpose(0, 1)
    return out.unsqueeze(0)


def sdpa_gqa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    ragged_layout: RaggedLayout | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`query [b, heads, q, d]`, `key/value [b, kv_heads, kv, d]` -> `[b, q, heads, d]`, None."""
    if ragged_layout is not None:
        if any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "sliding_window")):
            raise NotImplementedError("the ragged pass does not model softcap, bias or windows")
        return ragged_attention(query, key, value, ragged_layout, scaling), None
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if plain and dropout == 0.0:
        out = cpu_attention.decode_attention(query, key, value, attention_mask, scaling)
        if out is not None:  # stored as [b, q, heads, d]: the transpose is free
            return out.transpose(1, 2), None
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if not (
        plain
        and grouped
        and query.device.type == "cpu"
        and query.shape[2] > 1
        and attention_mask is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    out = attend(query, key, value, attention_mask, scaling, dropout)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_sdpa_gqa(model: PreTrainedModel) -> bool:
    """Switch a model that runs transformers' sdpa attention to this one; False if it does not."""
    if model.config._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True


def runs_ragged(model: PreTrainedModel) -> bool:
    """Whether the model's attention is this module's (the ragged pass needs it; the load-time
    probe then checks that the model really hands it the layout)."""
    return model.config._attn_implementation == NAME
