"""The KV cache of a continuous batch: one row per live sequence, rows of different lengths.

Per layer, one `[rows, kv_heads, capacity, head_dim]` buffer for keys and one for values. Each
row has its own length; a forward pass over rows `[r0, r1)` writes row `i`'s `q` new entries at
`[len_i, len_i + q)` and attends over `buffer[r0:r1, :, :max_i len_i + q]`, a view: nothing of
the cache is copied per step. Entries past a row's own length (a shorter row's tail, rejected
draft nodes, padding) are hidden by that row's attention mask and overwritten later, so nothing
is compacted after a step; only the accepted path of a tree that is not a prefix of the
flattened order is moved down, in one gather per layer for all rows. Buffers start zeroed (a
hidden key must still be a finite number: a masked NaN key would poison its softmax row) and
grow geometrically in rows and capacity. A `transformers` `Cache`, so any causal LM that
honours a custom 4D mask and per-row `position_ids` runs on it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

MIN_CAPACITY = 256  # tokens per row at the first allocation


class BatchLayer(CacheLayerMixin):
    """One layer's keys and values for every row, written where the cache's plan says."""

    is_sliding = False

    def __init__(self, cache: BatchKVCache) -> None:
        super().__init__()
        self._cache = cache

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        shape = (0, key_states.shape[1], 0, key_states.shape[-1])
        self.keys = key_states.new_zeros(shape)
        self.values = value_states.new_zeros((*shape[:3], value_states.shape[-1]))
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new entries `[b, kv_heads, q, d]`; return every key and value of the rows."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self._cache.plan
        self._reserve(plan.rows.stop, plan.kv_len)
        for buffer, states in ((self.keys, key_states), (self.values, value_states)):
            if plan.ragged:  # [1, kv_heads, N, d]: token j to (row_index[j], position_index[j])
                buffer[plan.row_index, :, plan.position_index] = states[0].transpose(0, 1)
            elif plan.start is not None:  # every row writes at the same place: a slice
                buffer[plan.rows, :, plan.start : plan.start + states.shape[2]] = states
            else:
                buffer[plan.row_index, :, plan.position_index] = states.transpose(1, 2)
        return self.keys[plan.rows, :, : plan.kv_len], self.values[plan.rows, :, : plan.kv_len]

    def _reserve(self, rows: int, tokens: int) -> None:
        """Grow the buffers (by half, at least) to hold `rows` rows of `tokens` entries."""
        have_rows, have_tokens = self.keys.shape[0], self.keys.shape[2]
        if rows <= have_rows and tokens <= have_tokens:
            return
        new_rows = have_rows if rows <= have_rows else max(rows, have_rows + have_rows // 2)
        new_rows = min(new_rows, self._cache.max_rows)
        new_tokens = (
            have_tokens if tokens <= have_tokens else max(tokens + tokens // 2, MIN_CAPACITY)
        )
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((new_rows, old.shape[1], new_tokens, old.shape[3]))
            new[:have_rows, :, :have_tokens] = old
            setattr(self, name, new)

    def copy_row(self, src: int, dst: int, length: int) -> None:
        self._reserve(dst + 1, length)
        for buffer in (self.keys, self.values):
            buffer[dst, :, :length] = buffer[src, :, :length]

    def gather(self, rows: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        for buffer in (self.keys, self.values):
            buffer[rows, :, dst] = buffer[rows, :, src]  # the right side is a copy: overlap is safe

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._cache.plan.kv_len, 0

    def get_seq_length(self) -> int:
        return self._cache.get_seq_length()

    def get_max_length(self) -> int:
        return -1


class WritePlan:
    """Where the next forward pass writes: rows `rows`, row `i` at `[len_i, len_i + q)`; or,
    for a ragged pass (`sizes`), row `i`'s `sizes[i]` tokens at `[len_i, len_i + sizes[i])`,
    the rows' tokens flattened one after another."""

    def __init__(
        self,
        rows: slice,
        starts: np.ndarray,
        q: int,
        device: torch.device,
        sizes: np.ndarray | None = None,
    ) -> None:
        self.rows = rows
        self.ragged = sizes is not None
        if sizes is not None:
            self.kv_len = int((starts + sizes).max())
            self.start = None
            rows_of = np.repeat(np.arange(rows.start, rows.stop), sizes)
            positions = np.concatenate(
                [s + np.arange(n) for s, n in zip(starts, sizes, strict=True)]
            )
            self.row_index = torch.from_numpy(rows_of).to(device)
            self.position_index = torch.from_numpy(positions).to(device)
            return
        self.kv_len = int(starts.max()) + q
        uniform = bool((starts == starts[0]).all())
        self.start = int(starts[0]) if uniform else None
        if not uniform:
            positions = torch.from_numpy(starts[:, None] + np.arange(q)).to(device)
            self.position_index = positions
            self.row_index = torch.arange(rows.start, rows.stop, device=device)[:, None]


