"""`lookahead-rag ask "question"`: one answer, streamed as it is decoded, then its sources and
lookahead stats. In-process by default (no Ray); `--url` asks a running service instead. Both
paths print the same `/v1/rag` stream payloads."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterable, Iterator
from typing import TextIO

import httpx

from pipeline.config import add_config_arguments, config_from_args
from pipeline.planning import JobRequest, PlanError, plan_job
from pipeline.service.rendering import RagRenderer, payloads
from pipeline.wire import Answer

HELP = "answer one question, in-process or from a running service"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    parser.add_argument("--url", help="ask a running service (e.g. http://127.0.0.1:8000)")
    parser.add_argument("--top-k", type=int, help="passages in the prompt")
    parser.add_argument("--no-lookahead", action="store_true", help="plain decoding")
    parser.add_argument("--temperature", type=float, help="sample (0, the default: greedy)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: keep this much mass")
    parser.add_argument("--seed", type=int, help="repeat a sampled answer")
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    options = {
        "top_k": args.top_k,
        "lookahead": not args.no_lookahead,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if args.url:
        return _ask_service(args, options)
    config = config_from_args(args)
    try:  # before anything loads: a bad question costs nothing
        plan_job(JobRequest.question(args.question, **options), config)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from pipeline.rag import RagPipeline
    from pipeline.resources import ensure_index
    from retrieval import RetrievalError

    try:
        ensure_index(config)
    except (RetrievalError, OSError) as exc:  # no index there, or a broken one
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pipeline = RagPipeline.load(config)
    renderer, answer = RagRenderer(uuid.uuid4().hex), Answer()
    stream = (
        payload
        for event in pipeline.stream(args.question, **options)
        for payload in payloads(renderer, answer, event)
    )
    try:
        if args.json:
            for _ in stream:
                pass
            print(renderer.complete(answer).model_dump_json(indent=2))
        else:
            show(stream)
    finally:
        pipeline.close()
    return 0


def _ask_service(args: argparse.Namespace, options: dict) -> int:
    body = {"question": args.question, **options}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    url = args.url.rstrip("/") + "/v1/rag"
    with httpx.Client(timeout=httpx.Timeout(10.0, read=600.0)) as client:
        if args.json:
            response = client.post(url, json=body)
            print(json.dumps(response.json(), indent=2))
            return 0 if response.is_success else 1
        with client.stream("POST", url, json={**body, "stream": True}) as response:
            if not response.is_success:
                response.read()
                print(f"error {response.status_code}: {response.text}", file=sys.stderr)
                return 1
            return 0 if show(sse_payloads(response.iter_lines())) is not None else 1


def sse_payloads(lines: Iterable[str]) -> Iterator[dict]:
    """The JSON payloads of a server-sent event stream, up to `data: [DONE]`."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            return
        yield json.loads(data)


def show(stream: Iterable[dict], out: TextIO = sys.stdout) -> dict | None:
    """Print the answer as it arrives, then sources and stats. Returns the `end` payload with
    the answer's `text` and `sources` added, or None if the stream failed."""
    sources: list[dict] = []
    text = ""
    for payload in stream:
        if "error" in payload:
            print(f"\nerror: {payload['error']['message']}", file=sys.stderr)
            return None
        kind = payload["type"]
        if kind == "start":
            sources = payload["sources"]
        elif kind == "queued":
            print(f"(queued: {payload['ahead']} requests ahead)", file=sys.stderr)
        elif kind == "delta":
            text += payload["text"]
            out.write(payload["text"])
            out.flush()
        elif kind == "end":
            stats, usage = payload["stats"], payload["usage"]
            out.write("\n\nsources:\n")
            for i, s in enumerate(sources, 1):
                out.write(f"  [{i}] {s['title']}  ({s['source']}, score {s['score']:.3f})\n")
            mode = "lookahead" if stats["lookahead"] else "plain decoding"
            out.write(
                f"{usage['completion_tokens']} tokens in {stats['steps']} steps "
                f"({stats['tokens_per_step']:.2f} tokens/step, {mode}, "
                f"{stats['decode_seconds']:.2f} s decoding); finish: {payload['finish_reason']}\n"
            )
            return {**payload, "text": text, "sources": sources}
    return None
