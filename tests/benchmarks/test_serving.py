"""`lookahead-rag bench-serve`: how a stream is read, its summary, JSON and tables from hand-built
measurements, the workloads' questions, the load's client against a fake transport (the command
itself starts Ray, the Serve app and the real model: too heavy for a test), and its option
checks."""

import asyncio
import json

import httpx
import pytest

from benchmarks.serving import (
    CACHE_HITS,
    CACHE_QUERIES,
    DistinctQuestions,
    Load,
    Streamed,
    ask_twice,
    auth_headers,
    cache_counts,
    figures,
    http_error,
    load,
    measure,
    percentiles,
    print_tables,
    read_stream,
    requests_at,
    stream_once,
    summarise,
)
from benchmarks.workloads import PARAPHRASES, ZipfQuestions
from pipeline.commands.cli import build_parser, main
from pipeline.config import ServerSection

# (time to first token, end to end) in seconds, one pair a question
IN_PROCESS = [(0.1, 1.0), (0.2, 2.0), (0.3, 3.0), (0.4, 4.0), (0.5, 5.0)]
HTTP = [(0.2, 1.5), (0.3, 2.5), (0.4, 3.5), (0.5, 4.5), (0.6, 5.5)]


def delta(tokens: int, text: str = "x") -> dict:
    return {"type": "delta", "text": text, "tokens": tokens, "accepted_tokens": 0}


def end(completion_tokens: int, steps: int) -> dict:
    return {
        "type": "end",
        "finish_reason": "length",
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": completion_tokens,
            "total_tokens": 50 + completion_tokens,
        },
        "stats": {"steps": steps, "tokens_per_step": completion_tokens / steps},
    }


# one `/v1/rag` stream: (seconds since the request was sent, payload)
STREAM = [
    (0.125, {"type": "start", "id": "r1", "sources": []}),
    (0.25, delta(1, text="")),  # a step whose text is held back still brought its token
    (0.625, delta(3)),  # 0.375 s for 3 tokens: 0.125 s each
    (1.125, delta(2)),  # 0.5 s for 2 tokens: 0.25 s each
    (1.25, end(6, steps=3)),
]


def runs(n: int, **fields) -> list[Streamed]:
    return [Streamed(**fields) for _ in range(n)]


LOADS = {
    1: {
        "lookahead": Load(
            [
                Streamed(e2e=1.0, ttft=0.1, itl=[0.01, 0.03], tokens=60, steps=20),
                Streamed(e2e=2.0, ttft=0.3, itl=[0.02, 0.04], tokens=40, steps=20),
            ],
            wall=4.0,
            cache=(1000.0, 600.0),
        ),
        "plain": Load(runs(2, e2e=2.0, ttft=0.1, itl=[0.05], tokens=50, steps=50), wall=5.0),
        "nocache": Load(runs(2, e2e=2.0, ttft=0.2, itl=[0.02], tokens=50, steps=25), wall=5.0),
    },
    4: {
        "lookahead": Load(
            [
                *runs(3, e2e=3.0, ttft=1.0, itl=[0.1], tokens=64, steps=32),
                Streamed(e2e=0.5, error="HTTP 503: busy"),
            ],
            wall=6.0,
            cache=(4000.0, 3000.0),
        ),
        "plain": Load(runs(4, e2e=4.0, ttft=0.5, itl=[0.2], tokens=64, steps=64), wall=6.4),
        "nocache": Load(
            [
                *runs(2, e2e=3.0, ttft=2.0, itl=[0.1], tokens=64, steps=32),
                Streamed(e2e=3.0, ttft=2.0, itl=[0.1], tokens=64, steps=32, text="other"),
                Streamed(e2e=3.0, ttft=2.0, itl=[0.1], tokens=64, steps=32),
            ],
            wall=8.0,
        ),
    },
}


def test_a_stream_gives_ttft_per_token_gaps_the_end_events_tokens_and_the_text():
    assert read_stream(STREAM, end=1.5) == Streamed(
        e2e=1.5, ttft=0.25, itl=[0.125] * 3 + [0.25] * 2, tokens=6, steps=3, text="xx"
    )