class BatchKVCache(Cache):
    """Rows of different lengths behind one `Cache`; `lengths[r]` entries of row `r` are real.

    The decoder plans each forward (`plan_forward`), then says what each row keeps (`keep`,
    `extend`); `move_row` compacts live rows when a sequence leaves.
    """

    def __init__(self, model: PreTrainedModel, max_rows: int) -> None:
        layers = model.config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[BatchLayer(self) for _ in range(layers)])
        self.max_rows = max_rows
        self.lengths = np.zeros(max_rows, dtype=np.int64)
        self.device = model.device
        self.plan = WritePlan(slice(0, 1), np.zeros(1, dtype=np.int64), 0, self.device)

    def plan_forward(self, rows: slice, q: int, sizes: np.ndarray | None = None) -> None:
        """The next forward pass runs rows `rows` with `q` new tokens each, after their lengths
        (or `sizes[i]` tokens in row `rows.start + i`, flattened: a ragged pass)."""
        if not 0 <= rows.start < rows.stop <= self.max_rows:
            raise ValueError(f"rows {rows} outside [0, {self.max_rows})")
        self.plan = WritePlan(rows, self.lengths[rows], q, self.device, sizes)

    def extend(self, row: int, n: int) -> None:
        """Row `row` keeps the `n` entries its last pass wrote (a prefill chunk)."""
        self.lengths[row] += n

    @torch.inference_mode()
    def keep(self, rows: Sequence[int], kept: Sequence[np.ndarray]) -> None:
        """After a verify pass: row `rows[j]` keeps the tree nodes `kept[j]` (ascending, node 0
        first). Paths that are not a prefix of the flattened order are moved down in place, one
        gather per layer for all rows; then the lengths advance."""
        moves = [
            (row, self.lengths[row] + nodes)
            for row, nodes in zip(rows, kept, strict=True)
            if nodes[-1] != len(nodes) - 1
        ]
        if moves:
            row_index = np.concatenate([np.full(len(src), row) for row, src in moves])
            src = np.concatenate([src for _, src in moves])
            dst = np.concatenate([self.lengths[row] + np.arange(len(s)) for row, s in moves])
            index = [torch.from_numpy(a).to(self.device) for a in (row_index, src, dst)]
            for layer in self.layers:
                if layer.is_initialized:
                    layer.gather(*index)
        for row, nodes in zip(rows, kept, strict=True):
            self.lengths[row] += len(nodes)

    @torch.inference_mode()
    def copy_row(self, src: int, dst: int) -> None:
        """Row `dst` holds what row `src` holds."""
        length = int(self.lengths[src])
        for layer in self.layers:
            if layer.is_initialized and length:
                layer.copy_row(src, dst, length)
        self.lengths[dst] = length

    def move_row(self, src: int, dst: int) -> None:
        """Row `src`'s entries become row `dst`'s (compaction when a sequence leaves)."""
        self.copy_row(src, dst)
        self.clear_row(src)

    def clear_row(self, row: int) -> None:
        """A new sequence starts in `row`: nothing of the old one stays visible."""
        self.lengths[row] = 0

    def row_kv(self, row: int, tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Per layer, views `[kv_heads, >= tokens, head_dim]` of row `row`'s keys and values
        (room for `tokens` made first); None before the first pass has shaped the buffers."""
        if not all(layer.is_initialized for layer in self.layers):
            return None
        for layer in self.layers:
            layer._reserve(row + 1, tokens)
        return [layer.keys[row] for layer in self.layers], [
            layer.values[row] for layer in self.layers
        ]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The longest row of the planned pass (models ask only when not given positions)."""
        return int(self.lengths[self.plan.rows].max())
