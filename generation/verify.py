"""One verification pass over a draft tree, and the KV bookkeeping after it.

Generic over architectures through transformers' own support for a custom 4D attention mask:
the tree is one extra block of `q` query positions after the cached prefix; every node sees the
whole prefix, itself and its ancestors (`position_ids = past_len + depth`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from generation.batch_cache import BatchKVCache
from generation.batch_verify import Block, forward_blocks, prefill_row
from generation.models import UnsupportedModelError
from trie_store.draft import Draft, ancestor_mask


@torch.inference_mode()
def prefill(model: PreTrainedModel, ids: np.ndarray) -> DynamicCache:
    """A cache holding exactly `ids` (the decode loop gives every prompt token but the last:
    that one is the root of the first draft)."""
    cache = DynamicCache(config=model.config)
    if len(ids):
        input_ids = torch.from_numpy(ids).to(model.device).unsqueeze(0)
        model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def tree_attention_mask(
    draft: Draft, past_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Float mask `[1, 1, q, past_len + q]`: 0 where visible, the dtype's minimum where hidden."""
    q = len(draft)
    mask = torch.zeros((1, 1, q, past_len + q), dtype=dtype, device=device)
    if q > 1:
        hidden = torch.from_numpy(~ancestor_mask(draft)).to(device)
        mask[0, 0, :, past_len:].masked_fill_(hidden, torch.finfo(dtype).min)
    return mask


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are prefix views of buffers with room to spare.

    transformers' `DynamicLayer` appends with `torch.cat`, copying the layer's whole cache on
    every forward pass (for SmolLM2 at 700 tokens: 60 copies, ~65 MB of memory traffic per
    step). Here a pass writes its `q` new rows in place; buffers grow by half when full.
    """

    def __init__(self, layer: DynamicLayer) -> None:
        super().__init__()
        self.dtype, self.device = layer.keys.dtype, layer.keys.device
        self.is_initialized = True
        self.keys, self.values = layer.keys, layer.values
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:  # after a reset
            return super().update(key_states, value_states)
        n, q = self.keys.shape[-2], key_states.shape[-2]
        self._reserve(n + q)
        self._key_buffer[..., n : n + q, :] = key_states
        self._value_buffer[..., n : n + q, :] = value_states
        self.keys = self._key_buffer[..., : n + q, :]
        self.values = self._value_buffer[..., : n + q, :]
        return self.keys, self.values

    def _reserve(self, rows: int) -> None:
        """Make `keys`/`values` prefix views of buffers of at least `rows` rows."""
        if self._in_buffers() and self._key_buffer.shape[-2] >= rows:
            return
        n = self.keys.shape[-2]
        capacity = rows + max(256, rows // 2)
        for name in ("keys", "values"):
            old = getattr(self, name)
            buffer = old.new_empty((*old.shape[:-2], capacity, old.shape[-1]))
            buffer[..., :n, :] = old
            setattr(self, f"_{name[:-1]}_buffer", buffer)
            setattr(self, name, buffer[..., :n, :])

    def _in_buffers(self) -> bool:
        """False once something else (a batch reorder, a reset) replaced keys or values."""
        return all(
            view is not None
            and buffer is not None
            and view.data_ptr() == buffer.data_ptr()
            and view.stride() == buffer.stride()
            for view, buffer in ((self.keys, self._key_buffer), (self.values, self._value_buffer))
        )


def _grow_in_place(cache: DynamicCache) -> None:
    """Swap the cache's filled plain `DynamicLayer`s for `GrowingLayer`s (once per cache)."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[i] = GrowingLayer(layer)


@torch.inference_mode()
def verify_forward(
    model: PreTrainedModel, cache: DynamicCache, draft: Draft, past_len: int
) -> torch.Tensor:
    """Logits `[q, vocab]` at every draft node; appends the `q` nodes' KV entries to `cache`.

    The cache's plain `DynamicLayer`s become `GrowingLayer`s on the first call, so that later
    passes append in place; the cache stays a `DynamicCache` that transformers can use as usual.
    """
    _grow_in_place(cache)
    device = model.device
    input_ids = torch.from_numpy(draft.tokens).to(device).unsqueeze(0)
    position_ids = (torch.from_numpy(draft.depth).to(device) + past_len).unsqueeze(0)
    out = model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=tree_attention_mask(draft, past_len, model.dtype, device),
        cache=cache,
        use_cache=True,
    )
    return out.logits[0]