def test_ttft_waits_for_a_delta_with_tokens():
    timeline = [(0.5, delta(0, text="")), (0.75, delta(2)), (1.0, end(2, steps=1))]
    want = Streamed(e2e=1.0, ttft=0.75, tokens=2, steps=1, text="x")
    assert read_stream(timeline, end=1.0) == want


def test_an_error_event_or_a_missing_end_fails_the_stream():
    error = {"error": {"message": "replica died", "type": "service_unavailable"}}
    failed = read_stream([*STREAM[:3], (0.75, error)], end=0.75)
    assert (failed.error, failed.tokens) == ("replica died", 0)
    cut = read_stream(STREAM[:-1], end=1.2)
    assert cut.error == "the stream ended without its end event"


def test_http_errors_carry_the_api_message_or_the_body():
    body = json.dumps({"error": {"message": "overloaded", "type": "service_unavailable"}})
    assert http_error(503, body) == "HTTP 503: overloaded"
    assert http_error(502, "<html>bad gateway</html>") == "HTTP 502: <html>bad gateway</html>"


def test_percentiles_interpolate_between_samples():
    assert percentiles(IN_PROCESS) == {
        "ttft_p50_s": 0.3,
        "ttft_p95_s": 0.48,  # 80% of the way from the 4th sample to the 5th
        "e2e_p50_s": 3.0,
        "e2e_p95_s": 4.8,
    }


def test_failed_requests_are_counted_and_left_out_of_the_figures():
    assert figures(LOADS[4]["lookahead"]) == {
        "req_s": 0.5,  # 3 answers in 6 s: the failed one is not one
        "tok_s": 32.0,
        "tokens_per_step": 2.0,
        "ttft_p50_s": 1.0,
        "ttft_p95_s": 1.0,
        "itl_p50_ms": 100.0,
        "itl_p95_ms": 100.0,
        "e2e_p50_s": 3.0,  # not the failure's 0.5 s
        "e2e_p95_s": 3.0,
        "errors": 1,
    }


def test_a_level_where_everything_failed_has_no_latencies():
    failed = Load(runs(2, e2e=0.25, error="HTTP 503: busy"), wall=0.5)
    out = figures(failed)
    assert (out["req_s"], out["tok_s"], out["errors"]) == (0.0, 0.0, 2)
    assert out["tokens_per_step"] is None
    assert all(out[k] is None for k in out if k.endswith(("_s", "_ms")) and "p" in k)


