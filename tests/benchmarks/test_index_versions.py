"""`lookahead-rag bench-index` on a small corpus: the JSON last line it promises, its figures
checked against each other, never against a speed."""

import json

from pipeline.commands.cli import main


def test_bench_index_times_changes_and_searches(capsys) -> None:
    argv = "bench-index --modules json --changes 2 --watch-interval 0.1 --steady-s 0.5"
    assert main(argv.split()) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["changes"] == 2
    assert len(report["build_s"]) == len(report["searchable_s"]) == 2
    for built, found in zip(report["build_s"], report["searchable_s"], strict=True):
        assert 0 < built <= found  # published first, then switched to and found
    assert report["searchable_max_s"] == max(report["searchable_s"])
    assert report["within_bound"] == (report["searchable_max_s"] <= 30.0)
    for window in ("steady", "switch"):
        figures = report["search_ms"][window]
        assert figures["n"] > 0
        assert 0 < figures["p50"] <= figures["p95"]
    assert any(line.startswith("change 1: built and published") for line in lines)
