"""`lookahead-rag bench-warm PROMPTS.jsonl`: what the shared popular n-gram store is worth to a
warm service.

The stream: the first `--limit` prompts of the chosen categories (RAG prompts: passages, then
the question on the last line), asked in rounds, as production traffic repeats itself: round 0
the originals, odd rounds paraphrases (the question rewritten by a template), even rounds
exact repeats. Each request goes to a replica drawn at random (`--seed`), as a load balancer
would send it: a later variant lands on another replica than its original with probability
1 - 1/replicas, and only the shared store can help it there.

Modes, each with its own replicas and stores, run on one model and interleaved request by
request (docs/benchmarks.md: ratios from one process, one run):
- plain: draft size 0, plain greedy decoding in the same loop (the reference output);
- off: lookahead from the request's own n-grams (prompt and answer) only;
- local: plus each replica's own past answers (in-process store, nothing shared);
- shared: plus every replica's past answers, through one Redis (a private redis-server on a
  free loopback port unless `--redis-url` names one).
A replica syncs (`NgramSync.sync_now`: flush, pull, rebuild) before each request and after
recording its answer, so every earlier answer is visible: what background sync gives when its
intervals are shorter than an answer, and the most Redis traffic it can cost.

tokens/s counts decoding only (drafting, which reads the global trie, verification, accept):
prefill is the same in every mode. Sync time (in a service: the background thread's) is
reported apart, per request. Redis traffic per answered request comes from the server's INFO:
round trips (script calls, and pings, handshakes), commands executed (those inside the
scripts too: one ZINCRBY per n-gram), bytes in and out.

Prints a table per kind of request (original, paraphrase, repeat) and overall; the last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
import torch

from benchmarks.local_redis import LocalRedis
from benchmarks.workloads import paraphrase
from generation import DEFAULT_MODEL, LookaheadConfig, LookaheadGenerator, load_model
from generation.defaults import DTYPE_SETTINGS
from trie_store import RequestDrafter
from trie_store.sharing import NgramSync, SyncConfig, model_namespace, store_from_url

HELP = "warm service: shared n-grams off/local/shared"

MODES = ("plain", "off", "local", "shared")
KINDS = ("original", "paraphrase", "repeat")
SCRIPTED = {"zincrby", "zadd", "zrange", "zremrangebyrank", "zremrangebyscore", "zcard"}
SCRIPTED |= {"zunionstore", "hmget", "hset", "hincrby", "time"}  # only ever inside our scripts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", type=Path, help="JSONL prompts (docs/benchmarks.md)")
    parser.add_argument("--limit", type=int, default=6, help="distinct prompts (default 6)")
    parser.add_argument("--categories", default="rag", help="comma-separated (default rag)")
    parser.add_argument("--rounds", type=int, default=3, help="original, paraphrase, repeat")
    parser.add_argument(
        "--max-prompt-chars",
        type=int,
        default=1500,
        help="passages cut to their last characters, question kept (prefill is the same in "
        "every mode and dominates on CPU; default 1500)",
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--draft-size", type=int, default=8, help="draft nodes per step")
    parser.add_argument("--top-k", type=int, default=SyncConfig.top_k, help="members pulled")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_SETTINGS)
    parser.add_argument("--redis-url", help="an existing Redis (default: a private one)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the replica choice")


@dataclass
class Request:
    kind: str
    prompt: str
    replica: int


@dataclass
class Tally:
    """Totals of one mode over some requests."""

    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    sync_seconds: float = 0.0
    requests: int = 0
    identical: int = 0

    def figures(self, plain: Tally) -> dict[str, float]:
        speed = self.tokens / self.seconds if self.seconds else 0.0
        plain_speed = plain.tokens / plain.seconds if plain.seconds else 0.0
        return {
            "tokens_per_step": round(self.tokens / max(self.steps, 1), 3),
            "tokens_per_s": round(speed, 2),
            "speedup_vs_plain": round(speed / plain_speed, 3) if plain_speed else 0.0,
            "identity": round(self.identical / max(self.requests, 1), 3),
            "sync_ms_per_request": round(1e3 * self.sync_seconds / max(self.requests, 1), 2),
        }


def read_stream(path: Path, categories: set[str], args: argparse.Namespace) -> list[Request]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts = [
        shortened(row["turns"][0] if "turns" in row else row["prompt"], args.max_prompt_chars)
        for row in rows
        if row.get("category") in categories or not categories
    ][: args.limit]
    if not texts:
        raise SystemExit(f"{path}: no prompts of categories {sorted(categories)}")
    rng = np.random.default_rng(args.seed)
    stream = []
    for r in range(args.rounds):
        kind = KINDS[0] if r == 0 else KINDS[2 - r % 2]
        for i, text in enumerate(texts):
            prompt = paraphrase(text, i + r) if kind == "paraphrase" else text
            stream.append(Request(kind, prompt, int(rng.integers(args.replicas))))
    return stream


def shortened(text: str, max_chars: int) -> str:
    """The question (last line) whole, after the last characters of what precedes it."""
    head, _, question = text.rstrip().rpartition("\n")
    room = max(0, max_chars - len(question))
    return f"{head[len(head) - room :]}\n{question}" if head and room else question


def run(args: argparse.Namespace) -> int:
    for name in ("limit", "rounds", "replicas", "max_new_tokens", "top_k", "max_prompt_chars"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.draft_size < 1:
        raise SystemExit("--draft-size must be >= 1 (plain decoding is one of the modes)")
    categories = {c for c in args.categories.split(",") if c}
    stream = read_stream(args.prompts, categories, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    configs = {
        mode: LookaheadConfig(
            args.max_new_tokens, draft_size=0 if mode == "plain" else args.draft_size
        )
        for mode in MODES
    }
    engine = LookaheadGenerator(lm, configs["off"])
    namespace = model_namespace(lm.name, engine.vocab_size, lm.tokenizer.get_vocab())
    print(
        f"{len(stream)} requests ({args.rounds} rounds of {len(stream) // args.rounds}), "
        f"{args.replicas} replicas, model {lm.name}, D={args.draft_size}, "
        f"{args.max_new_tokens} new tokens max, torch threads {torch.get_num_threads()}"
    )
    with nullcontext() if args.redis_url else LocalRedis() as server:
        url = args.redis_url or server.url

        def replica(store_url: str | None) -> NgramSync:
            store = store_from_url(store_url, namespace)
            return NgramSync(store, engine.vocab_size, config=SyncConfig(top_k=args.top_k))

        replicas: dict[str, list[NgramSync | None]] = {
            "plain": [None] * args.replicas,
            "off": [None] * args.replicas,
            "local": [replica(None) for _ in range(args.replicas)],
            "shared": [replica(url) for _ in range(args.replicas)],
        }
        tallies = {(mode, kind): Tally() for mode in MODES for kind in KINDS}
        try:
            before = redis_stats(url)
            for n, request in enumerate(stream):
                prompt = engine.encode(request.prompt)
                outputs = {}
                for mode in MODES:
                    sync = replicas[mode][request.replica]
                    tally = tallies[mode, request.kind]
                    outputs[mode] = serve_one(engine, prompt, configs[mode], sync, tally)
                    tally.identical += outputs[mode] == outputs["plain"]
                shared = tallies["shared", request.kind]
                print(
                    f"  request {n + 1}/{len(stream)} ({request.kind}, replica "
                    f"{request.replica}): shared mode {shared.tokens / max(shared.steps, 1):.2f}"
                    f" tokens/step over the {request.kind}s so far"
                )
            after = redis_stats(url)
        finally:
            for sync in replicas["local"] + replicas["shared"]:
                sync.close()
    result = summarise(tallies, before, after, len(stream), args)
    print_tables(result)
    print(json.dumps(result))
    return 0


def redis_stats(url: str) -> dict[str, int]:
    """The server's counters (they include everything else the server served meanwhile)."""
    with redis.Redis.from_url(url) as client:
        stats, commands = client.info("stats"), client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): c["calls"] for name, c in commands.items()}
    return {
        "round_trips": sum(n for name, n in calls.items() if name not in SCRIPTED),
        "script_calls": calls.get("evalsha", 0) + calls.get("eval", 0),
        "commands_executed": int(stats["total_commands_processed"]),
        "bytes_in": int(stats["total_net_input_bytes"]),
        "bytes_out": int(stats["total_net_output_bytes"]),
    }


