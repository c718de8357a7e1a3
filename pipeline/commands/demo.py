"""`lookahead-rag demo`: the whole service on the embedded defaults, start to finish.

Builds the stdlib index (once; cached), starts Ray and the Serve app on loopback, asks a few
questions over HTTP (each answered twice, out of the prefix cache and answer replay: plain
decoding, then lookahead, streamed), prints the
answers with their sources and the lookahead figures (tokens per step, speedup over plain
decoding, whether the two answers are identical), and shuts everything down. It fails when
they differ in float32 or float64, where lookahead is token for token plain decoding; in
bfloat16 (`model.dtype: auto` on a CPU or GPU with bfloat16 arithmetic) passes of other shapes
round differently and near-ties may go either way (README, "Precision (dtype)"), so there it
says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx

from pipeline.commands.ask import show, sse_payloads
from pipeline.config import add_config_arguments, config_from_args
from pipeline.ports import free_port
from pipeline.questions import QUESTIONS
from pipeline.resources import ensure_index
from pipeline.service.replica_metrics import SERVING_PREFIX

HELP = "set up and run the main job on the embedded defaults"

DEMO_MAX_TOKENS = 96
EXACT_DTYPES = ("float32", "float64")  # where lookahead's answer must be plain decoding's
MODEL_INFO = SERVING_PREFIX + "model_info"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", type=int, default=3, help="how many questions to ask")
    parser.add_argument("--port", type=int, help="HTTP port (default: a free one)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline import ray_runtime
    from pipeline.service.app import deploy

    if not 1 <= args.questions <= len(QUESTIONS):
        raise SystemExit(f"--questions must be between 1 and {len(QUESTIONS)}")
    config = config_from_args(
        args,
        server__port=args.port or free_port(),
        generation__max_tokens=args.max_tokens or DEMO_MAX_TOKENS,
    )
    started = time.perf_counter()
    ensure_index(config)
    print("starting Ray and the Serve app on 127.0.0.1 ...", flush=True)
    with ray_runtime.running(config, quiet=True):
        url = deploy(config)
        print(f"serving at {url} ({time.perf_counter() - started:.0f} s after start)\n")
        with httpx.Client(base_url=url, timeout=httpx.Timeout(10.0, read=600.0)) as client:
            # One short request first: the first forward passes of a process are slow.
            _post(client, {"question": QUESTIONS[0], "max_tokens": 4})
            rows = [_ask_twice(client, q) for q in QUESTIONS[: args.questions]]
            dtype = served_dtype(client.get("/metrics").text)
    print("\nRay and Serve are shut down.\n")
    _report(rows, dtype)
    if all(r["identical"] for r in rows):
        return 0
    if dtype in EXACT_DTYPES:
        return 1
    print(
        f"(in {dtype} a pass's rounding depends on its shape, so near-ties may go either way; "
        "answers equal plain decoding token for token in float32: "
        "LOOKAHEAD_RAG__MODEL__DTYPE=float32)"
    )
    return 0


def served_dtype(metrics: str) -> str:
    """The dtype the Generator replicas run, as `/metrics` says (`model_info`); "unknown" when
    it says nothing, comma-separated when replicas differ."""
    from prometheus_client.parser import text_string_to_metric_families

    dtypes = {
        sample.labels["dtype"]
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == MODEL_INFO and "dtype" in sample.labels
    }
    return ",".join(sorted(dtypes)) or "unknown"


def _post(client: httpx.Client, body: dict) -> dict:
    response = client.post("/v1/rag", json=body)
    response.raise_for_status()
    return response.json()


def _ask_twice(client: httpx.Client, question: str) -> dict:
    """Plain decoding, then lookahead, both out of the caches: the second ask would otherwise
    reuse the first one's prompt KV and replay its answer, and measure the caches instead."""
    print(f"Q: {question}")
    t0 = time.perf_counter()
    plain = _post(client, {"question": question, "lookahead": False, "prefix_cache": False})
    plain_s = time.perf_counter() - t0
    print("A: ", end="", flush=True)
    t0 = time.perf_counter()
    body = {"question": question, "stream": True, "prefix_cache": False}
    with client.stream("POST", "/v1/rag", json=body) as r:
        r.raise_for_status()
        lookahead = show(sse_payloads(r.iter_lines()))
    lookahead_s = time.perf_counter() - t0
    if lookahead is None:
        raise RuntimeError(f"the lookahead answer to {question!r} failed")
    identical = lookahead["text"] == plain["answer"]
    print(f"same answer as plain decoding: {'yes' if identical else 'NO'}\n")
    return {
        "question": question,
        "tokens": lookahead["usage"]["completion_tokens"],
        "tokens_per_step": lookahead["stats"]["tokens_per_step"],
        "plain_s": plain_s,
        "lookahead_s": lookahead_s,
        "speedup": plain_s / lookahead_s,
        "decode_speedup": plain["stats"]["decode_seconds"] / lookahead["stats"]["decode_seconds"],
        "identical": identical,
    }


def _report(rows: list[dict], dtype: str) -> None:
    header = (
        f"{'question':<52} {'tokens':>6} {'tok/step':>8} {'plain s':>8} {'look s':>7} "
        f"{'speedup':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['question'][:52]:<52} {r['tokens']:>6} {r['tokens_per_step']:>8.2f} "
            f"{r['plain_s']:>8.2f} {r['lookahead_s']:>7.2f} {r['speedup']:>6.2f}x"
        )
    summary = {
        "questions": len(rows),
        "tokens_per_step": round(statistics.mean(r["tokens_per_step"] for r in rows), 3),
        "speedup_vs_plain": round(
            sum(r["plain_s"] for r in rows) / sum(r["lookahead_s"] for r in rows), 3
        ),
        "decode_speedup_vs_plain": round(statistics.mean(r["decode_speedup"] for r in rows), 3),
        "identical": sum(r["identical"] for r in rows) / len(rows),
        "dtype": dtype,
    }
    print(
        f"\nlookahead: {summary['tokens_per_step']:.2f} tokens per step, "
        f"{summary['speedup_vs_plain']:.2f}x the speed of plain decoding end to end over HTTP, "
        f"answers identical: {summary['identical']:.0%}"
    )
    print(json.dumps(summary))
