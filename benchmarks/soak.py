"""`lookahead-rag bench-soak`: the running service as an outside client probes it, bounded.

1. Soak: `--requests` whole `/v1/rag` answers at `--concurrency`, each Generator replica's
   resident memory (RSS) read every `--sample-every` answers, after a warm-up wave that meets
   the batch shapes first. Whether memory levels off: its growth over the second half of the
   run against the first (per replica), and every sample.
2. Burst: `--burst` streamed requests at once, with long answers, so that most wait for a
   batch row or are refused: per request the seconds to its status line, whether it was told
   it is queued, and how it ended (answered, `queue_full`, `queue_timeout`, other errors). A
   request admitted but left without a byte for more than `STUCK_S` counts as stuck.
3. Slow clients: `--slow` connections that send part of a header block and stop: how many got
   their 408 and were closed, how long that took, and whether a real request went through
   meanwhile.

A benchmark, not a test: the whole run takes minutes. Prints a summary; the last line is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import httpx
import psutil

from benchmarks.serving import auth_headers, questions
from pipeline.config import add_config_arguments, config_from_args
from pipeline.ports import free_port
from pipeline.resources import ensure_index

HELP = "soak, burst and slow clients on the service: memory, admission, header deadline"

SOAK_MAX_TOKENS = 16
BURST_MAX_TOKENS = 128
STUCK_S = 10.0  # an admitted request with no byte for longer is stuck
TIMEOUT = httpx.Timeout(30.0, read=600.0)
PARTIAL_HEADERS = b"POST /v1/rag HTTP/1.1\r\nHost: x\r\n"


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"an integer >= 0 wanted, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=_count, default=1000, help="soak answers (1000)")
    parser.add_argument("--concurrency", type=_count, default=8, help="soak concurrency (8)")
    parser.add_argument(
        "--sample-every", type=_count, default=50, help="answers between memory samples (50)"
    )
    parser.add_argument("--burst", type=_count, default=64, help="streamed requests at once (64)")
    parser.add_argument("--slow", type=_count, default=100, help="stalled connections (100)")
    parser.add_argument("--port", type=int, help="HTTP port (default: a free one)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline import ray_runtime
    from pipeline.service.app import deploy

    if args.concurrency < 1 or args.sample_every < 1:
        raise SystemExit("--concurrency and --sample-every must be >= 1")
    config = config_from_args(
        args,
        server__port=args.port or free_port(),
        generation__max_tokens=args.max_tokens or SOAK_MAX_TOKENS,
    )
    headers = auth_headers(config.server)
    ensure_index(config)
    with ray_runtime.running(config, quiet=True):
        url = deploy(config)
        pids = generator_pids()
        soak = asyncio.run(_soak(url, headers, args, pids))
        burst = asyncio.run(_burst(url, headers, args.burst))
        slow = _slow_clients(url, headers, config.server.port, args.slow)
    result = {
        "soak": soak,
        "burst": summarise_burst(burst),
        "slow_clients": slow,
        "header_timeout_s": config.limits.header_timeout_s,
        "max_queue_wait_s": config.limits.max_queue_wait_s,
    }
    print_summary(result)
    print(json.dumps(result))
    return 0


def generator_pids() -> dict[str, int]:
    """Each Generator replica's actor name and process id."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and "Generator" in a["name"]
    ]
    handles = {name: ray.get_actor(name, namespace="serve") for name in names}
    return {
        name: ray.get(handle.__ray_call__.remote(lambda _: os.getpid()))
        for name, handle in handles.items()
    }


def _rss_mb(pids: dict[str, int]) -> dict[str, float]:
    return {name: psutil.Process(pid).memory_info().rss / 2**20 for name, pid in pids.items()}


async def _soak(url: str, headers: dict, args: argparse.Namespace, pids: dict[str, int]) -> dict:
    asked = questions(args.requests)
    statuses: dict[str, int] = {}
    samples: list[dict] = []
    done = 0
    gate = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=TIMEOUT, limits=limits
    ) as c:
        await asyncio.gather(*(_answer(c, q) for q in questions(2 * args.concurrency)))  # warm
        samples.append({"answers": 0, "rss_mb": _rss_mb(pids)})
        start = time.perf_counter()

        async def one(question: str) -> None:
            nonlocal done
            async with gate:
                status = await _answer(c, question)
            statuses[status] = statuses.get(status, 0) + 1
            done += 1
            if done % args.sample_every == 0 or done == len(asked):
                samples.append({"answers": done, "rss_mb": _rss_mb(pids)})

        await asyncio.gather(*(one(q) for q in asked))
    return {
        "answers": len(asked),
        "seconds": round(time.perf_counter() - start, 1),
        "statuses": statuses,
        "growth": memory_growth(samples),
        "samples": samples,
    }


def _client(url: str, headers: dict, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max(connections, 1))
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT, limits=limits)


async def _answer(client: httpx.AsyncClient, question: str) -> str:
    try:
        response = await client.post("/v1/rag", json={"question": question})
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return str(response.status_code)


