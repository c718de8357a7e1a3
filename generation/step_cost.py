"""The step-cost surface t(b, q): what one verify pass costs for b sequences of q rows each.

Drafting pays only when the tokens a step is expected to yield grow faster than its cost
(docs/architecture.md, "The cost model"); on a GPU t(1, 64) ~ t(1, 1), on a CPU it is not. So
the engine measures the surface once per model, device, dtype and thread count, the way it runs
its steps (b sequences, each with its own cache of a few hundred tokens and a tree-shaped draft
padded to q rows, in one pass of `forward_blocks`; the argmax on the host; then `keep`), one
curve t(q) per b (powers of two up to the largest batch), kept as JSON beside the converted
models and interpolated between them (`BatchCosts`). A lone request is the curve at b = 1.

A ragged decoder's curves are measured ragged: at mean size q, half the rows verify `2q - 1`
nodes and half only their root (a confident sequence beside one with nothing to copy), so
t(b, N / b) prices a pass of N tokens the way it runs. The start-up curve is a short
measurement on a cache shorter than most RAG prompts, so the decoder corrects it by what its
passes really take (`CostFeedback`). A measurement taken while other processes held the CPU
(its own CPU time well under its wall time) is used but never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from generation.defaults import PREFILL_CHUNK, cache_dir
from generation.kv_cache import BatchKVCache
from generation.models import LoadedModel
from generation.verify import Block, forward_blocks, prefill_row
from trie_store.draft import Draft

QS = (1, 2, 4, 8, 16, 32, 64)
STARTUP_QS = (1, 2, 4, 8, 16, 32)  # beyond 32: the last slope
CONTEXT_LEN = 700
GRID_ROWS = 128  # a start-up curve stops at b * q <= this (beyond: the last slope)
# Bump when the verify pass changes how fast it runs, so cached curves are measured again.
# 3: grouped heads folded; 4: ragged attention padded (verify.pad_attention); 5: the CPU
# attention kernel; 6: ragged passes on it
CURVE_VERSION = 6
# A start-up measurement that got less than this share of the CPU time it asked for (threads x
# wall time) ran beside something else: used, but not cached (the next start measures again).
BUSY_SHARE = 0.6
FEEDBACK_WEIGHT = 0.1  # of each observed pass in the running correction

log = logging.getLogger(__name__)


@dataclass
class StepCostCurve:
    """Median milliseconds of one verify pass of `q` tokens, for the `q` that were measured."""

    t_ms: dict[int, float]
    device: str
    dtype: str
    model: str
    threads: int
    batch: int = 1
    context_len: int = CONTEXT_LEN
    ragged: bool = False

    def __post_init__(self) -> None:
        if not self.t_ms or min(self.t_ms) < 1 or min(self.t_ms.values()) <= 0:
            raise ValueError(f"a step-cost curve needs positive times for q >= 1, got {self.t_ms}")
        self.t_ms = {int(q): float(t) for q, t in sorted(self.t_ms.items())}
        self._qs = np.array(list(self.t_ms), dtype=np.float64)
        self._ts = np.array(list(self.t_ms.values()), dtype=np.float64)

    def time(self, q: int) -> float:
        """t(q) in ms: linear between measured points, flat below the first, last slope above."""
        return float(self.times(np.array([q]))[0])

    def times(self, qs: np.ndarray) -> np.ndarray:
        """`time` for an array of `q` (what the per-step budget choice uses)."""
        qs = np.asarray(qs, dtype=np.float64)
        if qs.size and qs.min() < 1:
            raise ValueError(f"a verify pass has q >= 1 tokens, got {qs.min():g}")
        out = np.interp(qs, self._qs, self._ts)
        if len(self._qs) > 1:
            slope = (self._ts[-1] - self._ts[-2]) / (self._qs[-1] - self._qs[-2])
            above = qs > self._qs[-1]
            out[above] = self._ts[-1] + max(slope, 0.0) * (qs[above] - self._qs[-1])
        return out

    def to_json(self) -> str:
        data = asdict(self)
        data["t_ms"] = {str(q): round(t, 3) for q, t in self.t_ms.items()}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> StepCostCurve:
        data = json.loads(text)
        data["t_ms"] = {int(q): float(t) for q, t in data["t_ms"].items()}
        return cls(**data)


def tree_draft(q: int, rng: np.random.Generator, vocab: int) -> Draft:
    """A best-first draft of `q` nodes shaped like a trie's: a main branch with side branches."""
    parent = np.full(q, -1, dtype=np.int32)
    depth = np.zeros(q, dtype=np.int32)
    for i in range(1, q):
        # every third node starts a side branch off an earlier node; the rest extend the last one
        parent[i] = i - 1 if i % 3 else int(rng.integers(0, i - 1))
        depth[i] = depth[parent[i]] + 1
    scores = np.concatenate([[1.0], np.linspace(0.9, 0.05, q - 1)]) if q > 1 else np.ones(1)
    return Draft(rng.integers(0, vocab, q).astype(np.int64), parent, depth, scores)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def row_sizes(q: int, batch: int, ragged: bool) -> list[int]:
    """Tree sizes of a measured pass at mean `q`: all `q` padded; ragged, half the rows `2q - 1`
    and half 1 (an odd row out: `q`)."""
    if not ragged or q == 1 or batch == 1:
        return [q] * batch
    half = batch // 2
    return [2 * q - 1] * half + [1] * half + [q] * (batch % 2)


