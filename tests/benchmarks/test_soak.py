"""`lookahead-rag bench-soak`: its figures from hand-built observations and its option checks
(the command itself starts Ray, the Serve app and the real model and runs for minutes: a
benchmark, not a test)."""

import pytest

from benchmarks.soak import (
    STUCK_S,
    BurstRequest,
    _line_outcome,
    memory_growth,
    summarise_burst,
)
from pipeline.commands.cli import build_parser


def _sample(answers: int, a: float, b: float) -> dict:
    return {"answers": answers, "rss_mb": {"gen-a": a, "gen-b": b}}


def test_memory_growth_tells_a_level_from_a_climb():
    samples = [_sample(0, 100, 100), _sample(50, 110, 105), _sample(100, 111, 110)]
    growth = memory_growth(samples)
    assert growth["gen-a"] == {
        "first_mb": 100,
        "last_mb": 111,
        "growth_pct": 11.0,
        "first_half_pct": 10.0,
        "second_half_pct": 1.0,
    }  # fmt: skip  (levels off)
    assert (growth["gen-b"]["first_half_pct"], growth["gen-b"]["second_half_pct"]) == (5.0, 5.0)
    assert memory_growth(samples[:1]) == {}


def test_a_burst_counts_outcomes_queued_and_stuck_requests():
    requests = [
        BurstRequest(200, 0.1, 0.1, True, "ok"),
        BurstRequest(200, 0.2, STUCK_S + 1, True, "queue_timeout"),
        BurstRequest(200, 0.3, None, False, "ReadTimeout"),  # admitted, never a byte
        BurstRequest(503, 0.05, None, False, "queue_full"),
    ]
    summary = summarise_burst(requests)
    assert summary["outcomes"] == {"ok": 1, "queue_timeout": 1, "ReadTimeout": 1, "queue_full": 1}
    assert (summary["admitted"], summary["queued"], summary["stuck"]) == (3, 2, 2)
    assert (summary["max_headers_s"], summary["max_first_byte_s"]) == (0.3, STUCK_S + 1)


def test_a_stream_line_by_line():
    seen = BurstRequest(200)
    lines = [
        ": admitted, waiting to start",
        'data: {"type": "start", "sources": []}',
        'data: {"type": "queued", "ahead": 3, "max_wait_s": 60}',
        ": keep-alive",
    ]
    for line in lines:
        seen.outcome = _line_outcome(line, seen)
    assert (seen.queued, seen.outcome) == (True, "no answer")
    assert _line_outcome('data: {"type": "end"}', seen) == "ok"
    assert _line_outcome('data: {"error": {"code": "queue_timeout"}}', seen) == "queue_timeout"
    assert _line_outcome("data: [DONE]", seen) == seen.outcome


@pytest.mark.parametrize("flag", ["--requests", "--burst", "--slow"])
def test_counts_must_not_be_negative(flag, capsys):
    with pytest.raises(SystemExit):
        build_parser("bench-soak").parse_args(["bench-soak", f"{flag}=-1"])
    assert "an integer >= 0 wanted" in capsys.readouterr().err
