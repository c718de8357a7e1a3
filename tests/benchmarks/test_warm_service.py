"""`lookahead-rag bench-warm`: its request stream (originals, then paraphrases and repeats, on
random replicas), and the command end to end on a tiny saved model with its private Redis."""

import argparse
import json
import re

import psutil
import pytest
from benchhelpers import is_rounded_ratio

from benchmarks.warm_service import KINDS, MODES, read_stream, shortened
from benchmarks.workloads import paraphrase
from pipeline.commands.cli import main

FIGURES = ("tokens_per_step", "tokens_per_s", "speedup_vs_plain", "identity", "sync_ms_per_request")
TRAFFIC = {"round_trips", "script_calls", "commands_executed", "bytes_in", "bytes_out"}
SETTINGS = {"requests", "replicas", "draft_size", "max_new_tokens"}
TOK_S_ERR, RATIO_ERR = 0.005, 0.0005  # half the last digit of tokens_per_s, speedup_vs_plain


def test_the_stream_repeats_and_paraphrases_each_prompt(tmp_path):
    rows = [
        {"question_id": i, "category": "rag", "turns": [f"passage {i} " * 50 + f"\nQ{i}?"]}
        for i in range(3)
    ]
    rows.append({"id": "x", "category": "summarization", "prompt": "text\nSummarise."})
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    args = argparse.Namespace(limit=2, rounds=4, replicas=2, seed=1, max_prompt_chars=60)
    stream = read_stream(path, {"rag"}, args)
    kinds = ["original", "paraphrase", "repeat", "paraphrase"]
    assert [r.kind for r in stream] == [kind for kind in kinds for _ in range(2)]
    assert stream[4].prompt == stream[0].prompt  # a repeat is the very prompt
    assert stream[2].prompt != stream[0].prompt
    assert stream[2].prompt.endswith("\nQ0? Answer from the text.")
    assert all(len(r.prompt) <= 60 + 40 for r in stream)  # passages cut, question kept
    assert {r.replica for r in stream} <= {0, 1}
    with pytest.raises(SystemExit, match="no prompts"):
        read_stream(path, {"translation"}, args)


def test_shortening_and_paraphrasing_keep_the_question():
    assert shortened("abcdef\nWhy?", 7) == "def\nWhy?"
    assert shortened("abcdef\nWhy?", 2) == "Why?"
    assert paraphrase("passages\nWhy?", 2) == "passages\nQuestion: Why?"
    assert paraphrase("Why?", 0) == "Based on the passages above, answer: Why?"


def redis_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.name() == "redis-server"}


def test_bench_warm_reports_every_mode_and_stops_its_redis(capsys, saved_model, prompts_file):
    before = redis_children()
    argv = ["bench-warm", str(prompts_file), "--model", str(saved_model), "--dtype", "float64"]
    options = "--limit 2 --rounds 3 --max-new-tokens 8 --replicas 2 --draft-size 4 --threads 1"
    assert main([*argv, *options.split()]) == 0
    assert redis_children() == before  # the private redis-server it started is gone
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == {*SETTINGS, "overall", *KINDS, "redis_per_request"}
    assert (result["requests"], result["replicas"]) == (6, 2)
    assert (result["draft_size"], result["max_new_tokens"]) == (4, 8)
    assert lines[0] == (
        f"6 requests (3 rounds of 2), 2 replicas, model {saved_model}, D=4, "
        "8 new tokens max, torch threads 1"
    )
    progress = [re.match(r" +request \d/6 \((\w+), replica [01]\)", line) for line in lines[1:7]]
    assert [m[1] for m in progress] == [kind for kind in KINDS for _ in range(2)]

    for part in ("overall", *KINDS):
        assert list(result[part]) == list(MODES)
        plain = result[part]["plain"]
        assert plain["tokens_per_step"] == 1.0  # draft size 0: one token a step
        for figures in result[part].values():
            assert set(figures) == set(FIGURES)
            assert figures["identity"] == 1.0  # lookahead is lossless in every mode
            assert is_rounded_ratio(
                figures["speedup_vs_plain"],
                figures["tokens_per_s"],
                plain["tokens_per_s"],
                TOK_S_ERR,
                TOK_S_ERR,
                RATIO_ERR,
            ), (part, figures)
        title = "all requests" if part == "overall" else f"{part} requests"
        at = lines.index(title)
        assert lines[at + 1].split() == ["mode", *FIGURES]
        rows = [line.split() for line in lines[at + 2 : at + 2 + len(MODES)]]
        assert rows == [[m, *(str(f) for f in result[part][m].values())] for m in MODES]
    # a repeat's answer is in the shared store by then: drafts from it are accepted
    assert result["repeat"]["shared"]["tokens_per_step"] > 1

    traffic = result["redis_per_request"]
    assert set(traffic) == TRAFFIC
    assert 0 < traffic["script_calls"] <= traffic["round_trips"] <= traffic["commands_executed"]
    assert min(traffic["bytes_in"], traffic["bytes_out"]) > 0
    assert lines[-2] == (
        "Redis per answered request (shared mode, server INFO): "
        f"{traffic['round_trips']} round trips ({traffic['script_calls']} script calls), "
        f"{traffic['commands_executed']} commands executed, {traffic['bytes_in']:.0f} bytes in, "
        f"{traffic['bytes_out']:.0f} bytes out"
    )
