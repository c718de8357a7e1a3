"""`lookahead-rag bench-serve`: how a stream is read, its summary, JSON and tables from hand-built
measurements, the load's client against a fake transport (the command itself starts Ray, the
Serve app and the real model: too heavy for a test), and its option checks."""

import asyncio
import json

import httpx
import pytest

from benchmarks.serving import (
    Load,
    Streamed,
    auth_headers,
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
        ),
        "plain": Load(runs(2, e2e=2.0, ttft=0.1, itl=[0.05], tokens=50, steps=50), wall=5.0),
    },
    4: {
        "lookahead": Load(
            [
                *runs(3, e2e=3.0, ttft=1.0, itl=[0.1], tokens=64, steps=32),
                Streamed(e2e=0.5, error="HTTP 503: busy"),
            ],
            wall=6.0,
        ),
        "plain": Load(runs(4, e2e=4.0, ttft=0.5, itl=[0.2], tokens=64, steps=64), wall=6.4),
    },
}


def test_a_stream_gives_ttft_per_token_gaps_and_the_end_events_tokens():
    assert read_stream(STREAM, end=1.5) == Streamed(
        e2e=1.5, ttft=0.25, itl=[0.125] * 3 + [0.25] * 2, tokens=6, steps=3
    )


def test_ttft_waits_for_a_delta_with_tokens():
    timeline = [(0.5, delta(0, text="")), (0.75, delta(2)), (1.0, end(2, steps=1))]
    assert read_stream(timeline, end=1.0) == Streamed(e2e=1.0, ttft=0.75, tokens=2, steps=1)


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
        "ttft_p95_s": 0.29,  # lookahead's
        "errors": 0,
        "lookahead_over_plain": 1.25,
    }
    four = result["levels"]["4"]
    assert (four["requests"], four["errors"], four["lookahead_over_plain"]) == (4, 1, 0.8)
    assert (four["plain_req_s"], four["plain_tok_s"], four["ttft_p95_s"]) == (0.625, 40.0, 1.0)
    assert result["scaling_plain_tok_s"] == 2.0  # 40 tok/s at level 4 over 20 at level 1
    assert result["scaling_lookahead_tok_s"] == 1.28
    assert result["ttft_p95_growth"] == 3.448  # 1.0 s over 0.29 s
    assert result["first_errors"] == {"4": {"lookahead": "HTTP 503: busy"}}
    assert json.loads(json.dumps(result)) == result  # levels are JSON's string keys already


def test_without_level_1_there_is_no_scaling(capsys):
    result = summarise(IN_PROCESS, HTTP, {4: LOADS[4]}, max_tokens=64)
    assert list(result["levels"]) == ["4"]
    growth = ("scaling_plain_tok_s", "scaling_lookahead_tok_s", "ttft_p95_growth")
    assert [result[k] for k in growth] == [None, None, None]
    print_tables(result)
    assert "level 1 ->" not in capsys.readouterr().out


def test_no_speedup_where_plain_answered_nothing(capsys):
    failed = Load(runs(2, e2e=0.25, error="ConnectError: refused"), wall=0.5)
    loads = {1: {"lookahead": LOADS[1]["lookahead"], "plain": failed}}
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
    assert lines[start + 1].split()[:5] == ["level", "mode", "sent", "req/s", "tok/s"]
    table = [" ".join(line.split()) for line in lines[start + 2 : start + 6]]
    # level, mode, sent, req/s, tok/s, tok/step, TTFT p50 p95, ITL p50 p95, e2e p50 p95, errors
    assert table == [
        "1 lookahead 2 0.500 25.0 2.50 0.200s 0.290s 25.0ms 38.5ms 1.50s 1.95s 0",
        "1 plain 2 0.400 20.0 1.00 0.100s 0.100s 50.0ms 50.0ms 2.00s 2.00s 0",
        "4 lookahead 4 0.500 32.0 2.00 1.000s 1.000s 100.0ms 100.0ms 3.00s 3.00s 1",
        "4 plain 4 0.625 40.0 1.00 0.500s 0.500s 200.0ms 200.0ms 4.00s 4.00s 0",
    ]
    assert lines[-3] == "lookahead vs plain (tokens/s) by level: 1: 1.25x, 4: 0.80x"
    assert lines[-2] == (
        "level 1 -> 4: plain tok/s 2.00x, lookahead tok/s 1.28x, lookahead TTFT p95 3.45x"
    )
    assert lines[-1] == "first error at level 4, lookahead: HTTP 503: busy"


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


def test_a_streamed_request_asks_for_the_mode_and_reads_the_answer():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, content=ANSWER, headers={"content-type": "text/event-stream"})

    async def go() -> Streamed:
        async with fake_client(handler) as client:
            return await stream_once(client, "what is json?", lookahead=False)

    streamed = asyncio.run(go())
    assert bodies == [
        ("/v1/rag", {"question": "what is json?", "stream": True, "lookahead": False})
    ]
    assert (streamed.error, streamed.tokens, streamed.steps, len(streamed.itl)) == (None, 3, 2, 1)
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
            return await stream_once(client, "q", lookahead=True)

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
            return await load(client, ["a", "b", "c", "d"], concurrency=2, lookahead=True)

    measured = asyncio.run(go())
    assert len(measured.runs) == 4
    assert measured.wall > 0
    errors = [r.error for r in measured.runs if r.error]
    assert errors == ["ConnectError: refused"] * 2
    assert figures(measured)["errors"] == 2


def test_levels_are_warmed_up_then_measured_both_ways_in_alternating_order():
    flags = []

    def handler(request: httpx.Request) -> httpx.Response:
        flags.append(json.loads(request.content)["lookahead"])
        return httpx.Response(200, content=ANSWER)

    async def go() -> dict:
        async with fake_client(handler) as client:
            return await measure(client, [1, 2], requests=2)

    loads = asyncio.run(go())
    warm_up = [True] * 2 + [False] * 2  # one wave at the largest level (2) each way
    level_1 = [True] * 2 + [False] * 2  # lookahead first, 2 requests each way
    level_2 = [False] * 4 + [True] * 4  # plain first, 2 x 2 requests each way
    assert flags == warm_up + level_1 + level_2
    assert {level: {m: len(x.runs) for m, x in by.items()} for level, by in loads.items()} == {
        1: {"lookahead": 2, "plain": 2},
        2: {"plain": 4, "lookahead": 4},
    }


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