def serve_one(
    engine: LookaheadGenerator,
    prompt: np.ndarray,
    config: LookaheadConfig,
    sync: NgramSync | None,
    tally: Tally,
) -> list[int]:
    """One request on one replica: pull, draft and decode, record, flush."""
    start = time.perf_counter()
    if sync is not None:
        sync.sync_now()
    synced = time.perf_counter()
    drafter = RequestDrafter(prompt, global_trie=sync.global_trie() if sync else None)
    result = engine.generate(prompt, config, drafter)
    decoded = time.perf_counter()
    if sync is not None:
        sync.record(result.token_ids)
        sync.sync_now()
    stats = result.stats
    tally.sync_seconds += (synced - start) + (time.perf_counter() - decoded)
    tally.seconds += stats.draft_s + stats.forward_s + stats.accept_s  # decoding, not prefill
    tally.tokens += stats.tokens
    tally.steps += stats.steps
    tally.requests += 1
    return result.token_ids


def summarise(tallies: dict, before: dict, after: dict, requests: int, args) -> dict:
    overall = {mode: Tally() for mode in MODES}
    for (mode, _), tally in tallies.items():
        for name in ("tokens", "steps", "seconds", "sync_seconds", "requests", "identical"):
            setattr(overall[mode], name, getattr(overall[mode], name) + getattr(tally, name))
    by_kind = {
        kind: {m: tallies[m, kind].figures(tallies["plain", kind]) for m in MODES}
        for kind in KINDS
        if tallies["plain", kind].requests
    }
    return {
        "requests": requests,
        "replicas": args.replicas,
        "draft_size": args.draft_size,
        "max_new_tokens": args.max_new_tokens,
        "overall": {m: overall[m].figures(overall["plain"]) for m in MODES},
        **by_kind,
        "redis_per_request": {k: round((after[k] - before[k]) / requests, 1) for k in before},
    }


def print_tables(result: dict) -> None:
    columns = ("tokens_per_step", "tokens_per_s", "speedup_vs_plain", "identity")
    columns += ("sync_ms_per_request",)
    for part in ("overall", *KINDS):
        if part not in result:
            continue
        print(f"\n{part} requests" if part != "overall" else "\nall requests")
        print(f"{'mode':<8}" + "".join(f"{c:>21}" for c in columns))
        for mode, figures in result[part].items():
            print(f"{mode:<8}" + "".join(f"{figures[c]:>21}" for c in columns))
    traffic = result["redis_per_request"]
    print(
        f"\nRedis per answered request (shared mode, server INFO): {traffic['round_trips']} "
        f"round trips ({traffic['script_calls']} script calls), "
        f"{traffic['commands_executed']} commands executed, {traffic['bytes_in']:.0f} bytes in, "
        f"{traffic['bytes_out']:.0f} bytes out"
    )