def _step_ms(lm: LoadedModel, cache: BatchKVCache, drafts: list[Draft], ragged: bool) -> float:
    """One engine step's device work for one row per draft verifying it, in one pass: verify,
    argmax to the host (this waits for the device), keep the root and a child."""
    batch = len(drafts)
    past_len = cache.lengths[:batch].copy()
    _synchronize(lm.device)
    t0 = time.perf_counter()
    blocks = [Block.of_draft(d) for d in drafts]
    logits = forward_blocks(lm.model, cache, slice(0, batch), blocks, ragged=ragged)
    for row in logits:
        row.argmax(dim=-1).cpu()
    cache.keep(range(batch), [np.arange(min(2, len(d))) for d in drafts])
    elapsed = (time.perf_counter() - t0) * 1e3
    cache.lengths[:batch] = past_len
    return elapsed


def _stepper(
    lm: LoadedModel, context: np.ndarray, batch: int, ragged: bool
) -> Callable[[list[Draft]], float]:
    """A timed step of `batch` rows, each holding its own copy of `context`."""
    rows = BatchKVCache(lm.model, batch)
    prefill_row(lm.model, rows, 0, context, PREFILL_CHUNK)
    for row in range(1, batch):
        rows.copy_row(0, row)
    return lambda drafts: _step_ms(lm, rows, drafts, ragged)


def sample_step_costs(
    lms: Sequence[LoadedModel],
    qs: Sequence[int] = QS,
    context_len: int = CONTEXT_LEN,
    repeats: int = 9,
    warmup: int = 2,
    seed: int = 0,
    batch: int = 1,
    ragged: bool = False,
) -> list[dict[int, list[float]]]:
    """Per model, `repeats` step times (ms) for each `q`, interleaved round by round over the
    models and the `qs`, so that a noisy neighbour slows every one alike; `batch` sequences a
    step, `q` nodes each on average (`row_sizes`)."""
    qs = sorted({int(q) for q in qs})
    if not qs or qs[0] < 1:
        raise ValueError(f"qs must be positive token counts, got {qs}")
    if repeats < 1 or warmup < 0 or context_len < 1 or batch < 1:
        raise ValueError("repeats >= 1, warmup >= 0, context_len >= 1 and batch >= 1 are needed")
    for lm in lms:
        limit = getattr(lm.model.config, "max_position_embeddings", None)
        if limit is not None and context_len + qs[-1] > limit:
            raise ValueError(
                f"context_len {context_len} + q {qs[-1]} exceeds {lm.name}'s context window {limit}"
            )
    rng = np.random.default_rng(seed)
    vocab = min(lm.model.get_input_embeddings().num_embeddings for lm in lms)
    context = rng.integers(0, vocab, context_len)
    steppers = [_stepper(lm, context, batch, ragged) for lm in lms]
    samples: list[dict[int, list[float]]] = [{q: [] for q in qs} for _ in lms]
    for round_ in range(warmup + repeats):
        for q in qs:
            drafts = [tree_draft(n, rng, vocab) for n in row_sizes(q, batch, ragged)]
            for step, times in zip(steppers, samples, strict=True):
                ms = step(drafts)
                if round_ >= warmup:
                    times[q].append(ms)
    return samples


def curve_from_samples(
    lm: LoadedModel,
    samples: dict[int, list[float]],
    context_len: int,
    batch: int = 1,
    ragged: bool = False,
) -> StepCostCurve:
    return StepCostCurve(
        t_ms={q: statistics.median(v) for q, v in samples.items()},
        device=str(lm.device),
        dtype=str(lm.dtype).removeprefix("torch."),
        model=lm.name,
        threads=torch.get_num_threads(),
        batch=batch,
        context_len=context_len,
        ragged=ragged,
    )


def measure_step_costs(
    lm: LoadedModel,
    qs: Sequence[int] = QS,
    context_len: int = CONTEXT_LEN,
    repeats: int = 9,
    warmup: int = 2,
    seed: int = 0,
    batch: int = 1,
    ragged: bool = False,
) -> StepCostCurve:
    """The median step time of each `q` (see `sample_step_costs`)."""
    samples = sample_step_costs([lm], qs, context_len, repeats, warmup, seed, batch, ragged)[0]
    return curve_from_samples(lm, samples, context_len, batch, ragged)


