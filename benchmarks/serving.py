"""`lookahead-rag bench-serve`: what serving costs and what lookahead buys under load.

1. Latency: the same questions in-process (`RagPipeline`, no Ray, no HTTP) and over HTTP
   (streamed `/v1/rag` through the Serve app), interleaved question by question so both see the
   same machine: p50/p95 end-to-end latency and time to first token, and the HTTP overhead
   (prefix cache off both sides: the questions repeat).
2. Load: streamed `/v1/rag` at each concurrency level (1, 2, 4, 8, 16 by default), three modes
   one after the other per level (their order rotating from level to level), so all see the
   same machine: `lookahead` (with the prefix cache), `nocache` (lookahead, the request's
   `prefix_cache` off) and `plain` (plain decoding, cache off: the baseline of old). Per mode:
   requests/s, tokens/s, time to first token, inter-token latency, end to end, errors; per level
   the prefix cache's hit rate over the lookahead run (from the service's `/metrics`) and how
   often lookahead's answer was nocache's. The Generator batches what it admits, so throughput
   should grow with concurrency, and time to first token with it. Two workloads
   (`--workload`): `distinct`, questions never asked before in the run (made from the index's
   passage titles; requests share the instruction and passages they happen to retrieve alike),
   and `repeat`, questions drawn by a Zipf law (s = 1.1) over the demo's topics, each asked as
   itself or paraphrased (`benchmarks.workloads`), as popular traffic repeats itself.
3. First vs repeated ask, at concurrency 1 with the cache on: fresh questions each asked, then
   asked again word for word, then paraphrased: time to first token of each.

A level sends `max(--requests, 2 * level)` requests each mode, so that it is held while the first
`level` answers run (with only `level` requests the load would start draining at once). A
request that fails (status >= 400, an error event in the stream, a transport error) is counted,
not raised: overload is a result. Section 1 and its warm-up stop at the first failure instead:
a service that fails one request on its own is broken, and its figures would mean nothing.

Everything is warmed up first, untimed: one pass over the questions each side of section 1, and
one wave at the largest level each mode and workload (oneDNN compiles a kernel per new shape on
first use, which would otherwise land on whichever side or level meets it first). Only the
`lookahead` mode reads and fills the prefix cache, so the other modes' runs never change what
it holds. The shared n-gram store is off: it learns from repeated questions at its own pace,
which would measure learning, not serving (`lookahead-rag bench-warm` measures what it brings).

Prints tables; the last line is one JSON object with every figure (the distinct workload's
levels under `levels`, the repeat workload's and section 3 under `prefix_cache`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.workloads import ZIPF_S, ZipfQuestions, paraphrase
from pipeline.commands.ask import sse_payloads
from pipeline.config import ServerSection, add_config_arguments, config_from_args
from pipeline.ports import free_port
from pipeline.questions import QUESTIONS
from pipeline.resources import ensure_index
from pipeline.service.auth import read_key_file
from pipeline.wire import Delta

HELP = "serving benchmark: HTTP overhead, load, lookahead, prefix cache"

BENCH_MAX_TOKENS = 64
DEFAULT_REQUESTS = 16
DEFAULT_LEVELS = "1,2,4,8,16"
# lookahead: with the prefix cache; nocache: lookahead, the request's prefix_cache off; plain:
# plain decoding, cache off (the baseline). Only lookahead reads or fills the cache.
MODES = ("lookahead", "plain", "nocache")
WORKLOADS = ("distinct", "repeat")
FIRST_VS_REPEAT = 4  # fresh questions asked, then asked again, at concurrency 1
TIMEOUT = httpx.Timeout(10.0, read=900.0)
# The prefix cache's counters in /metrics (one sample per Generator replica).
CACHE_QUERIES = "lookahead_rag:prefix_cache_queries_total"
CACHE_HITS = "lookahead_rag:prefix_cache_hits_total"

# The next n questions of a workload.
Draw = Callable[[int], list[str]]


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
    """Comma-separated concurrency levels, each >= 1, in rising order without repeats (an
    argparse type): the largest is the last, which the scaling figures compare with level 1."""
    return sorted({_count(level) for level in text.split(",")})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--requests",
        type=_count,
        default=DEFAULT_REQUESTS,
        help="questions of the latency part; a load level sends max(this, 2 x level) each way",
    )
    parser.add_argument(
        "--concurrency",
        type=_levels,
        default=DEFAULT_LEVELS,
        help=f"comma-separated levels (default {DEFAULT_LEVELS})",
    )
    parser.add_argument(
        "--workload",
        choices=(*WORKLOADS, "both"),
        default="both",
        help="distinct: questions never asked before; repeat: Zipf-drawn topics, repeated and "
        "paraphrased (default both)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the question draws")
    parser.add_argument("--port", type=int, help="HTTP port (default: a free one)")
    add_config_arguments(parser)


def requests_at(level: int, requests: int) -> int:
    """Requests a load level sends each way: twice the level at least, so that the level is held
    while the first `level` answers run."""
    return max(requests, 2 * level)


def questions(n: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]


class DistinctQuestions:
    """Questions never asked before in the run: one per passage title of the index, in an order
    shuffled by `seed`. Raises ValueError when the titles run out."""

    TEMPLATE = "What is {} and how is it used?"

    def __init__(self, titles: Iterable[str], seed: int = 0) -> None:
        unique = sorted({t.strip() for t in titles if t and t.strip()})
        np.random.default_rng(seed).shuffle(unique)
        self.size = len(unique)
        self._left = iter(unique)

    def __call__(self, n: int) -> list[str]:
        asked = [self.TEMPLATE.format(title) for title in itertools.islice(self._left, n)]
        if len(asked) < n:
            raise ValueError(
                f"the index has {self.size} distinct passage titles, too few for this many "
                "distinct questions: lower --requests or --concurrency, or use --workload repeat"
            )
        return asked


def auth_headers(server: ServerSection) -> dict[str, str]:
    """`Authorization` with the first configured API key (none configured: no header), so that
    a service with keys is measured rather than refused."""
    keys = [key.get_secret_value() for key in server.api_keys]
    if not keys and server.api_key_file is not None:
        keys = read_key_file(server.api_key_file)
    return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


def run(args: argparse.Namespace) -> int:
    from pipeline import ray_runtime
    from pipeline.rag import RagPipeline
    from pipeline.service.app import deploy

    settings = {
        "server__port": args.port or free_port(),
        "generation__max_tokens": args.max_tokens or BENCH_MAX_TOKENS,
        "ngrams__enabled": False,
    }
    config = config_from_args(args, **settings)
    headers = auth_headers(config.server)
    asked = questions(args.requests)
    ensure_index(config)
    # Section 1 repeats its questions: the prefix cache stays off there, in-process and over HTTP.
    local = RagPipeline.load(config_from_args(args, **settings, generation__prefix_cache=False))
    workloads: dict[str, Draw] = {}
    distinct = DistinctQuestions((p.title for p in local.index.passages), args.seed)
    if args.workload in ("distinct", "both"):
        workloads["distinct"] = distinct
    if args.workload in ("repeat", "both"):
        workloads["repeat"] = ZipfQuestions(QUESTIONS, seed=args.seed)
    with ray_runtime.running(config, quiet=True):
        url = deploy(config)
        with httpx.Client(base_url=url, timeout=TIMEOUT, headers=headers) as client:
            for q in asked:  # warm both sides up
                _http_once(client, q)
                _local_once(local, q)
            in_process, http = [], []
            for q in asked:
                in_process.append(_local_once(local, q))
                http.append(_http_once(client, q))
        loads, asked_twice = asyncio.run(
            _load_over_http(url, headers, args.concurrency, args.requests, workloads, distinct)
        )
    result = summarise(
        in_process,
        http,
        loads.get("distinct", {}),
        config.generation.max_tokens,
        repeat=loads.get("repeat"),
        asked_twice=asked_twice,
    )
    print_tables(result)
    print(json.dumps(result))
    return 0


def _local_once(local, question: str) -> tuple[float, float]:
    """(time to the first step's tokens, end-to-end seconds) in-process."""
    t0 = time.perf_counter()
    ttft = None
    for event in local.stream(question):
        if ttft is None and isinstance(event, Delta) and event.n_tokens:
            ttft = time.perf_counter() - t0
    return ttft or 0.0, time.perf_counter() - t0


def _http_once(client: httpx.Client, question: str) -> tuple[float, float]:
    """(time to the first delta's tokens, end-to-end seconds) over HTTP, streamed; raises on a
    failure (section 1 measures a working service, one request at a time)."""
    t0 = time.perf_counter()
    body = {"question": question, "stream": True, "prefix_cache": False}
    with client.stream("POST", "/v1/rag", json=body) as response:
        response.raise_for_status()
        timeline = [(time.perf_counter() - t0, p) for p in sse_payloads(response.iter_lines())]
    streamed = read_stream(timeline, time.perf_counter() - t0)
    if streamed.error is not None:
        raise RuntimeError(streamed.error)
    return streamed.ttft or 0.0, streamed.e2e


@dataclass
class Streamed:
    """One streamed request as its client saw it, in seconds from sending it."""

    e2e: float
    ttft: float | None = None  # to the first delta that carried tokens
    itl: list[float] = field(default_factory=list)  # one a token after the first delta's
    tokens: int = 0  # completion tokens, from the end event's usage
    steps: int = 0  # decoding steps, from the end event's stats
    error: str | None = None
    text: str = ""  # the answer


@dataclass
class Load:
    """One load measurement: every request's stream (in the order asked), the wall time of them
    all, and the prefix cache's (queries, hits) meanwhile (None: not measured or not shown)."""

    runs: list[Streamed]
    wall: float
    cache: tuple[float, float] | None = None


def read_stream(timeline: Iterable[tuple[float, dict]], end: float) -> Streamed:
    """What a `/v1/rag` stream delivered, from its payloads and the seconds each arrived at:
    TTFT at the first delta that carries tokens; then each delta's gap since the previous one
    over its tokens, once per token (as the service's own ITL metric counts); the completion
    tokens of the end event; the answer's text. An error event, or no end event, makes it a
    failure."""
    streamed = Streamed(e2e=end)
    last, ended = None, False
    for at, payload in timeline:
        if "error" in payload:
            streamed.error = _message(payload)
            return streamed
        kind = payload.get("type")
        if kind == "delta":
            streamed.text += payload.get("text", "")
        if kind == "delta" and payload.get("tokens"):
            n = payload["tokens"]
            if last is None:
                streamed.ttft = at
            else:
                streamed.itl.extend([(at - last) / n] * n)
            last = at
        elif kind == "end":
            streamed.tokens = payload["usage"]["completion_tokens"]
            streamed.steps = payload.get("stats", {}).get("steps", 0)
            ended = True
    if not ended:
        streamed.error = "the stream ended without its end event"
    return streamed


def _message(body: object) -> str:
    """The message of an API error body (`{"error": {"message": ...}}`), else the body."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body))
    return str(body)


def http_error(status: int, text: str) -> str:
    """What a refused request counts as: its status and the API's message (or the body's start,
    where it is not the API's JSON)."""
    try:
        message = _message(json.loads(text))
    except ValueError:
        message = text[:200]
    return f"HTTP {status}: {message}"


async def _load_over_http(
    url: str,
    headers: dict[str, str],
    levels: Sequence[int],
    requests: int,
    workloads: dict[str, Draw],
    fresh: Draw,
) -> tuple[dict[str, dict[int, dict[str, Load]]], dict[str, list[Streamed]]]:
    """Each workload's levels, then `FIRST_VS_REPEAT` fresh questions asked twice."""
    limits = httpx.Limits(max_connections=max(levels))
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=TIMEOUT, limits=limits
    ) as client:
        loads = {
            name: await measure(client, levels, requests, draw) for name, draw in workloads.items()
        }
        return loads, await ask_twice(client, fresh(FIRST_VS_REPEAT))