def test_summary_is_the_documented_json():
    result = summarise(IN_PROCESS, HTTP, LOADS, max_tokens=64)
    assert result["latency"] == {
        "in_process": percentiles(IN_PROCESS),
        "http": {"ttft_p50_s": 0.4, "ttft_p95_s": 0.58, "e2e_p50_s": 3.5, "e2e_p95_s": 5.3},
        # HTTP over in-process, less one
        "http_overhead": {
            "ttft_p50_s": 0.3333,
            "ttft_p95_s": 0.2083,
            "e2e_p50_s": 0.1667,
            "e2e_p95_s": 0.1042,
        },
    }
    assert (result["max_tokens"], result["requests"]) == (64, 5)
    assert list(result["levels"]) == ["1", "4"]
    assert result["levels"]["1"] == {
        "requests": 2,
        "lookahead_req_s": 0.5,
        "lookahead_tok_s": 25.0,
        "lookahead_tokens_per_step": 2.5,
        "lookahead_ttft_p50_s": 0.2,
        "lookahead_ttft_p95_s": 0.29,
        "lookahead_itl_p50_ms": 25.0,  # pooled over both answers' tokens
        "lookahead_itl_p95_ms": 38.5,
        "lookahead_e2e_p50_s": 1.5,
        "lookahead_e2e_p95_s": 1.95,
        "lookahead_errors": 0,
        "plain_req_s": 0.4,
        "plain_tok_s": 20.0,
        "plain_tokens_per_step": 1.0,
        "plain_ttft_p50_s": 0.1,
        "plain_ttft_p95_s": 0.1,
        "plain_itl_p50_ms": 50.0,
        "plain_itl_p95_ms": 50.0,
        "plain_e2e_p50_s": 2.0,
        "plain_e2e_p95_s": 2.0,
        "plain_errors": 0,
        "nocache_req_s": 0.4,
        "nocache_tok_s": 20.0,
        "nocache_tokens_per_step": 2.0,
        "nocache_ttft_p50_s": 0.2,
        "nocache_ttft_p95_s": 0.2,
        "nocache_itl_p50_ms": 20.0,
        "nocache_itl_p95_ms": 20.0,
        "nocache_e2e_p50_s": 2.0,
        "nocache_e2e_p95_s": 2.0,
        "nocache_errors": 0,
        "ttft_p95_s": 0.29,  # lookahead's
        "errors": 0,
        "lookahead_over_plain": 1.25,
        "cache_on_over_off": 1.25,  # lookahead's 25 tok/s over nocache's 20
        "ttft_p95_on_over_off": 1.45,
        "prefix_cache_hit_rate": 0.6,  # 600 of the 1000 prompt tokens looked up
        "identical_on_off": 1.0,
    }
    four = result["levels"]["4"]
    assert (four["requests"], four["errors"], four["lookahead_over_plain"]) == (4, 1, 0.8)
    assert (four["plain_req_s"], four["plain_tok_s"], four["ttft_p95_s"]) == (0.625, 40.0, 1.0)
    assert (four["cache_on_over_off"], four["ttft_p95_on_over_off"]) == (1.0, 0.5)
    # Three questions answered both ways (the fourth failed with the cache), one differently.
    assert (four["prefix_cache_hit_rate"], four["identical_on_off"]) == (0.75, 0.6667)
    assert result["scaling_plain_tok_s"] == 2.0  # 40 tok/s at level 4 over 20 at level 1
    assert result["scaling_lookahead_tok_s"] == 1.28
    assert result["ttft_p95_growth"] == 3.448  # 1.0 s over 0.29 s
    assert result["first_errors"] == {"4": {"lookahead": "HTTP 503: busy"}}
    assert result["prefix_cache"] == {
        "zipf_s": 1.1,
        "hit_rate": {"distinct": 0.72, "repeat": None},  # 3600 of 5000 over both levels
        "repeat_levels": None,
        "repeat_first_errors": None,
        "first_vs_repeat": None,
    }
    assert json.loads(json.dumps(result)) == result  # levels are JSON's string keys already


ASKED_TWICE = {
    "first": [Streamed(e2e=2.0, ttft=0.8, text="a"), Streamed(e2e=2.0, ttft=1.2, text="b")],
    "repeat": [Streamed(e2e=1.0, ttft=0.1, text="a"), Streamed(e2e=1.0, ttft=0.3, text="c")],
    "paraphrase": [Streamed(e2e=1.0, ttft=0.5), Streamed(e2e=0.1, error="HTTP 500: bug")],
}