def curve_path(lm: LoadedModel, batch: int, ragged: bool = False) -> Path:
    """One file per model, device, dtype, thread count, speed-ups, torch version, batch size
    and layout."""
    key = "|".join(
        map(
            str,
            (
                lm.name,
                lm.device,
                lm.dtype,
                torch.get_num_threads(),
                ",".join(lm.speedups),
                torch.__version__,
                CURVE_VERSION,
                f"batch={batch}",
                "ragged" if ragged else "padded",
            ),
        )
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in lm.name)[-48:]
    return cache_dir() / "step_costs" / f"{stem}-{digest}.json"


def _measure_alone(lm: LoadedModel, batch: int, ragged: bool) -> tuple[StepCostCurve, bool]:
    """A short measurement, and whether it had the CPU to itself (see BUSY_SHARE)."""
    wall, cpu = time.perf_counter(), time.process_time()
    curve = measure_step_costs(
        lm, qs=batch_qs(batch), repeats=3, warmup=1, batch=batch, ragged=ragged
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    alone = lm.device.type != "cpu" or cpu >= BUSY_SHARE * wall * torch.get_num_threads()
    return curve, alone


def load_or_measure(lm: LoadedModel, batch: int, ragged: bool = False) -> StepCostCurve:
    """The cached curve of this set-up at `batch` sequences, or a short measurement (~1-2 s here
    per curve) saved for next time.

    A corrupt or unreadable cache file is measured again, never trusted; a measurement that
    never had the CPU to itself is used but not saved.
    """
    path = curve_path(lm, batch, ragged)
    try:
        return StepCostCurve.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        pass
    curve, alone = _measure_alone(lm, batch, ragged)
    if not alone:
        log.warning(
            "step costs at batch %d measured while the CPU was busy; used now, not cached", batch
        )
        return curve
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed: concurrent start-ups never read a half-written file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(curve.to_json())
    os.replace(f.name, path)
    return curve


def batch_qs(batch: int) -> list[int]:
    """The start-up `q`s of a batched curve: `b * q <= GRID_ROWS`, and at least 1 and 2."""
    return [q for q in STARTUP_QS if q <= 2 or batch * q <= GRID_ROWS]


def batch_sizes(max_batch: int) -> list[int]:
    """The `b`s measured for a batch of up to `max_batch`: powers of two, and `max_batch`."""
    sizes = [b for b in (1 << i for i in range(max_batch.bit_length())) if b < max_batch]
    return [*sizes, max_batch]


class BatchCosts:
    """t(b, q) in ms from one measured curve per batch size: linear in `q` within a curve (the
    last slope beyond it), linear in `b` between curves (the last two curves' slope beyond)."""

    def __init__(self, curves: dict[int, StepCostCurve]) -> None:
        if not curves or min(curves) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {sorted(curves)}")
        self.curves = dict(sorted(curves.items()))
        self._sizes = np.array(list(self.curves))

    def times(self, batch: int, qs: np.ndarray) -> np.ndarray:
        """t(batch, q) for an array of `q`."""
        if batch in self.curves:
            return self.curves[batch].times(qs)
        sizes = self._sizes
        if len(sizes) == 1 or batch < sizes[0]:
            return self.curves[int(sizes[0])].times(qs)
        at = min(int(np.searchsorted(sizes, batch)), len(sizes) - 1)
        lo, hi = int(sizes[at - 1]), int(sizes[at])
        t_lo, t_hi = self.curves[lo].times(qs), self.curves[hi].times(qs)
        return t_lo + np.maximum(t_hi - t_lo, 0.0) * (batch - lo) / (hi - lo)


def load_batch_costs(lm: LoadedModel, max_batch: int, ragged: bool = False) -> BatchCosts:
    """The cost surface up to `max_batch` sequences (cached per curve)."""
    return BatchCosts({b: load_or_measure(lm, b, ragged) for b in batch_sizes(max_batch)})


class CostFeedback:
    """t(b, q) corrected by the passes a decoder really ran: per batch size, a running mean of
    (measured - predicted) ms added to the surface (never below half of it). The start-up curve
    is taken on 700-token caches; RAG rows are longer and mixed, which adds a roughly constant
    attention cost per pass that this offset absorbs."""

    def __init__(self, costs: BatchCosts, weight: float = FEEDBACK_WEIGHT) -> None:
        self.costs = costs
        self.weight = weight
        self.offset_ms: dict[int, float] = {}

    def times(self, batch: int, qs: np.ndarray) -> np.ndarray:
        base = self.costs.times(batch, qs)
        return np.maximum(base + self.offset_ms.get(batch, 0.0), 0.5 * base)

    def observe(self, batch: int, q: float, ms: float) -> None:
        """A pass of `batch` rows at (mean) `q` nodes took `ms`."""
        error = ms - float(self.costs.times(batch, np.array([q]))[0])
        old = self.offset_ms.get(batch, 0.0)
        self.offset_ms[batch] = old + self.weight * (error - old)