async def measure(
    client: httpx.AsyncClient, levels: Sequence[int], requests: int, draw: Draw
) -> dict[int, dict[str, Load]]:
    """Each level's load in every mode, after an untimed wave at the largest level each mode (it
    meets every batch shape a smaller level will). A level's questions are drawn once and asked
    in every mode. The first level runs the modes in `MODES` order, the next one rotated by one,
    and so on, so that no mode always follows another."""
    top = max(levels)
    warm = draw(top)
    for mode in MODES:
        await load(client, warm, top, mode)
    out: dict[int, dict[str, Load]] = {}
    for i, level in enumerate(levels):
        asked = draw(requests_at(level, requests))
        out[level] = {}
        shift = i % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            out[level][mode] = await load(client, asked, level, mode)
    return out


async def load(
    client: httpx.AsyncClient, asked: Sequence[str], concurrency: int, mode: str
) -> Load:
    """All of `asked`, streamed in `mode`, with at most `concurrency` in flight; in lookahead
    mode, with what the prefix cache counted meanwhile."""
    gate = asyncio.Semaphore(concurrency)

    async def one(question: str) -> Streamed:
        async with gate:
            return await stream_once(client, question, mode)

    before = await cache_counts(client) if mode == "lookahead" else None
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(one(q) for q in asked))
    wall = time.perf_counter() - t0
    after = await cache_counts(client) if before is not None else None
    cache = None if after is None else (after[0] - before[0], after[1] - before[1])
    return Load(list(runs), wall, cache)


