"""`lookahead-rag bench-trie`: seed, draft and memory figures of the trie store
(docs/benchmarks.md).

Token data: Python's own standard library source, split into words and punctuation and mapped
to ids in order of first appearance. Code repeats itself the way RAG answers repeat their
passages, and it is on every machine, so the figures are reproducible without a model. The
request is 4096 tokens of passages and prompt; the "answer" alternates spans copied from the
passages with unseen text, and is decoded token by token: draft, then observe the next token.
Draft quality is a proxy: the tokens a greedy verifier would accept if the model's output were
that answer, next to what the draft's scores promised (`expected`).

The global trie is read-only: a replica rebuilds it from counted answer windows, as its
`NgramSync` does (`answer_ngrams` counts, the store's top k members, `decode_members`,
`build_trie`). So "global insert" times what learning one more answer costs a replica: count
its windows, then rebuild the trie from the top `--budget` members of everything counted.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import re
import sysconfig
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import TypeVar

import numpy as np

from trie_store import Draft, GlobalTrie, RequestDrafter, TrieConfig
from trie_store.sharing import SyncConfig
from trie_store.sharing.members import answer_ngrams
from trie_store.sharing.popular_trie import build_trie, decode_members

HELP = "micro-benchmark of the n-gram drafting"

WORD = re.compile(r"\w+|[^\w\s]")
T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=200, help="seeds timed (default 200)")
    parser.add_argument("--steps", type=int, default=2000, help="decode steps timed per D")
    parser.add_argument("--seed-tokens", type=int, default=4096, help="request size in tokens")
    parser.add_argument(
        "--budget",
        type=int,
        default=SyncConfig.top_k,
        help="global trie size: the store's top k members it is built from (SyncConfig.top_k)",
    )
    parser.add_argument("--branch-length", type=int, default=TrieConfig.branch_length)
    parser.add_argument("--max-context", type=int, default=TrieConfig.max_context)
    parser.add_argument("--prior", type=float, default=TrieConfig.prior)
    parser.add_argument("--seed", type=int, default=0, help="random seed of the workload")


@dataclass
class Samples:
    """Times of repeated calls: wall clock (what a caller waits) and this thread's CPU time
    (the same minus the time other processes held the core: on a shared machine the tail of
    the wall clock is mostly theirs)."""

    unit_ns: float  # 1e3: microseconds, 1e6: milliseconds
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def time(self, fn: Callable[[], T]) -> T:
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        result = fn()
        self.cpu.append((time.thread_time_ns() - cpu) / self.unit_ns)
        self.wall.append((time.perf_counter_ns() - wall) / self.unit_ns)
        return result

    def summary(self) -> dict[str, float]:
        wall, cpu = np.percentile(self.wall, [50, 95]), np.percentile(self.cpu, [50, 95])
        return {
            "p50": round(float(wall[0]), 2),
            "p95": round(float(wall[1]), 2),
            "cpu_p50": round(float(cpu[0]), 2),
            "cpu_p95": round(float(cpu[1]), 2),
        }


@dataclass
class Decode:
    """Per-step figures of one pass over the answer."""

    draft: Samples = field(default_factory=lambda: Samples(1e3))
    observe: Samples = field(default_factory=lambda: Samples(1e3))
    size: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)  # if the model said the answer's tokens
    expected: list[float] = field(default_factory=list)  # what the draft's scores promised


def stdlib_tokens(count: int) -> np.ndarray:
    """`count` token ids from the standard library's source files, in sorted file order."""
    vocab: dict[str, int] = {}
    ids: list[int] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        words = WORD.findall(path.read_text(encoding="utf-8", errors="replace"))
        ids.extend(vocab.setdefault(w, len(vocab)) for w in words)
        if len(ids) >= count:
            return np.array(ids[:count], dtype=np.int64)
    raise RuntimeError(f"the standard library holds fewer than {count} tokens")


def answer_tokens(
    passages: np.ndarray, unseen: np.ndarray, length: int, rng: np.random.Generator
) -> np.ndarray:
    """Spans of 8-48 tokens copied from the passages, alternating with unseen text."""
    parts, total, copy = [], 0, True
    while total < length:
        span = int(rng.integers(8, 49))
        source = passages if copy else unseen
        start = int(rng.integers(0, len(source) - span))
        parts.append(source[start : start + span])
        total += span
        copy = not copy
    return np.concatenate(parts)[:length]


def accepted_length(draft: Draft, future: list[int]) -> int:
    """Draft tokens a greedy verifier accepts when the model's next tokens are `future`."""
    pairs = zip(draft.parent.tolist(), draft.tokens.tolist(), strict=True)
    child = {pair: i for i, pair in enumerate(pairs)}
    node, n = 0, 0
    for token in future:
        node = child.get((node, token))
        if node is None:
            break
        n += 1
    return n


def decode(drafter: RequestDrafter, prompt: np.ndarray, answer: np.ndarray, nodes: int) -> Decode:
    """Walk the answer as a decode loop would: draft, then observe the next token."""
    tokens = np.concatenate([prompt, answer])
    future = answer.tolist()
    out = Decode()
    for i in range(len(answer)):
        context = tokens[: len(prompt) + i]
        draft = out.draft.time(lambda context=context: drafter.draft(context, nodes))
        out.observe.time(lambda i=i: drafter.observe(answer[i : i + 1]))
        out.size.append(draft.size)
        out.accepted.append(accepted_length(draft, future[i : i + 16]))
        out.expected.append(float(draft.scores[1:].sum()))
    return out


