"""`lookahead-rag bench-trie`: the table and the JSON last line it promises (figures not
judged), and the global trie it times being the one a replica builds."""

import json
import re

import numpy as np
import pytest

from benchmarks.trie_speed import accepted_length, answer_counts, global_trie, stdlib_tokens
from pipeline.commands.cli import main
from trie_store import RequestDrafter, TrieConfig
from trie_store.sharing import InProcessStore, NgramSync, SyncConfig

STATS = ("p50", "p95", "cpu_p50", "cpu_p95")
# JSON key -> (table row, size column, unit), for a 512-token request
TIMINGS = {
    "seed_512_ms": ("seed request trie", "512 tokens", "ms"),
    "draft_16_us": ("draft (request)", "D=16", "us"),
    "draft_64_us": ("draft (request)", "D=64", "us"),
    "observe_us": ("observe 1 token", "", "us"),
    "global_insert_ms": ("global insert", "128 tokens", "ms"),  # an eighth of 1024 unseen
    "draft_16_global_us": ("draft (request + global)", "D=16", "us"),
}
# JSON key -> row of the draft quality table
ACCEPTED = {"accepted_D16": "D=16", "accepted_D64": "D=64", "accepted_D16_global": "D=16 + global"}
SIZES = ("bytes_per_node", "request_bytes_per_token", "load_avg_1m")


def row(lines: list[str], name: str, size: str) -> str:
    """The one table line of operation `name` and size `size`."""
    pattern = re.compile(rf"{re.escape(name)} +{re.escape(size)} .*")
    found = [line for line in lines if pattern.fullmatch(line)]
    assert len(found) == 1, (name, size, lines)
    return found[0]


def test_bench_trie_prints_its_figures_as_a_table_and_a_json_last_line(capsys):
    argv = ["bench-trie", "--repeats", "3", "--steps", "40", "--seed-tokens", "512"]
    assert main([*argv, "--budget", "500"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("trie store benchmark: 512-token request, 40 decode steps")
    figures = json.loads(lines[-1])
    assert set(figures) == {*TIMINGS, *ACCEPTED, *SIZES}
    for key, (name, size, unit) in TIMINGS.items():
        stats = figures[key]
        assert set(stats) == set(STATS)
        assert all(isinstance(stats[s], float) for s in STATS), key
        assert 0 < stats["p50"] <= stats["p95"], key
        assert 0 < stats["cpu_p50"] <= stats["cpu_p95"], key
        cells = re.findall(r"(\d+\.\d)(ms|us)", row(lines, name, size))
        assert [u for _, u in cells] == [unit] * 4, key
        assert [float(v) for v, _ in cells] == pytest.approx([stats[s] for s in STATS], abs=0.051)
    for key, name in ACCEPTED.items():
        accepted = figures[key]
        assert isinstance(accepted, float)
        assert 0 < accepted <= 16, key  # the answer copies the request; at most 16 compared
        nodes, hit, shown, expected = row(lines, name, "").split()[-4:]
        assert 0 < float(nodes) <= (64 if key == "accepted_D64" else 16)
        assert 0 < float(hit.rstrip("%")) <= 100
        assert float(shown) == accepted
        assert float(expected) > 0
    # the trie's own arrays take 28 bytes a node, its index more; a request token at least
    # its 8 bytes in the token stream
    assert isinstance(figures["bytes_per_node"], float)
    assert 28 < figures["bytes_per_node"] < 1000
    assert figures["request_bytes_per_token"] > 8
    assert figures["load_avg_1m"] >= 0
    summary = re.fullmatch(
        r"global trie: (\d+) nodes \(budget 500 members\), (.+) bytes/node; "
        r"request trie: (.+) bytes/token",
        lines[-2],
    )
    assert summary is not None, lines[-2]
    nodes = int(summary[1])
    assert 500 <= nodes <= 500 * 13  # 500 distinct windows of at most 13 tokens
    assert float(summary[2]) == figures["bytes_per_node"]
    assert float(summary[3]) == figures["request_bytes_per_token"]


@pytest.mark.parametrize("option", ["repeats", "steps", "seed-tokens", "budget"])
def test_bench_trie_rejects_a_bad_option(option):
    with pytest.raises(SystemExit, match=f"--{option} must be >= 1"):
        main(["bench-trie", f"--{option}", "0"])


def test_workload_is_deterministic_and_acceptance_is_measured_on_the_tree():
    first = stdlib_tokens(300)
    assert np.array_equal(first, stdlib_tokens(300))
    drafter = RequestDrafter([5, 6, 7, 5, 6, 8])
    draft = drafter.draft([5, 6], 4)  # 6 -> 7 and 6 -> 8
    assert accepted_length(draft, [8, 9]) == 1
    assert accepted_length(draft, [9]) == 0


def test_the_timed_global_trie_is_the_one_a_replica_builds():
    config = TrieConfig(branch_length=4)
    answers = np.array_split(stdlib_tokens(800), 4)
    vocab_size = int(np.concatenate(answers).max()) + 1
    counts = answer_counts(answers, config)
    built = global_trie(counts, config, 200, vocab_size)
    assert len(built) < len(global_trie(counts, config, len(counts), vocab_size))  # a cut
    sync = NgramSync(InProcessStore(clock=lambda: 0.0), vocab_size, config, SyncConfig(top_k=200))
    for answer in answers:
        sync.record(answer)
    assert sync.sync_now()
    replica = sync.global_trie()
    assert len(built) == len(replica)
    tokens = np.concatenate(answers).tolist()
    for end in range(1, len(tokens) + 1):
        mine, theirs = built.draft(tokens[:end], 16), replica.draft(tokens[:end], 16)
        assert mine.tokens.tolist() == theirs.tokens.tolist()
        assert mine.parent.tolist() == theirs.parent.tolist()
        assert mine.scores == pytest.approx(theirs.scores)  # no decay: a frozen store clock
