"""`lookahead-rag bench-retrieval` with the real bundled embedder on a small workload: the table
and the JSON last line it promises, figures checked against each other, never against a speed."""

import json

import pytest
from benchhelpers import is_rounded_ratio

from pipeline.commands.cli import main

DIM = 384  # all-MiniLM-L6-v2's embeddings
LATENCY = {"p50", "p95", "cpu_p50"}
INDEXES = {"flat@2000", "hnsw@2000"}


def check_latency(ms: dict) -> None:
    assert set(ms) == LATENCY
    assert 0 <= ms["p50"] <= ms["p95"]


def latency_line(label: str, ms: dict) -> str:
    return f"{label}: p50 {ms['p50']} ms, p95 {ms['p95']} ms (CPU time p50 {ms['cpu_p50']} ms)"


def test_bench_retrieval_prints_a_table_and_a_json_last_line(capsys) -> None:
    argv = "bench-retrieval --sizes 2000 --types flat,hnsw --queries 20 --passages 16 --threads 1"
    assert main(argv.split()) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert set(report) == {
        "embedder",
        "dtype",
        "threads",
        "embed",
        "query_embed_ms",
        "indexes",
        "end_to_end_hnsw@2000_ms",
        "targets_met",
        "load_avg_1m",
    }
    assert report["threads"] == {"torch": 1, "faiss": 1}
    assert lines[0].startswith(f"embedder {report['embedder']} ({report['dtype']}), threads ")

    embed = report["embed"]
    assert list(embed) == ["passages", "short"]
    for kind, figures in embed.items():
        assert set(figures) == {"passages", "mean_tokens", "passages_per_s", "tokens_per_s"}
        assert figures["passages"] == 16
        # tokens/s over passages/s is the mean passage length (0, 1 and 1 decimals)
        assert is_rounded_ratio(
            figures["mean_tokens"],
            figures["tokens_per_s"],
            figures["passages_per_s"],
            0.5,
            0.05,
            0.05,
        ), figures
        assert (
            f"embedding {kind}: {figures['passages_per_s']} passages/s, "
            f"{figures['tokens_per_s']} tokens/s (16 stdlib texts, "
            f"{figures['mean_tokens']} tokens on average)"
        ) in lines
    assert embed["passages"]["mean_tokens"] > embed["short"]["mean_tokens"]  # first lines only

    end_to_end = "end_to_end_hnsw@2000_ms"
    for key, label in (("query_embed_ms", "query embedding"), (end_to_end, end_to_end)):
        check_latency(report[key])
        assert latency_line(label, report[key]) in lines
    assert set(report["indexes"]) == INDEXES
    rows = {cells[0]: cells for cells in map(str.split, lines) if cells[0] in INDEXES}
    for name, result in report["indexes"].items():
        assert (result["kind"], result["size"]) == (name.split("@")[0], 2000)
        check_latency(result["search_ms"])
        ms = result["search_ms"]
        assert rows[name][1:] == [
            *result["factory"].split(),
            f"{result['build_s']:.2f}",
            f"{result['bytes_per_vector']:.0f}",
            *(f"{ms[key]:.3f}" for key in ("p50", "p95", "cpu_p50")),
            f"{result['recall_at_k']:.3f}",
        ]
    flat, hnsw = report["indexes"]["flat@2000"], report["indexes"]["hnsw@2000"]
    assert flat["factory"] == "Flat"
    assert flat["recall_at_k"] == 1.0  # exact search is the reference
    assert flat["bytes_per_vector"] == pytest.approx(4 * DIM, abs=0.5)  # float32 vectors alone
    assert hnsw["recall_at_k"] >= 0.9
    assert hnsw["bytes_per_vector"] > 4 * DIM  # the vectors and the graph

    assert report["targets_met"] == {
        "query_embed_p50_le_15ms": report["query_embed_ms"]["p50"] <= 15,
        "hnsw@2000_search_p50_le_2ms": hnsw["search_ms"]["p50"] <= 2,
    }
    for target, met in report["targets_met"].items():
        assert f"target {target}: {'met' if met else 'MISSED'}" in lines