def test_the_repeat_workload_and_the_second_ask_have_their_own_part(capsys):
    repeat = {4: LOADS[4]}
    result = summarise(IN_PROCESS, HTTP, {}, max_tokens=64, repeat=repeat, asked_twice=ASKED_TWICE)
    assert result["levels"] == {}  # the distinct workload was not run
    assert result["scaling_lookahead_tok_s"] is None
    cache = result["prefix_cache"]
    assert cache["hit_rate"] == {"distinct": None, "repeat": 0.75}
    assert cache["repeat_levels"]["4"] == summarise(IN_PROCESS, HTTP, repeat, 64)["levels"]["4"]
    assert cache["repeat_first_errors"] == {"4": {"lookahead": "HTTP 503: busy"}}
    assert cache["first_vs_repeat"] == {
        "questions": 2,
        "ttft_first_p50_s": 1.0,
        "ttft_repeat_p50_s": 0.2,
        "ttft_paraphrase_p50_s": 0.5,  # the failed one is only counted
        "repeat_over_first": 0.2,
        "paraphrase_over_first": 0.5,
        "identical_repeat": 0.5,
        "errors": 1,
    }
    print_tables(result)
    out = capsys.readouterr().out
    assert "load over HTTP, distinct questions" not in out
    assert "load over HTTP, repeat workload (Zipf s = 1.1)" in out
    assert "first error at level 4, lookahead (repeat): HTTP 503: busy" in out
    assert (
        "repeat: hit rate 75.0%; tok/s on/off by level 4: 1.00x; TTFT p95 on/off 4: 0.50x; "
        "identical answers 4: 67%"
    ) in out
    assert (
        "first vs repeated ask at concurrency 1 (2 questions, TTFT p50): first 1.000s, repeat "
        "0.200s (0.20x), paraphrase 0.500s (0.50x); identical answers 50%, errors 1"
    ) in out


def test_without_level_1_there_is_no_scaling(capsys):
    result = summarise(IN_PROCESS, HTTP, {4: LOADS[4]}, max_tokens=64)
    assert list(result["levels"]) == ["4"]
    growth = ("scaling_plain_tok_s", "scaling_lookahead_tok_s", "ttft_p95_growth")
    assert [result[k] for k in growth] == [None, None, None]
    print_tables(result)
    assert "level 1 ->" not in capsys.readouterr().out


def test_no_speedup_where_plain_answered_nothing(capsys):
    failed = Load(runs(2, e2e=0.25, error="ConnectError: refused"), wall=0.5)
    loads = {1: {**LOADS[1], "plain": failed}}
    result = summarise(IN_PROCESS, HTTP, loads, max_tokens=64)
    level = result["levels"]["1"]
    assert (level["lookahead_over_plain"], level["errors"]) == (None, 2)
    print_tables(result)
    out = capsys.readouterr().out.splitlines()
    plain = next(line.split() for line in out if line.startswith("1 ") and "plain" in line)
    assert plain == ["1", "plain", "2", "0.000", "0.0"] + ["-"] * 7 + ["2"]
    assert "lookahead vs plain (tokens/s) by level: 1: -" in out
    assert "first error at level 1, plain: ConnectError: refused" in out


def test_tables_show_the_summary(capsys):
    print_tables(summarise(IN_PROCESS, HTTP, LOADS, max_tokens=64))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "latency over 5 questions (max_tokens 64)"
    rows = {cells[0]: cells[1:] for cells in map(str.split, lines) if cells}
    assert rows["in_process"] == ["0.300s", "0.480s", "3.000s", "4.800s"]
    assert rows["http"] == ["0.400s", "0.580s", "3.500s", "5.300s"]
    assert rows["http_overhead"] == ["+33.3%", "+20.8%", "+16.7%", "+10.4%"]
    start = next(i for i, line in enumerate(lines) if line.startswith("load over HTTP"))
    assert lines[start].startswith("load over HTTP, distinct questions")
    assert lines[start + 1].split()[:5] == ["level", "mode", "sent", "req/s", "tok/s"]
    table = [" ".join(line.split()) for line in lines[start + 2 : start + 8]]
    # level, mode, sent, req/s, tok/s, tok/step, TTFT p50 p95, ITL p50 p95, e2e p50 p95, errors
    assert table == [
        "1 lookahead 2 0.500 25.0 2.50 0.200s 0.290s 25.0ms 38.5ms 1.50s 1.95s 0",
        "1 plain 2 0.400 20.0 1.00 0.100s 0.100s 50.0ms 50.0ms 2.00s 2.00s 0",
        "1 nocache 2 0.400 20.0 2.00 0.200s 0.200s 20.0ms 20.0ms 2.00s 2.00s 0",
        "4 lookahead 4 0.500 32.0 2.00 1.000s 1.000s 100.0ms 100.0ms 3.00s 3.00s 1",
        "4 plain 4 0.625 40.0 1.00 0.500s 0.500s 200.0ms 200.0ms 4.00s 4.00s 0",
        "4 nocache 4 0.500 32.0 2.00 2.000s 2.000s 100.0ms 100.0ms 3.00s 3.00s 0",
    ]
    after = lines[start + 8 :]
    assert after[:5] == [
        "",
        "lookahead vs plain (tokens/s) by level: 1: 1.25x, 4: 0.80x",
        "level 1 -> 4: plain tok/s 2.00x, lookahead tok/s 1.28x, lookahead TTFT p95 3.45x",
        "first error at level 4, lookahead: HTTP 503: busy",
        "",
    ]
    assert after[5:] == [
        "prefix cache (lookahead with it vs nocache without)",
        "distinct: hit rate 72.0%; tok/s on/off by level 1: 1.25x, 4: 1.00x; TTFT p95 on/off "
        "1: 1.45x, 4: 0.50x; identical answers 1: 100%, 4: 67%",
    ]