@torch.inference_mode()
def keep_accepted_kv(cache: DynamicCache, past_len: int, kept: np.ndarray) -> None:
    """Keep the prefix and the KV entries of the draft nodes `kept` (ascending, starting at 0).

    A truncate when the kept nodes are a contiguous prefix of the flattened order, else the kept
    rows are first moved down in place (each only to an earlier or its own row).
    """
    n_kept = len(kept)
    end = past_len + n_kept
    gather = bool(kept[-1] != n_kept - 1)
    index = torch.from_numpy(np.asarray(kept, dtype=np.int64) + past_len)
    for layer in cache.layers:
        if gather:
            rows = index.to(layer.keys.device)
            layer.keys[..., past_len:end, :] = layer.keys[..., rows, :]
            layer.values[..., past_len:end, :] = layer.values[..., rows, :]
        layer.keys = layer.keys[..., :end, :]
        layer.values = layer.values[..., :end, :]


# Tree-vs-sequential logit error, relative to the logits' spread, above which the 4D mask is
# taken as ignored: rounding stays orders of magnitude below; a mask ignored changes logits by
# about their own spread.
_PROBE_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}
_PROBE_TOLERANCE_HALF = 5e-2


# The probe's draft below a cached prefix ending at `start`: the true path (nodes 0, 2, 4, 5)
# interleaved with wrong siblings, so a model that ignores the mask or the positions gives
# different logits on it.
_PROBE_PATH = np.array([0, 2, 4, 5])
_PROBE_ROWS = (4, 1, 6)  # cached tokens per row of the batched probe: rows of unequal length


def _probe_draft(true: np.ndarray, wrong: np.ndarray, start: int) -> Draft:
    t, w = true[start:], wrong[start:]
    return Draft(
        tokens=np.array([t[0], w[1], t[1], w[2], t[2], t[3]], dtype=np.int64),
        parent=np.array([-1, 0, 0, 1, 2, 4], dtype=np.int32),
        depth=np.array([0, 1, 1, 2, 2, 3], dtype=np.int32),
        scores=np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]),
    )


@torch.inference_mode()
def check_tree_attention(model: PreTrainedModel) -> None:
    """Raise UnsupportedModelError unless draft trees get the logits plain decoding gets, alone
    and in a batch.

    Architecture lists go stale; a probe does not. Twelve tokens; alone: four cached, then a
    tree; batched: three rows with 4, 1 and 6 cached tokens (prefilled in chunks), each with
    such a tree, one of them cut short so that it is padded, in one pass.
    """
    vocab = model.get_input_embeddings().num_embeddings
    ids = (torch.arange(12, device=model.device) * 7919 + 11) % vocab
    true = ids.cpu().numpy()
    wrong = (true + 1) % vocab
    name = type(model).__name__
    try:
        reference = model(input_ids=ids.unsqueeze(0)).logits[0].float()
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:4].unsqueeze(0), cache=cache, use_cache=True)
        draft = _probe_draft(true, wrong, 4)
        alone = verify_forward(model, cache, draft, past_len=4)[_PROBE_PATH].float()
        batch = _batched_probe(model, true, wrong)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{name} failed on a draft tree with a custom 4D attention mask "
            f"({type(exc).__name__}: {exc}); lookahead decoding needs transformers' 4D-mask support"
        ) from exc
    tolerance = _PROBE_TOLERANCE.get(model.dtype, _PROBE_TOLERANCE_HALF)
    scale = reference.std().clamp_min(1e-6)
    if ((alone - reference[4:8]).abs().max() / scale).item() > tolerance:
        raise UnsupportedModelError(
            f"{name} ignores the custom 4D attention mask or position ids: draft-tree logits "
            f"differ from plain decoding; lookahead decoding would not be lossless"
        )
    for start, logits, depth in batch:
        error = ((logits - reference[start + depth]).abs().max() / scale).item()
        if error > tolerance:
            raise UnsupportedModelError(
                f"{name} gives other logits to draft trees batched in rows of different lengths "
                f"(per-row position ids and 4D mask) than to plain decoding ({error:.3g}, "
                f"relative); batched lookahead decoding would not be lossless"
            )


def _batched_probe(
    model: PreTrainedModel, true: np.ndarray, wrong: np.ndarray
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per row: its cached length, the true path's logits, and their depths."""
    cache = BatchKVCache(model, len(_PROBE_ROWS))
    drafts = []
    for row, start in enumerate(_PROBE_ROWS):
        prefill_row(model, cache, row, true[:start], chunk=3)
        drafts.append(_probe_draft(true, wrong, start))
    drafts[1] = drafts[1].truncate(2)  # padded to the others' six nodes
    logits = forward_blocks(
        model, cache, slice(0, len(drafts)), [Block.of_draft(d) for d in drafts]
    )
    out = []
    for row, (start, draft) in enumerate(zip(_PROBE_ROWS, drafts, strict=True)):
        path = _PROBE_PATH[len(draft) > _PROBE_PATH]
        depth = torch.from_numpy(draft.depth[path].astype(np.int64)).to(logits.device)
        out.append((start, logits[row, path].float(), depth))
    return out