async def cache_counts(client: httpx.AsyncClient) -> tuple[float, float] | None:
    """The prefix cache's (queries, hits) in prompt tokens, summed over the Generator replicas
    `/metrics` shows; None when it shows none (a service without the cache) or is unreachable."""
    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    totals = dict.fromkeys((CACHE_QUERIES, CACHE_HITS), 0.0)
    seen = False
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
                seen = True
    return (totals[CACHE_QUERIES], totals[CACHE_HITS]) if seen else None


async def ask_twice(client: httpx.AsyncClient, fresh: Sequence[str]) -> dict[str, list[Streamed]]:
    """One at a time, cache on: each question asked for the first time, then again word for
    word, then paraphrased (the same passages, another question)."""
    asked: dict[str, list[Streamed]] = {"first": [], "repeat": [], "paraphrase": []}
    for question in fresh:
        for kind, text in (("first", question), ("repeat", question)):
            asked[kind].append(await stream_once(client, text, "lookahead"))
        asked["paraphrase"].append(await stream_once(client, paraphrase(question, 0), "lookahead"))
    return asked


async def stream_once(client: httpx.AsyncClient, question: str, mode: str) -> Streamed:
    """One streamed `/v1/rag` request in `mode`; a failure is returned as the run's error, not
    raised."""
    body = {
        "question": question,
        "stream": True,
        "lookahead": mode != "plain",
        "prefix_cache": mode == "lookahead",
    }
    t0 = time.perf_counter()
    timeline: list[tuple[float, dict]] = []
    try:
        async with client.stream("POST", "/v1/rag", json=body) as response:
            if response.status_code >= 400:
                text = (await response.aread()).decode(errors="replace")
                error = http_error(response.status_code, text)
                return Streamed(e2e=time.perf_counter() - t0, error=error)
            async for line in response.aiter_lines():
                at = time.perf_counter() - t0
                timeline.extend((at, payload) for payload in sse_payloads([line]))
    except (httpx.HTTPError, httpx.StreamError, ValueError) as exc:  # transport; not JSON
        return Streamed(e2e=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    return read_stream(timeline, time.perf_counter() - t0)


def _pct(values: Sequence[float], q: float, digits: int, scale: float = 1.0) -> float | None:
    """The q-th percentile (linear interpolation), scaled and rounded; None without values."""
    if not values:
        return None
    return round(scale * float(np.percentile(values, q)), digits)


def _ratio(num: float | None, den: float | None, digits: int = 3) -> float | None:
    return None if num is None or not den else round(num / den, digits)


def figures(measured: Load) -> dict:
    """One mode at one level: throughput of the answers that succeeded (failed ones are only
    counted), and p50/p95 of TTFT, inter-token latency (pooled over every token) and end to
    end."""
    ok = [r for r in measured.runs if r.error is None]
    tokens = sum(r.tokens for r in ok)
    steps = sum(r.steps for r in ok)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [gap for r in ok for gap in r.itl]
    e2e = [r.e2e for r in ok]
    return {
        "req_s": round(len(ok) / measured.wall, 4),
        "tok_s": round(tokens / measured.wall, 2),
        "tokens_per_step": _ratio(tokens, steps),
        "ttft_p50_s": _pct(ttft, 50, 4),
        "ttft_p95_s": _pct(ttft, 95, 4),
        "itl_p50_ms": _pct(itl, 50, 1, scale=1e3),
        "itl_p95_ms": _pct(itl, 95, 1, scale=1e3),
        "e2e_p50_s": _pct(e2e, 50, 4),
        "e2e_p95_s": _pct(e2e, 95, 4),
        "errors": len(measured.runs) - len(ok),
    }


def hit_rate(loads: Iterable[Load]) -> float | None:
    """Prompt tokens the prefix cache served over those looked up, across `loads`; None where
    nothing was looked up (or the service shows no prefix cache)."""
    counted = [load.cache for load in loads if load.cache is not None]
    queries = sum(q for q, _ in counted)
    return round(sum(h for _, h in counted) / queries, 4) if queries else None


def identical(one: Load, other: Load) -> float | None:
    """How often two modes' answers to the same question were the same text (both answered)."""
    pairs = [
        (a.text, b.text)
        for a, b in zip(one.runs, other.runs, strict=True)
        if a.error is None and b.error is None
    ]
    return round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else None


def level_summary(by_mode: dict[str, Load]) -> dict:
    """One level's JSON: each mode's `figures` flat with a mode prefix (`plain_tok_s`, ...),
    plus the requests sent each mode, `ttft_p95_s` (lookahead's), `errors` (every mode's),
    `lookahead_over_plain` (tokens/s), the prefix cache on vs off (lookahead over nocache:
    tokens/s and TTFT p95), its hit rate over the lookahead run, and how often lookahead's
    answer was nocache's."""
    out: dict = {"requests": len(by_mode["lookahead"].runs)}
    for mode in MODES:
        out.update({f"{mode}_{key}": value for key, value in figures(by_mode[mode]).items()})
    out["ttft_p95_s"] = out["lookahead_ttft_p95_s"]
    out["errors"] = sum(out[f"{mode}_errors"] for mode in MODES)
    out["lookahead_over_plain"] = _ratio(out["lookahead_tok_s"], out["plain_tok_s"])
    out["cache_on_over_off"] = _ratio(out["lookahead_tok_s"], out["nocache_tok_s"])
    out["ttft_p95_on_over_off"] = _ratio(out["lookahead_ttft_p95_s"], out["nocache_ttft_p95_s"])
    out["prefix_cache_hit_rate"] = hit_rate([by_mode["lookahead"]])
    out["identical_on_off"] = identical(by_mode["lookahead"], by_mode["nocache"])
    return out


def first_errors(loads: dict[int, dict[str, Load]]) -> dict[str, dict[str, str]]:
    """The first failure of each level and mode that had one: why it failed, in a line."""
    out: dict[str, dict[str, str]] = {}
    for level, by_mode in sorted(loads.items()):
        for mode in MODES:
            errors = [r.error for r in by_mode[mode].runs if r.error is not None]
            if errors:
                out.setdefault(str(level), {})[mode] = errors[0]
    return out


def percentiles(samples: Sequence[tuple[float, float]]) -> dict:
    """p50 and p95 of time to first token and of end to end, from (ttft, e2e) seconds."""
    ttft, e2e = np.array(samples).T
    return {
        "ttft_p50_s": round(float(np.percentile(ttft, 50)), 4),
        "ttft_p95_s": round(float(np.percentile(ttft, 95)), 4),
        "e2e_p50_s": round(float(np.percentile(e2e, 50)), 4),
        "e2e_p95_s": round(float(np.percentile(e2e, 95)), 4),
    }


def asked_twice_summary(asked: dict[str, list[Streamed]]) -> dict:
    """Section 3: p50 time to first token of the first ask, the word-for-word repeat and the
    paraphrase, each over the first; how often the repeat's answer was the first's; failures."""
    ttft = {
        kind: _pct([r.ttft for r in runs if r.error is None and r.ttft is not None], 50, 4)
        for kind, runs in asked.items()
    }
    pairs = list(zip(asked["first"], asked["repeat"], strict=True))
    answered = [(a.text, b.text) for a, b in pairs if a.error is None and b.error is None]
    return {
        "questions": len(asked["first"]),
        **{f"ttft_{kind}_p50_s": value for kind, value in ttft.items()},
        "repeat_over_first": _ratio(ttft["repeat"], ttft["first"]),
        "paraphrase_over_first": _ratio(ttft["paraphrase"], ttft["first"]),
        "identical_repeat": (
            round(sum(a == b for a, b in answered) / len(answered), 4) if answered else None
        ),
        "errors": sum(r.error is not None for runs in asked.values() for r in runs),
    }


def summarise(
    in_process,
    http,
    loads: dict[int, dict[str, Load]],
    max_tokens: int,
    repeat: dict[int, dict[str, Load]] | None = None,
    asked_twice: dict[str, list[Streamed]] | None = None,
) -> dict:
    """The JSON object: latency each way and the HTTP overhead (none where in-process measured
    0); each load level's `level_summary` for the distinct workload (`loads`, none where it was
    not run); from level 1 to the largest, how plain and lookahead tokens/s and lookahead's TTFT
    p95 grew (null where level 1 was not measured); and `prefix_cache`: each workload's hit
    rate over its lookahead runs, the repeat workload's levels, and section 3."""
    local, remote = percentiles(in_process), percentiles(http)
    overhead = {key: round(remote[key] / local[key] - 1, 4) for key in local if local[key] > 0}
    levels = {str(c): level_summary(loads[c]) for c in sorted(loads)}
    first = levels.get("1")
    top = levels[str(max(loads))] if loads else None

    def growth(key: str) -> float | None:
        return None if first is None else _ratio(top[key], first[key])

    def lookahead_runs(by_level: dict[int, dict[str, Load]] | None) -> list[Load]:
        return [by_mode["lookahead"] for by_mode in (by_level or {}).values()]

    return {
        "max_tokens": max_tokens,
        "requests": len(in_process),
        "latency": {"in_process": local, "http": remote, "http_overhead": overhead},
        "levels": levels,
        "scaling_plain_tok_s": growth("plain_tok_s"),
        "scaling_lookahead_tok_s": growth("lookahead_tok_s"),
        "ttft_p95_growth": growth("ttft_p95_s"),
        "first_errors": first_errors(loads),
        "prefix_cache": {
            "zipf_s": ZIPF_S,
            "hit_rate": {
                "distinct": hit_rate(lookahead_runs(loads)),
                "repeat": hit_rate(lookahead_runs(repeat)),
            },
            "repeat_levels": (
                None
                if repeat is None
                else {str(c): level_summary(repeat[c]) for c in sorted(repeat)}
            ),
            "repeat_first_errors": None if repeat is None else first_errors(repeat),
            "first_vs_repeat": None if asked_twice is None else asked_twice_summary(asked_twice),
        },
    }


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{fmt.format(value):>{width}}"


# load table: (heading, figure without its mode prefix, format)
_LOAD_COLUMNS = (
    ("req/s", "req_s", "{:.3f}"),
    ("tok/s", "tok_s", "{:.1f}"),
    ("tok/step", "tokens_per_step", "{:.2f}"),
    ("TTFT p50", "ttft_p50_s", "{:.3f}s"),
    ("TTFT p95", "ttft_p95_s", "{:.3f}s"),
    ("ITL p50", "itl_p50_ms", "{:.1f}ms"),
    ("ITL p95", "itl_p95_ms", "{:.1f}ms"),
    ("e2e p50", "e2e_p50_s", "{:.2f}s"),
    ("e2e p95", "e2e_p95_s", "{:.2f}s"),
    ("errors", "errors", "{}"),
)


def print_tables(result: dict) -> None:
    _print_latency(result)
    if result["levels"]:
        _print_load("load over HTTP, distinct questions", result["levels"])
        _print_comparisons(result)
        _print_errors(result["first_errors"], "")
    cache = result["prefix_cache"]
    if cache["repeat_levels"]:
        title = f"load over HTTP, repeat workload (Zipf s = {cache['zipf_s']})"
        _print_load(title, cache["repeat_levels"])
        _print_errors(cache["repeat_first_errors"], " (repeat)")
    _print_prefix_cache(result)


def _print_latency(result: dict) -> None:
    latency = result["latency"]
    print(f"\nlatency over {result['requests']} questions (max_tokens {result['max_tokens']})")
    print(f"{'':<12} {'TTFT p50':>9} {'TTFT p95':>9} {'e2e p50':>9} {'e2e p95':>9}")
    for name in ("in_process", "http", "http_overhead"):
        row = latency[name]
        fmt = "{:+.1%}" if name == "http_overhead" else "{:.3f}s"
        keys = ("ttft_p50_s", "ttft_p95_s", "e2e_p50_s", "e2e_p95_s")
        print(f"{name:<12} " + " ".join(_cell(row.get(k), fmt, 9) for k in keys))


def _print_load(title: str, levels: dict) -> None:
    print(f"\n{title} (streamed /v1/rag; failed requests only counted)")
    print(
        f"{'level':<6} {'mode':<10} {'sent':>5} "
        + " ".join(f"{heading:>9}" for heading, _, _ in _LOAD_COLUMNS)
    )
    for level, row in levels.items():
        for mode in MODES:
            cells = (_cell(row[f"{mode}_{key}"], fmt, 9) for _, key, fmt in _LOAD_COLUMNS)
            print(f"{level:<6} {mode:<10} {row['requests']:>5} " + " ".join(cells))


def _print_comparisons(result: dict) -> None:
    """Lookahead over plain per level, growth from level 1 to the largest, why requests failed."""
    speedups = ", ".join(
        f"{level}: {_cell(row['lookahead_over_plain'], '{:.2f}x', 0)}"
        for level, row in result["levels"].items()
    )
    print(f"\nlookahead vs plain (tokens/s) by level: {speedups}")
    top = list(result["levels"])[-1]
    if "1" in result["levels"]:
        growth = ", ".join(
            f"{name} {_cell(result[key], '{:.2f}x', 0)}"
            for name, key in (
                ("plain tok/s", "scaling_plain_tok_s"),
                ("lookahead tok/s", "scaling_lookahead_tok_s"),
                ("lookahead TTFT p95", "ttft_p95_growth"),
            )
        )
        print(f"level 1 -> {top}: {growth}")


def _print_errors(first_errors: dict, workload: str) -> None:
    for level, by_mode in first_errors.items():
        for mode, error in by_mode.items():
            print(f"first error at level {level}, {mode}{workload}: {error}")


def _by_level(levels: dict, key: str, fmt: str) -> str:
    return ", ".join(f"{level}: {_cell(row[key], fmt, 0)}" for level, row in levels.items())


def _print_prefix_cache(result: dict) -> None:
    """Per workload: hit rate, cache on over off by level, identical answers; then section 3."""
    cache = result["prefix_cache"]
    print("\nprefix cache (lookahead with it vs nocache without)")
    for workload, levels in (("distinct", result["levels"]), ("repeat", cache["repeat_levels"])):
        if not levels:
            continue
        rate = _cell(cache["hit_rate"][workload], "{:.1%}", 0)
        print(
            f"{workload}: hit rate {rate}; tok/s on/off by level "
            f"{_by_level(levels, 'cache_on_over_off', '{:.2f}x')}; TTFT p95 on/off "
            f"{_by_level(levels, 'ttft_p95_on_over_off', '{:.2f}x')}; identical answers "
            f"{_by_level(levels, 'identical_on_off', '{:.0%}')}"
        )
    twice = cache["first_vs_repeat"]
    if twice is not None:
        print(
            f"first vs repeated ask at concurrency 1 ({twice['questions']} questions, TTFT p50): "
            f"first {_cell(twice['ttft_first_p50_s'], '{:.3f}s', 0)}, "
            f"repeat {_cell(twice['ttft_repeat_p50_s'], '{:.3f}s', 0)} "
            f"({_cell(twice['repeat_over_first'], '{:.2f}x', 0)}), "
            f"paraphrase {_cell(twice['ttft_paraphrase_p50_s'], '{:.3f}s', 0)} "
            f"({_cell(twice['paraphrase_over_first'], '{:.2f}x', 0)}); "
            f"identical answers {_cell(twice['identical_repeat'], '{:.0%}', 0)}, "
            f"errors {twice['errors']}"
        )