def test_no_overhead_where_in_process_streamed_no_text(capsys):
    silent = [(0.0, e2e) for _, e2e in IN_PROCESS]  # no tokens: no time to first token
    result = summarise(silent, HTTP, LOADS, max_tokens=8)
    assert result["latency"]["http_overhead"] == {"e2e_p50_s": 0.1667, "e2e_p95_s": 0.1042}
    print_tables(result)
    overhead = next(line for line in capsys.readouterr().out.splitlines() if "overhead" in line)
    assert overhead.split() == ["http_overhead", "-", "-", "+16.7%", "+10.4%"]


def sse_body(*payloads: dict) -> bytes:
    """A stream as the service sends it: `data: [DONE]` is not JSON."""
    lines = [f"data: {json.dumps(p)}\n\n" for p in payloads] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


def fake_client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://bench")


ANSWER = sse_body({"type": "start", "id": "r", "sources": []}, delta(2), delta(1), end(3, 2))


@pytest.mark.parametrize(
    ("mode", "lookahead", "prefix_cache"),
    [("lookahead", True, True), ("nocache", True, False), ("plain", False, False)],
)
def test_a_streamed_request_asks_for_the_mode_and_reads_the_answer(mode, lookahead, prefix_cache):
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, content=ANSWER, headers={"content-type": "text/event-stream"})

    async def go() -> Streamed:
        async with fake_client(handler) as client:
            return await stream_once(client, "what is json?", mode)

    streamed = asyncio.run(go())
    body = {"question": "what is json?", "stream": True, "lookahead": lookahead}
    assert bodies == [("/v1/rag", {**body, "prefix_cache": prefix_cache})]
    assert (streamed.error, streamed.tokens, streamed.steps, len(streamed.itl)) == (None, 3, 2, 1)
    assert streamed.text == "xx"
    assert 0 <= streamed.ttft <= streamed.e2e


@pytest.mark.parametrize(
    ("respond", "error"),
    [
        (
            lambda: httpx.Response(503, json={"error": {"message": "overloaded"}}),
            "HTTP 503: overloaded",
        ),
        (
            lambda: httpx.Response(200, content=sse_body({"error": {"message": "died"}})),
            "died",
        ),
        (lambda: httpx.Response(200, content=b"data: {not json\n\n"), "JSONDecodeError: "),
    ],
)
def test_a_failed_request_is_returned_not_raised(respond, error):
    async def go() -> Streamed:
        async with fake_client(lambda request: respond()) as client:
            return await stream_once(client, "q", "lookahead")

    assert asyncio.run(go()).error.startswith(error)


def test_a_load_counts_failures_and_goes_on():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) % 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, content=ANSWER)

    async def go() -> Load:
        async with fake_client(handler) as client:
            return await load(client, ["a", "b", "c", "d"], concurrency=2, mode="nocache")

    measured = asyncio.run(go())
    assert len(measured.runs) == 4
    assert measured.cache is None  # only the lookahead mode reads the cache's counters
    assert measured.wall > 0
    errors = [r.error for r in measured.runs if r.error]
    assert errors == ["ConnectError: refused"] * 2
    assert figures(measured)["errors"] == 2