def memory_growth(samples: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per replica: RSS at the first and last sample (MB), and the growth (percent of the first
    sample) over the first and the second half of the samples; memory that levels off grows
    much less in the second half than in the first."""
    out: dict[str, dict[str, float]] = {}
    if len(samples) < 2:
        return out
    middle = samples[(len(samples) - 1) // 2]
    for name in samples[0]["rss_mb"]:
        first, mid, last = (s["rss_mb"][name] for s in (samples[0], middle, samples[-1]))
        out[name] = {
            "first_mb": round(first, 1),
            "last_mb": round(last, 1),
            "growth_pct": round(100 * (last - first) / first, 2),
            "first_half_pct": round(100 * (mid - first) / first, 2),
            "second_half_pct": round(100 * (last - mid) / first, 2),
        }
    return out


@dataclass
class BurstRequest:
    """One streamed request of the burst, as its client saw it (seconds from sending it)."""

    status: int | None = None
    headers_s: float | None = None  # to the status line
    first_byte_s: float | None = None  # to the first body byte (an event or a comment)
    queued: bool = False  # it was told it waits for a batch row
    outcome: str = "no answer"  # ok, an error code, or what the transport raised


async def _burst(url: str, headers: dict, n: int) -> list[BurstRequest]:
    limits = httpx.Limits(max_connections=max(n, 1))
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=TIMEOUT, limits=limits
    ) as c:
        body = {"max_tokens": BURST_MAX_TOKENS, "stream": True}
        return list(
            await asyncio.gather(*(_streamed(c, {**body, "question": q}) for q in questions(n)))
        )


async def _streamed(client: httpx.AsyncClient, body: dict) -> BurstRequest:
    seen = BurstRequest()
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/rag", json=body) as response:
            seen.status, seen.headers_s = response.status_code, time.perf_counter() - t0
            if response.status_code != 200:
                await response.aread()
                seen.outcome = _code(response.text)
                return seen
            async for line in response.aiter_lines():
                if seen.first_byte_s is None and line:
                    seen.first_byte_s = time.perf_counter() - t0
                seen.outcome = _line_outcome(line, seen)
    except httpx.HTTPError as exc:
        seen.outcome = type(exc).__name__
    return seen


def _line_outcome(line: str, seen: BurstRequest) -> str:
    """The outcome so far after one line of the stream (`seen.queued` is set on the way)."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return seen.outcome
    payload = json.loads(line[len("data: ") :])
    if "error" in payload:
        return payload["error"].get("code") or "error"
    seen.queued = seen.queued or payload.get("type") == "queued"
    return "ok" if payload.get("type") == "end" else seen.outcome


def _code(text: str) -> str:
    try:
        return json.loads(text)["error"]["code"] or "error"
    except (ValueError, KeyError, TypeError):
        return "not the API's JSON"


def summarise_burst(requests: Sequence[BurstRequest]) -> dict:
    """Outcomes counted; for the admitted (status 200): how many were told they were queued,
    the slowest status line and first byte, and how many waited past `STUCK_S` for a byte."""
    outcomes: dict[str, int] = {}
    for request in requests:
        outcomes[request.outcome] = outcomes.get(request.outcome, 0) + 1
    admitted = [r for r in requests if r.status == 200]
    first_bytes = [r.first_byte_s for r in admitted if r.first_byte_s is not None]
    return {
        "requests": len(requests),
        "outcomes": outcomes,
        "admitted": len(admitted),
        "queued": sum(r.queued for r in admitted),
        "max_headers_s": round(max((r.headers_s or 0.0 for r in admitted), default=0.0), 2),
        "max_first_byte_s": round(max(first_bytes, default=0.0), 2),
        "stuck": sum(r.first_byte_s is None or r.first_byte_s > STUCK_S for r in admitted),
        "requests_seen": [asdict(r) for r in requests],
    }


def _slow_clients(url: str, headers: dict, port: int, n: int) -> dict:
    """`n` connections that send part of a header block and stop; then a real request."""
    sockets, closed = [], []
    start = time.perf_counter()
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=120)
            sock.sendall(PARTIAL_HEADERS)
            sockets.append(sock)
        with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT) as other:
            meanwhile = other.get("/healthz").status_code
        for sock in sockets:
            closed.append(_reply_status(sock))
    finally:
        for sock in sockets:
            sock.close()
    return {
        "connections": n,
        "got_408_and_closed": closed.count(408),
        "seconds_to_close_all": round(time.perf_counter() - start, 1),
        "healthz_meanwhile": meanwhile,
    }


def _reply_status(sock: socket.socket) -> int | None:
    """The status of what the server sent before closing `sock` (None: nothing, or no close)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        return None
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def print_summary(result: dict) -> None:
    soak, burst, slow = result["soak"], result["burst"], result["slow_clients"]
    print(f"soak: {soak['answers']} answers in {soak['seconds']} s, statuses {soak['statuses']}")
    for name, growth in soak["growth"].items():
        print(
            f"  {name}: {growth['first_mb']} -> {growth['last_mb']} MB "
            f"({growth['growth_pct']:+}%: {growth['first_half_pct']:+}% then "
            f"{growth['second_half_pct']:+}%)"
        )
    print(
        f"burst: {burst['requests']} requests, outcomes {burst['outcomes']}; admitted "
        f"{burst['admitted']} ({burst['queued']} told they were queued), slowest status line "
        f"{burst['max_headers_s']} s, first byte {burst['max_first_byte_s']} s, stuck "
        f"{burst['stuck']}"
    )
    print(
        f"slow clients: {slow['got_408_and_closed']}/{slow['connections']} got 408 and were "
        f"closed within {slow['seconds_to_close_all']} s; /healthz meanwhile "
        f"{slow['healthz_meanwhile']}"
    )
