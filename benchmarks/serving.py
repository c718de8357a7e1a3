"""`lookahead-rag bench-serve`: what serving costs and what lookahead buys under load.

1. Latency: the same questions in-process (`RagPipeline`, no Ray, no HTTP) and over HTTP
   (streamed `/v1/rag` through the Serve app), interleaved question by question so both see the
   same machine: p50/p95 end-to-end latency and time to first token, and the HTTP overhead.
2. Throughput: requests/s and tokens/s at each concurrency level, lookahead vs plain decoding,
   the two interleaved per level.

Both sides are warmed up with one untimed pass over the questions first (oneDNN compiles a
kernel per new shape on first use, which would otherwise land on whichever side meets it first).
The shared n-gram store is off: it learns from repeated questions at its own pace on each side,
which would measure learning, not serving (`lookahead-rag bench-warm` measures what it brings).

Prints tables; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence

import httpx
import numpy as np

from pipeline.ask import sse_payloads
from pipeline.config import add_config_arguments, config_from_args
from pipeline.ports import free_port
from pipeline.questions import QUESTIONS
from pipeline.resources import ensure_index
from pipeline.wire import Delta

BENCH_MAX_TOKENS = 64
TIMEOUT = httpx.Timeout(10.0, read=900.0)


def _count(text: str) -> int:
    """An integer >= 1 (an argparse type: a bad value is a usage error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1 wanted, got {text!r}")
    return value


def _levels(text: str) -> list[int]:
    """Comma-separated concurrency levels, each >= 1 (an argparse type)."""
    return [_count(level) for level in text.split(",")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=_count, default=8, help="requests per measurement")
    parser.add_argument(
        "--concurrency", type=_levels, default="1,4,8", help="comma-separated levels"
    )
    parser.add_argument("--port", type=int, help="HTTP port (default: a free one)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline import ray_runtime
    from pipeline.rag import RagPipeline
    from pipeline.service.serve_command import deploy

    config = config_from_args(
        args,
        server__port=args.port or free_port(),
        generation__max_tokens=args.max_tokens or BENCH_MAX_TOKENS,
        ngrams__enabled=False,
    )
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
    ensure_index(config)
    local = RagPipeline.load(config)
    with ray_runtime.running(config, quiet=True):
        url = deploy(config)
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            for q in questions:  # warm both sides up
                _http_once(client, q)
                _local_once(local, q)
            in_process, http = [], []
            for q in questions:
                in_process.append(_local_once(local, q))
                http.append(_http_once(client, q))
        throughput = {
            mode: {
                c: asyncio.run(_load(url, questions, c, mode == "lookahead"))
                for c in args.concurrency
            }
            for mode in ("lookahead", "plain")
        }
    result = summarise(in_process, http, throughput, config.generation.max_tokens)
    print_tables(result)
    print(json.dumps(result))
    return 0


def _local_once(local, question: str, max_tokens: int | None = None) -> tuple[float, float]:
    """(time to first text, end-to-end seconds) in-process."""
    t0 = time.perf_counter()
    ttft = None
    for event in local.stream(question, max_tokens=max_tokens):
        if ttft is None and isinstance(event, Delta) and event.text:
            ttft = time.perf_counter() - t0
    return ttft or 0.0, time.perf_counter() - t0


def _http_once(
    client: httpx.Client, question: str, max_tokens: int | None = None
) -> tuple[float, float]:
    """(time to first text, end-to-end seconds) over HTTP, streamed."""
    body = {"question": question, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    t0 = time.perf_counter()
    ttft = None
    with client.stream("POST", "/v1/rag", json=body) as response:
        response.raise_for_status()
        for payload in sse_payloads(response.iter_lines()):
            if ttft is None and payload.get("type") == "delta" and payload["text"]:
                ttft = time.perf_counter() - t0
            if "error" in payload:
                raise RuntimeError(payload["error"]["message"])
    return ttft or 0.0, time.perf_counter() - t0


async def _load(url: str, questions: Sequence[str], concurrency: int, lookahead: bool) -> dict:
    """All `questions` with at most `concurrency` in flight: requests/s, tokens/s, latency."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)

    async def one(client: httpx.AsyncClient, question: str) -> tuple[float, int]:
        async with gate:
            t0 = time.perf_counter()
            response = await client.post(
                "/v1/rag", json={"question": question, "lookahead": lookahead}
            )
            response.raise_for_status()
            return time.perf_counter() - t0, response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=limits) as client:
        t0 = time.perf_counter()
        done = await asyncio.gather(*(one(client, q) for q in questions))
        wall = time.perf_counter() - t0
    latencies = [d[0] for d in done]
    return {
        "requests_per_s": round(len(done) / wall, 4),
        "tokens_per_s": round(sum(d[1] for d in done) / wall, 2),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
    }


def percentiles(samples: Sequence[tuple[float, float]]) -> dict:
    """p50 and p95 of time to first token and of end to end, from (ttft, e2e) seconds."""
    ttft, e2e = np.array(samples).T
    return {
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 4),
        "ttft_p95_s": round(float(np.percentile(ttft, 95)), 4),
        "e2e_p50_s": round(float(np.percentile(e2e, 50)), 4),
        "e2e_p95_s": round(float(np.percentile(e2e, 95)), 4),
    }


def summarise(in_process, http, throughput, max_tokens: int) -> dict:
    """The JSON object: latency each way and the HTTP overhead (none where in-process measured
    0), throughput per mode and level (`_load`'s figures), lookahead over plain in tokens/s."""
    local, remote = percentiles(in_process), percentiles(http)
    overhead = {key: round(remote[key] / local[key] - 1, 4) for key in local if local[key] > 0}
    levels = throughput["lookahead"].keys()
    speedup = {
        str(c): round(
            throughput["lookahead"][c]["tokens_per_s"] / throughput["plain"][c]["tokens_per_s"], 3
        )
        for c in levels
    }
    return {
        "max_tokens": max_tokens,
        "requests": len(in_process),
        "latency": {"in_process": local, "http": remote, "http_overhead": overhead},
        "throughput": {
            mode: {str(c): figures for c, figures in by_level.items()}
            for mode, by_level in throughput.items()
        },
        "lookahead_speedup_tokens_per_s": speedup,
    }


def print_tables(result: dict) -> None:
    latency = result["latency"]
    print(f"\nlatency over {result['requests']} questions (max_tokens {result['max_tokens']})")
    print(f"{'':<12} {'TTFT p50':>9} {'TTFT p95':>9} {'e2e p50':>9} {'e2e p95':>9}")
    for name in ("in_process", "http", "http_overhead"):
        row = latency[name]
        cells = [row.get(k) for k in ("ttft_p50_s", "ttft_p95_s", "e2e_p50_s", "e2e_p95_s")]
        fmt = "{:>+8.1%}" if name == "http_overhead" else "{:>8.3f}s"
        print(
            f"{name:<12} "
            + " ".join(fmt.format(c) if c is not None else f"{'-':>9}" for c in cells)
        )
    print("\nthroughput over HTTP")
    print(f"{'concurrency':<12} {'mode':<10} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for mode, by_level in result["throughput"].items():
        for c, f in by_level.items():
            print(
                f"{c:<12} {mode:<10} {f['requests_per_s']:>7.3f} {f['tokens_per_s']:>7.1f} "
                f"{f['latency_p50_s']:>7.2f} {f['latency_p95_s']:>7.2f}"
            )
    speedups = ", ".join(
        f"{c}: {s:.2f}x" for c, s in result["lookahead_speedup_tokens_per_s"].items()
    )
    print(f"\nlookahead vs plain (tokens/s) by concurrency: {speedups}")
