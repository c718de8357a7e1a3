"""The decode engine: continuous batching, one forward pass per step for every live sequence.
A lone request is a batch of one (`LookaheadGenerator.stream`).

    generator = LookaheadGenerator.load()
    decoder = generator.decoder(max_batch=8)
    handle = decoder.add(generator.request("What is a trie?"))
    while decoder.busy:
        for handle, chunk in decoder.step():
            ...

Sequences wait, oldest first, in the decoder's queue (the only one: a server reads its length).
Each step: newcomers take free rows and are prefilled in chunks (at most `prefill_chunk` tokens a
step while others decode, so a long prompt delays them by one chunk, not the whole prompt; all
at once when nobody is decoding), then every decoding sequence drafts from its own
drafter, the cost model picks the rows per sequence `q` that maximise the batch's goodput
(`budget.choose_rows` over `t(b, q)`: under light load drafts grow, under heavy load they shrink
to plain batched decoding; in a ragged pass each sequence gets its own count,
`budget.choose_nodes`), and one pass verifies every tree, each in its own cache row. Each
sequence then accepts by its own rule (greedy, or exact sampling with its own seed), keeps its
accepted KV entries, and scans for EOS / stop strings / its token budget. Finished, failed and
cancelled sequences leave between steps; the last row moves into the freed one, so live rows
stay `[0, b)`. Output per sequence is exactly what it would be decoded alone.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from generation.budget import choose_nodes, choose_rows
from generation.defaults import PREFILL_CHUNK
from generation.kv_cache import BatchKVCache
from generation.models import LoadedModel
from generation.prefix_cache import PrefixCache
from generation.request import Chunk, DecodeStats, Request
from generation.step_cost import BatchCosts, CostFeedback, load_batch_costs
from generation.verify import Block, forward_blocks, prefill_row
from trie_store.draft import Draft

# Admission order with a prefix cache: a second of waiting weighs as much as this many cached
# prompt tokens (about one second of prefill here), so a request with nothing cached waits
# behind cache hits for a few seconds at most.
AGING_TOKENS = 1000


@dataclass
class BatchStats:
    """Figures of the whole batch; times in seconds."""

    steps: int = 0  # decode passes
    sequences: int = 0  # sum over steps of the sequences decoded
    tokens: int = 0  # emitted
    draft_rows: int = 0  # drafted nodes verified
    rows: int = 0  # token rows the passes computed: b * q padded, sum of tree sizes ragged
    prefill_passes: int = 0
    prefill_tokens: int = 0  # prompt tokens computed
    prefix_tokens: int = 0  # prompt tokens loaded from the prefix cache instead
    prefill_s: float = 0.0
    forward_s: float = 0.0  # decode passes
    draft_s: float = 0.0  # drafting and sizing the drafts
    accept_s: float = 0.0  # acceptance, drafter updates, stop scans
    keep_s: float = 0.0  # keeping the accepted entries in the cache

    @property
    def mean_batch(self) -> float:
        return self.sequences / self.steps if self.steps else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def draft_rows_per_step(self) -> float:
        return self.draft_rows / self.steps if self.steps else 0.0


class _Sequence:
    def __init__(self, handle: int, request: Request) -> None:
        self.handle = handle
        self.request = request
        self.row: int | None = None  # its cache row, once it has one
        self.queued_at = time.perf_counter()


class BatchDecoder:
    """Up to `max_batch` live sequences decoded together, one forward pass per step.

    Not thread-safe: one thread calls `add`, `cancel` and `step` (the service's model thread).
    An exception raised by one sequence's drafter or stop scan ends that sequence alone (its
    last chunk has finish_reason "error" and the exception); one raised by the model ends the
    sequences of the pass that raised it, the same way.
    """

    def __init__(
        self,
        lm: LoadedModel,
        max_batch: int = 8,
        costs: BatchCosts | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
        ragged: bool = False,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        """`costs`: the cost surface up to `max_batch` (`LookaheadGenerator.decoder` passes the
        one it measured at start-up); None measures it when the first request needs it.
        `ragged`: verify trees of different sizes flattened (the load-time probe says whether
        the model can), measured in that layout. `prefix_cache`: prompt KV shared across the
        requests this decoder serves (docs/batching.md, "Prefix reuse")."""
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(
                f"max_batch and prefill_chunk must be >= 1, got {max_batch} and {prefill_chunk}"
            )
        self.lm = lm
        self.model = lm.model
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.ragged = ragged
        self.prefix_cache = prefix_cache
        self.cache = BatchKVCache(self.model, max_batch)
        self.stats = BatchStats()
        self._costs = costs
        self._feedback: CostFeedback | None = None
        self._handles = itertools.count()
        self._waiting: deque[_Sequence] = deque()
        self._prefilling: deque[_Sequence] = deque()  # the first one owns row len(_rows)
        self._rows: list[_Sequence] = []  # decoding, sequence i in cache row i

    def costs(self) -> CostFeedback:
        """The measured t(b, q) of this model and device (cached across runs), corrected by what
        this decoder's passes really take (longer caches, mixed lengths, a busier machine)."""
        if self._feedback is None:
            if self._costs is None:
                self._costs = load_batch_costs(self.lm, self.max_batch, self.ragged)
            self._feedback = CostFeedback(self._costs)
        return self._feedback

    def add(self, request: Request) -> int:
        """Queue a checked request (`LookaheadGenerator.request`); returns its handle. It joins
        the batch at the first step with a free row."""
        if request.policy.fixed is None:
            self.costs()
        sequence = _Sequence(next(self._handles), request)
        self._waiting.append(sequence)
        return sequence.handle

    def cancel(self, handle: int) -> bool:
        """Drop a queued or live sequence now; False if it is unknown or already finished."""
        for queue in (self._waiting, self._prefilling):
            for sequence in queue:
                if sequence.handle == handle:
                    self._leave(sequence)
                    return True
        for sequence in self._rows:
            if sequence.handle == handle:
                self._leave(sequence)
                return True
        return False

    @property
    def live(self) -> int:
        """Sequences holding a row (decoding or being prefilled)."""
        return len(self._rows) + len(self._prefilling)

    @property
    def waiting(self) -> int:
        """Sequences queued for a row."""
        return len(self._waiting)

    def is_waiting(self, handle: int) -> bool:
        """Whether the sequence is still queued for a row (not yet prefilling or decoding)."""
        return any(sequence.handle == handle for sequence in self._waiting)

    @property
    def free(self) -> int:
        """Sequences that can be added now and still get a row at the next step."""
        return max(0, self.max_batch - self.live - len(self._waiting))

    def stats_of(self, handle: int) -> DecodeStats | None:
        """A queued or live sequence's figures, updated in place as it decodes (None once it
        has left): what a server counts per step."""
        for sequence in itertools.chain(self._waiting, self._prefilling, self._rows):
            if sequence.handle == handle:
                return sequence.request.stats
        return None

    def row_of(self, handle: int) -> int | None:
        """The cache row of a decoding sequence (None while it waits or is being prefilled)."""
        return next((s.row for s in self._rows if s.handle == handle), None)

    @property
    def busy(self) -> bool:
        return bool(self.live or self._waiting)

    def step(self) -> list[tuple[int, Chunk]]:
        """Admit, prefill a chunk, then one decode pass; each decoded sequence's chunk.

        A model error fails the sequences of the pass it broke (a prefill: that sequence; a
        decode pass: every decoding one), each with a last chunk carrying it, and the others
        go on."""
        while self._waiting and self.live < self.max_batch:
            sequence = self._next_waiting()
            sequence.request.stats.queue_s = time.perf_counter() - sequence.queued_at
            self._prefilling.append(sequence)
        events = self._prefill()
        return events + self._decode() if self._rows else events

    def _prefill(self) -> list[tuple[int, Chunk]]:
        """Newcomers' prompts into their rows, in order: `prefill_chunk` tokens while others
        decode, every prompt whole while nobody does."""
        failed = []
        budget = self.prefill_chunk if self._rows else None
        while self._prefilling and (budget is None or budget > 0):
            sequence = self._prefilling[0]
            request = sequence.request
            if sequence.row is None:
                sequence.row = len(self._rows)
                self.cache.clear_row(sequence.row)
                self._reuse_prefix(sequence)
            done = int(self.cache.lengths[sequence.row])
            take = request.cached - done if budget is None else min(request.cached - done, budget)
            t0 = time.perf_counter()
            ids = request.context[done : done + take]
            try:
                prefill_row(self.model, self.cache, sequence.row, ids, self.prefill_chunk)
            except Exception as exc:  # the model failed on this prompt: it alone fails
                failed.append(self._failed(sequence, exc))
                self._leave(sequence)
                continue
            elapsed = time.perf_counter() - t0
            request.stats.prefill_s += elapsed
            self.stats.prefill_s += elapsed
            self.stats.prefill_passes += -(-take // self.prefill_chunk)
            self.stats.prefill_tokens += take
            if budget is not None:
                budget -= take
            if self.cache.lengths[sequence.row] == request.cached:
                self._share_prefix(sequence)
                self._rows.append(self._prefilling.popleft())
        return failed

    def _next_waiting(self) -> _Sequence:
        """The waiting sequence to admit: with a prefix cache, the one with the most prompt
        tokens cached, a second of waiting counting as AGING_TOKENS cached tokens so that
        nobody starves (SGLang's longest-prefix-first); else the oldest."""
        if self.prefix_cache is None or len(self._waiting) == 1:
            return self._waiting.popleft()
        now = time.perf_counter()

        def priority(sequence: _Sequence) -> float:
            request = sequence.request
            cached = self.prefix_cache.peek(request.context[: request.cached])
            return cached * request.reuse_prefix + AGING_TOKENS * (now - sequence.queued_at)

        best = max(self._waiting, key=priority)  # the first maximum: the oldest
        self._waiting.remove(best)
        return best

    def _reuse_prefix(self, sequence: _Sequence) -> None:
        """Load the longest cached prefix of its prompt into its (cleared) row."""
        request = sequence.request
        if self.prefix_cache is None or not request.reuse_prefix:
            return
        with self.prefix_cache.lookup(request.context[: request.cached]) as match:
            views = self.cache.row_kv(sequence.row, match.n_tokens)
            if match.n_tokens and views is not None:
                match.copy_to(*views)
                self.cache.lengths[sequence.row] = match.n_tokens
                request.stats.prefix_tokens = match.n_tokens
                self.stats.prefix_tokens += match.n_tokens

    def _share_prefix(self, sequence: _Sequence) -> None:
        """Its prompt's KV, now whole in its row, into the prefix cache for later requests."""
        request = sequence.request
        if self.prefix_cache is None or not request.reuse_prefix:
            return
        views = self.cache.row_kv(sequence.row, request.cached)
        if views is not None:
            self.prefix_cache.insert(request.context[: request.cached], *views)

    def _decode(self) -> list[tuple[int, Chunk]]:
        events: list[tuple[int, Chunk]] = []
        drafted: dict[int, Draft] = {}
        start = time.perf_counter()
        for sequence in list(self._rows):
            t0 = time.perf_counter()
            try:
                drafted[sequence.handle] = sequence.request.draft()
            except Exception as exc:  # this sequence's drafter: it alone fails
                events.append(self._failed(sequence, exc))
                self._leave(sequence)
                continue
            sequence.request.stats.draft_s += time.perf_counter() - t0
        if not self._rows:
            return events
        rows = list(self._rows)
        drafts = self._sized([drafted[s.handle] for s in rows])
        t0 = time.perf_counter()
        self.stats.draft_s += t0 - start
        try:
            blocks = [Block.of_draft(d) for d in drafts]
            logits = forward_blocks(
                self.model, self.cache, slice(0, len(rows)), blocks, ragged=self.ragged
            )
        except Exception as exc:  # the pass failed: every sequence in it, the queue goes on
            for sequence in rows:
                events.append(self._failed(sequence, exc))
                self._leave(sequence)
            return events
        forward_s = time.perf_counter() - t0
        accept_start = time.perf_counter()
        kept_rows, kept, leaving = [], [], []
        for row, (sequence, draft) in enumerate(zip(rows, drafts, strict=True)):
            request = sequence.request
            t0 = time.perf_counter()
            request.stats.forward_s += forward_s
            try:
                verified = request.rule.verified(logits[row])
                nodes, chunk = request.settle(draft, verified)
            except Exception as exc:  # its stop scan or drafter update
                events.append(self._failed(sequence, exc))
                leaving.append(sequence)
                continue
            request.stats.accept_s += time.perf_counter() - t0
            kept_rows.append(row)
            kept.append(nodes)
            events.append((sequence.handle, chunk))
            self.stats.tokens += len(chunk.token_ids)
            if chunk.finish_reason is not None:
                leaving.append(sequence)
        keep_start = time.perf_counter()
        self.cache.keep(kept_rows, kept)
        self.stats.accept_s += keep_start - accept_start
        self.stats.keep_s += time.perf_counter() - keep_start
        self._count(drafts, forward_s)
        for sequence in leaving:  # only now: leaving moves rows
            self._leave(sequence)
        return events

    def _sized(self, drafts: Sequence[Draft]) -> list[Draft]:
        """Every draft cut to its share of the pass: a fixed draft size is kept as asked; with
        `auto` the cost model chooses (per sequence if ragged, one `q` for all if padded)."""
        expected = []
        for sequence, draft in zip(self._rows, drafts, strict=True):
            k = min(sequence.request.policy.max_nodes, draft.size)
            expected.append(draft.expected_accepted()[: k + 1])
        fixed = [s.request.policy.fixed is not None for s in self._rows]
        b = len(drafts)
        if all(fixed):
            nodes = [len(e) for e in expected]
        elif self.ragged:
            floors = [len(e) if f else 1 for e, f in zip(expected, fixed, strict=True)]
            nodes = choose_nodes(expected, lambda qs: self.costs().times(b, qs), floors)
        else:
            floor = max([len(e) for e, f in zip(expected, fixed, strict=True) if f], default=1)
            q = choose_rows(expected, lambda qs: self.costs().times(b, qs), floor)
            nodes = [min(q, len(e)) for e in expected]
        return [d.truncate(n - 1) for d, n in zip(drafts, nodes, strict=True)]

    def _count(self, drafts: Sequence[Draft], forward_s: float) -> None:
        stats = self.stats
        b, sizes = len(drafts), [len(d) for d in drafts]
        ragged = self.ragged and len(set(sizes)) > 1
        q = sum(sizes) / b if ragged else max(sizes)
        stats.steps += 1
        stats.sequences += b
        stats.draft_rows += sum(d.size for d in drafts)
        stats.rows += sum(sizes) if ragged else b * q
        stats.forward_s += forward_s
        if self._feedback is not None:
            self._feedback.observe(b, q, forward_s * 1e3)

    @staticmethod
    def _failed(sequence: _Sequence, exc: Exception) -> tuple[int, Chunk]:
        return sequence.handle, Chunk([], "", "error", sequence.request.stats, error=exc)

    def _leave(self, sequence: _Sequence) -> None:
        """Free the sequence's row; the last decoding row moves into it, and a newcomer being
        prefilled right after the decoding rows moves down one, so rows stay contiguous."""
        if sequence in self._waiting:
            self._waiting.remove(sequence)
            return
        if sequence in self._prefilling:
            self._prefilling.remove(sequence)
            if sequence.row is not None:
                self.cache.clear_row(sequence.row)
            return
        row, last = sequence.row, len(self._rows) - 1
        moved = self._rows.pop()
        if moved is not sequence:
            self.cache.move_row(last, row)
            moved.row = row
            self._rows[row] = moved
        else:
            self.cache.clear_row(row)
        if self._prefilling and self._prefilling[0].row is not None:
            newcomer = self._prefilling[0]
            self.cache.move_row(newcomer.row, last)
            newcomer.row = last
