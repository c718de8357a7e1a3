"""`lookahead-rag bench-trie` runs end to end and ends with its JSON line (figures not judged)."""

import json

import numpy as np
import pytest

from pipeline.cli import main
from trie_store import RequestDrafter
from trie_store.benchmark import accepted_length, stdlib_tokens


def test_bench_trie_prints_a_table_and_a_json_last_line(capsys):
    argv = ["bench-trie", "--repeats", "3", "--steps", "40", "--seed-tokens", "512"]
    assert main([*argv, "--budget", "500"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    for key in ("seed_512_ms", "draft_16_us", "draft_64_us"):
        assert set(figures[key]) == {"p50", "p95", "cpu_p50", "cpu_p95"}
        assert 0 < figures[key]["p50"] <= figures[key]["p95"]
        assert 0 < figures[key]["cpu_p50"] <= figures[key]["cpu_p95"]
    assert figures["bytes_per_node"] > 0
    assert any(line.startswith("seed request trie") for line in lines)


def test_bench_trie_rejects_a_bad_option():
    with pytest.raises(SystemExit, match="repeats"):
        main(["bench-trie", "--repeats", "0"])


def test_workload_is_deterministic_and_acceptance_is_measured_on_the_tree():
    first = stdlib_tokens(300)
    assert np.array_equal(first, stdlib_tokens(300))
    drafter = RequestDrafter([5, 6, 7, 5, 6, 8])
    draft = drafter.draft([5, 6], 4)  # 6 -> 7 and 6 -> 8
    assert accepted_length(draft, [8, 9]) == 1
    assert accepted_length(draft, [9]) == 0