def metrics_text(*replicas: tuple[str, float, float]) -> str:
    """`/metrics` with each replica's prefix cache (queries, hits) counters."""
    lines = ["# TYPE lookahead_rag:prefix_cache_queries counter"]
    lines += [f'{CACHE_QUERIES}{{replica="{r}"}} {q}' for r, q, _ in replicas]
    lines += ["# TYPE lookahead_rag:prefix_cache_hits counter"]
    lines += [f'{CACHE_HITS}{{replica="{r}"}} {h}' for r, _, h in replicas]
    return "\n".join(lines) + "\n"


def mode_of(body: dict) -> str:
    if not body["lookahead"]:
        return "plain"
    return "lookahead" if body["prefix_cache"] else "nocache"


def test_levels_are_warmed_up_then_measured_in_every_mode_in_rotating_order():
    asked, scrapes = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":  # counters grow by 100 queries, 40 hits a scrape
            scrapes.append(len(asked))
            return httpx.Response(200, text=metrics_text(("a:1", 100 * len(scrapes), 0.0)))
        body = json.loads(request.content)
        asked.append((mode_of(body), body["question"]))
        return httpx.Response(200, content=ANSWER)

    drawn = iter(range(1000))

    async def go() -> dict:
        async with fake_client(handler) as client:
            return await measure(client, [1, 2], requests=2, draw=lambda n: [
                f"q{next(drawn)}" for _ in range(n)
            ])  # fmt: skip

    loads = asyncio.run(go())
    modes = [mode for mode, _ in asked]
    warm_up = ["lookahead"] * 2 + ["plain"] * 2 + ["nocache"] * 2  # one wave at level 2 each
    level_1 = ["lookahead"] * 2 + ["plain"] * 2 + ["nocache"] * 2  # 2 requests each mode
    level_2 = ["plain"] * 4 + ["nocache"] * 4 + ["lookahead"] * 4  # rotated by one
    assert modes == warm_up + level_1 + level_2
    questions = [q for _, q in asked]
    assert questions[:6] == ["q0", "q1"] * 3  # a level's questions are asked in every mode
    assert questions[6:12] == ["q2", "q3"] * 3  # and never in another level
    assert questions[12:] == ["q4", "q5", "q6", "q7"] * 3
    assert {level: {m: len(x.runs) for m, x in by.items()} for level, by in loads.items()} == {
        1: {"lookahead": 2, "plain": 2, "nocache": 2},
        2: {"plain": 4, "nocache": 4, "lookahead": 4},
    }
    # Scraped around each lookahead run only (warm-up, level 1, level 2): before and after.
    assert scrapes == [0, 2, 6, 8, 20, 24]
    assert loads[1]["lookahead"].cache == (100.0, 0.0)
    assert loads[1]["plain"].cache is None