def traced_bytes(build: Callable[[], object]) -> tuple[object, int]:
    """What `build` returns, and the bytes it still holds (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        made = build()
        return made, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def answer_counts(answers: Iterable[np.ndarray], config: TrieConfig) -> Counter[bytes]:
    """How often each window of the answers occurs, by store member."""
    counts: Counter[bytes] = Counter()
    for answer in answers:
        counts.update(answer_ngrams(answer, config))
    return counts


def global_trie(
    counts: Mapping[bytes, float], config: TrieConfig, top_k: int, vocab_size: int
) -> GlobalTrie:
    """The trie a replica drafts from after a pull: the `top_k` most counted members (ranked
    as the store ranks them), decoded and built as `NgramSync._rebuild` does."""
    top = heapq.nlargest(top_k, counts.items(), key=itemgetter(1))
    ngrams = decode_members([m for m, _ in top], [c for _, c in top], config, vocab_size)
    return build_trie(ngrams, config)


def run(args: argparse.Namespace) -> int:
    for name in ("repeats", "steps", "seed_tokens", "budget"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    config = TrieConfig(args.branch_length, args.max_context, args.prior)
    n = args.seed_tokens
    data = stdlib_tokens(3 * n)
    request, unseen = data[:n], data[n:]
    *passages, prompt = np.array_split(request, 8)
    answer = answer_tokens(request, unseen, args.steps, np.random.default_rng(args.seed))

    def seeded(shared: GlobalTrie | None = None) -> RequestDrafter:
        return RequestDrafter(prompt, passages, config=config, global_trie=shared)

    seeds = Samples(1e6)
    for _ in range(args.repeats):
        seeds.time(seeded)
    figures: dict[str, object] = {f"seed_{n}_ms": seeds.summary()}
    rows = [("seed request trie", f"{n} tokens", "ms", figures[f"seed_{n}_ms"])]
    passes = {}
    for nodes in (16, 64):
        passes[f"D={nodes}"] = one = decode(seeded(), prompt, answer, nodes)
        figures[f"draft_{nodes}_us"] = one.draft.summary()
        rows.append(("draft (request)", f"D={nodes}", "us", figures[f"draft_{nodes}_us"]))
    figures["observe_us"] = passes["D=16"].observe.summary()
    rows.append(("observe 1 token", "", "us", figures["observe_us"]))

    vocab_size = int(data.max()) + 1
    chunks = np.array_split(unseen, 8)
    learnt: Counter[bytes] = Counter()

    def learn(chunk: np.ndarray) -> GlobalTrie:
        learnt.update(answer_ngrams(chunk, config))
        return global_trie(learnt, config, args.budget, vocab_size)

    inserts = Samples(1e6)
    for chunk in chunks:
        shared = inserts.time(lambda chunk=chunk: learn(chunk))
    figures["global_insert_ms"] = inserts.summary()
    rows.append(("global insert", f"{len(chunks[0])} tokens", "ms", figures["global_insert_ms"]))
    passes["D=16 + global"] = both = decode(seeded(shared), prompt, answer, 16)
    figures["draft_16_global_us"] = both.draft.summary()
    rows.append(("draft (request + global)", "D=16", "us", figures["draft_16_global_us"]))

    everything = answer_counts(np.array_split(data, max(1, len(data) // 512)), config)
    full, used = traced_bytes(lambda: global_trie(everything, config, args.budget, vocab_size))
    figures["bytes_per_node"] = round(used / len(full), 1)
    _, used = traced_bytes(seeded)
    figures["request_bytes_per_token"] = round(used / n, 1)

    figures["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(f"trie store benchmark: {n}-token request, {args.steps} decode steps, {config}")
    print(
        f"load average {figures['load_avg_1m']} on {os.cpu_count()} cores; cpu: this thread's "
        "CPU time, which leaves out other processes holding the core"
    )
    head = "".join(f"{c:>10}" for c in ("p50", "p95", "cpu p50", "cpu p95"))
    print(f"{'operation':<26}{'size':>12}{head}")
    for name, size, unit, p in rows:
        cells = "".join(f"{p[c]:>8.1f}{unit}" for c in ("p50", "p95", "cpu_p50", "cpu_p95"))
        print(f"{name:<26}{size:>12}{cells}")
    print(f"\n{'draft quality (proxy)':<26}{'nodes':>8}{'hit':>8}{'accepted':>10}{'expected':>10}")
    for name, one in passes.items():
        figures[f"accepted_{name.replace('=', '').replace(' + ', '_')}"] = round(
            float(np.mean(one.accepted)), 3
        )
        hit = np.mean(np.array(one.size) > 0)
        print(
            f"{name:<26}{np.mean(one.size):>8.1f}{hit:>8.1%}"
            f"{np.mean(one.accepted):>10.3f}{np.mean(one.expected):>10.3f}"
        )
    print(
        f"\nglobal trie: {len(full)} nodes (budget {args.budget} members), "
        f"{figures['bytes_per_node']} bytes/node; "
        f"request trie: {figures['request_bytes_per_token']} bytes/token"
    )
    print(json.dumps(figures))
    return 0
