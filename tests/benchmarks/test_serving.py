"""`lookahead-rag bench-serve`: its summary, JSON and tables from hand-built measurements (the
command itself starts Ray, the Serve app and the real model: too heavy for a test), and its
option checks."""

import json

import pytest

from benchmarks.serving import percentiles, print_tables, summarise
from pipeline.cli import build_parser, main

# (time to first token, end to end) in seconds, one pair a question
IN_PROCESS = [(0.1, 1.0), (0.2, 2.0), (0.3, 3.0), (0.4, 4.0), (0.5, 5.0)]
HTTP = [(0.2, 1.5), (0.3, 2.5), (0.4, 3.5), (0.5, 4.5), (0.6, 5.5)]


def level(requests_per_s: float, tokens_per_s: float) -> dict:
    """One concurrency level's figures, as `_load` measures them."""
    return {
        "requests_per_s": requests_per_s,
        "tokens_per_s": tokens_per_s,
        "latency_p50_s": 1.25,
        "latency_p95_s": 2.5,
    }


THROUGHPUT = {
    "lookahead": {1: level(0.5, 30.0), 4: level(1.5, 90.0)},
    "plain": {1: level(0.25, 20.0), 4: level(1.0, 72.0)},
}


def test_percentiles_interpolate_between_samples():
    assert percentiles(IN_PROCESS) == {
        "ttft_p50_s": 0.3,
        "ttft_p95_s": 0.48,  # 80% of the way from the 4th sample to the 5th
        "e2e_p50_s": 3.0,
        "e2e_p95_s": 4.8,
    }


def test_summary_is_the_documented_json():
    result = summarise(IN_PROCESS, HTTP, THROUGHPUT, max_tokens=64)
    assert result == {
        "max_tokens": 64,
        "requests": 5,
        "latency": {
            "in_process": percentiles(IN_PROCESS),
            "http": {"ttft_p50_s": 0.4, "ttft_p95_s": 0.58, "e2e_p50_s": 3.5, "e2e_p95_s": 5.3},
            # HTTP over in-process, less one
            "http_overhead": {
                "ttft_p50_s": 0.3333,
                "ttft_p95_s": 0.2083,
                "e2e_p50_s": 0.1667,
                "e2e_p95_s": 0.1042,
            },
        },
        "throughput": {
            mode: {str(c): figures for c, figures in by_level.items()}
            for mode, by_level in THROUGHPUT.items()
        },
        "lookahead_speedup_tokens_per_s": {"1": 1.5, "4": 1.25},
    }
    assert json.loads(json.dumps(result)) == result  # levels are JSON's string keys already


def test_tables_show_the_summary(capsys):
    print_tables(summarise(IN_PROCESS, HTTP, THROUGHPUT, max_tokens=64))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "latency over 5 questions (max_tokens 64)"
    rows = {cells[0]: cells[1:] for cells in map(str.split, lines) if cells}
    assert rows["in_process"] == ["0.300s", "0.480s", "3.000s", "4.800s"]
    assert rows["http"] == ["0.400s", "0.580s", "3.500s", "5.300s"]
    assert rows["http_overhead"] == ["+33.3%", "+20.8%", "+16.7%", "+10.4%"]
    throughput = [line.split() for line in lines[lines.index("throughput over HTTP") + 2 :][:4]]
    assert throughput == [
        ["1", "lookahead", "0.500", "30.0", "1.25", "2.50"],
        ["4", "lookahead", "1.500", "90.0", "1.25", "2.50"],
        ["1", "plain", "0.250", "20.0", "1.25", "2.50"],
        ["4", "plain", "1.000", "72.0", "1.25", "2.50"],
    ]
    assert lines[-1] == "lookahead vs plain (tokens/s) by concurrency: 1: 1.50x, 4: 1.25x"


def test_no_overhead_where_in_process_streamed_no_text(capsys):
    silent = [(0.0, e2e) for _, e2e in IN_PROCESS]  # no text: no time to first token
    result = summarise(silent, HTTP, THROUGHPUT, max_tokens=8)
    assert result["latency"]["http_overhead"] == {"e2e_p50_s": 0.1667, "e2e_p95_s": 0.1042}
    print_tables(result)
    overhead = next(line for line in capsys.readouterr().out.splitlines() if "overhead" in line)
    assert overhead.split() == ["http_overhead", "-", "-", "+16.7%", "+10.4%"]


def test_options_are_parsed_into_levels_and_counts():
    args = build_parser("bench-serve").parse_args(["bench-serve"])
    assert (args.concurrency, args.requests) == ([1, 4, 8], 8)
    argv = ["bench-serve", "--concurrency", "2,16", "--requests", "3"]
    args = build_parser("bench-serve").parse_args(argv)
    assert (args.concurrency, args.requests) == ([2, 16], 3)


@pytest.mark.parametrize(
    ("option", "value", "bad"),
    [
        ("--concurrency", "1,x", "x"),
        ("--concurrency", "4,0", "0"),
        ("--concurrency", "", ""),
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