def test_the_cache_counters_are_summed_over_replicas_or_absent():
    responses = iter(
        [
            httpx.Response(200, text=metrics_text(("a:1", 300.0, 100.0), ("b:2", 200.0, 50.0))),
            httpx.Response(200, text="# TYPE x counter\nx_total 1.0\n"),  # no prefix cache
            httpx.Response(503, text="down"),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        response = next(responses, None)
        if response is None:
            raise httpx.ConnectError("refused", request=request)
        return response

    async def go() -> list:
        async with fake_client(handler) as client:
            return [await cache_counts(client) for _ in range(4)]

    assert asyncio.run(go()) == [(500.0, 150.0), None, None, None]


def test_a_fresh_question_is_asked_then_repeated_then_paraphrased_with_the_cache():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=ANSWER)

    async def go() -> dict:
        async with fake_client(handler) as client:
            return await ask_twice(client, ["What is a?", "What is b?"])

    asked = asyncio.run(go())
    assert [len(runs) for runs in asked.values()] == [2, 2, 2]
    assert [b["question"] for b in bodies] == [
        "What is a?",
        "What is a?",
        PARAPHRASES[0].format(q="What is a?"),
        "What is b?",
        "What is b?",
        PARAPHRASES[0].format(q="What is b?"),
    ]
    assert {mode_of(b) for b in bodies} == {"lookahead"}


def test_distinct_questions_never_repeat_and_run_out_with_a_clear_error():
    titles = ["json.loads", "json.dumps", " ", "", "json.loads", "csv.reader"]
    draw = DistinctQuestions(titles, seed=3)
    asked = draw(2) + draw(1)
    assert sorted(asked) == sorted(
        DistinctQuestions.TEMPLATE.format(t) for t in ("json.loads", "json.dumps", "csv.reader")
    )
    assert asked == DistinctQuestions(titles, seed=3)(3)  # the seed fixes the order
    with pytest.raises(ValueError, match="3 distinct passage titles"):
        draw(1)


def test_a_zipf_workload_repeats_popular_topics_word_for_word_and_rephrased():
    topics = [f"Question {i}?" for i in range(8)]
    asked = ZipfQuestions(topics, seed=1)(2000)
    assert asked == ZipfQuestions(topics, seed=1)(2000)
    counts = [sum(topic in q for q in asked) for topic in topics]
    assert counts[0] == max(counts)  # the first topic the most popular, the last ones the least
    assert min(counts[:3]) > max(counts[5:])
    assert 1.8 < counts[0] / counts[1] < 2.6  # 2 ** 1.1 = 2.14
    first = [q for q in asked if "Question 0?" in q]
    assert "Question 0?" in first  # asked as itself
    assert {PARAPHRASES[i].format(q="Question 0?") for i in range(3)} <= set(first)
    with pytest.raises(ValueError, match="at least one topic"):
        ZipfQuestions([])


@pytest.mark.parametrize(
    ("level", "requests", "sent"), [(1, 16, 16), (8, 16, 16), (16, 16, 32), (4, 3, 8)]
)
def test_a_level_sends_twice_its_concurrency_at_least(level, requests, sent):
    assert requests_at(level, requests) == sent


def test_requests_carry_the_first_configured_key(tmp_path):
    assert auth_headers(ServerSection()) == {}
    keyed = ServerSection(api_keys=["k1", "k2"])
    assert auth_headers(keyed) == {"Authorization": "Bearer k1"}
    key_file = tmp_path / "keys"
    key_file.write_text("\n  k3 \nk4\n")
    assert auth_headers(ServerSection(api_key_file=key_file)) == {"Authorization": "Bearer k3"}


def test_options_are_parsed_into_levels_and_counts():
    args = build_parser("bench-serve").parse_args(["bench-serve"])
    assert (args.concurrency, args.requests) == ([1, 2, 4, 8, 16], 16)
    assert (args.workload, args.seed) == ("both", 0)
    argv = ["bench-serve", "--workload", "repeat", "--seed", "4"]
    assert build_parser("bench-serve").parse_args(argv).workload == "repeat"
    argv = ["bench-serve", "--concurrency", "1,8", "--requests", "3"]
    args = build_parser("bench-serve").parse_args(argv)
    assert (args.concurrency, args.requests) == ([1, 8], 3)
    argv = ["bench-serve", "--concurrency", "16,2,16"]  # the largest level is the last
    assert build_parser("bench-serve").parse_args(argv).concurrency == [2, 16]


@pytest.mark.parametrize(
    ("option", "value", "bad"),
    [
        ("--concurrency", "1,x", "x"),
        ("--concurrency", "4,0", "0"),
        ("--concurrency", "", ""),
        ("--concurrency", "1,-8", "-8"),
        ("--requests", "0", "0"),
        ("--requests", "many", "many"),
    ],
)
def test_bad_options_are_usage_errors(capsys, option, value, bad):
    with pytest.raises(SystemExit) as exc:
        main(["bench-serve", option, value])  # rejected before Ray or a model is started
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: an integer >= 1 wanted, got {bad!r}" in err
    assert "Traceback" not in err
