"""`lookahead-rag bench` end to end on a tiny saved model: table, then one JSON line."""

import json

import pytest
import torch
from genhelpers import tiny_model

from benchmarks.generation_speed import read_prompts
from pipeline.cli import main

ROWS = [
    {"question_id": 1, "category": "rag", "turns": ["Passage: the cat sat. Q: where? A: the cat"]},
    {"question_id": 2, "category": "rag", "turns": ["Passage: a dog ran. Q: who ran?"]},
    {"question_id": 3, "category": "translation", "turns": ["Translate: le chat"]},
    {"id": "x", "prompt": "Say the cat sat twice: the cat sat"},
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", seed=5, vocab=len(tokenizer), eos=tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def bench(capsys, *args):
    assert main(["bench", *map(str, args), "--threads", "1", "--dtype", "float64"]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_bench_prints_a_table_and_a_json_last_line(capsys, saved_model, prompts_file):
    lines = bench(
        capsys, prompts_file, "--model", saved_model, "--max-new-tokens", 12, "--draft-size", 4
    )
    report = json.loads(lines[-1])
    assert torch.get_num_threads() == 1
    assert set(report["per_category"]) == {"rag", "translation", "all"}
    assert report["overall"]["prompts"] == 4
    assert report["per_category"]["rag"]["prompts"] == 2
    overall = report["overall"]
    assert overall["identity"] == 1.0
    assert report["mismatches"] == []
    for key in ("speedup_vs_greedy", "speedup_vs_greedy_cpu", "speedup_vs_pld", "tokens_per_step"):
        assert overall[key] > 0
    assert overall["tokens_per_step"] >= 1.0
    assert overall["mean_draft_size"] <= 4
    assert lines[0].split()[:2] == ["category", "prompts"]
    assert any(line.split()[0] == "overall" for line in lines[:-1])


def test_limit_is_round_robin_over_categories_and_methods_subset(capsys, saved_model, prompts_file):
    lines = bench(
        capsys,
        prompts_file,
        "--model",
        saved_model,
        "--max-new-tokens",
        4,
        "--draft-size",
        2,
        "--limit",
        2,
        "--methods",
        "lookahead,greedy",
    )
    report = json.loads(lines[-1])
    assert set(report["per_category"]) == {"rag", "translation"}
    assert "pld_tok_s" not in report["overall"]
    assert report["overall"]["identity"] == 1.0


def test_categories_filter(capsys, saved_model, prompts_file):
    lines = bench(
        capsys,
        prompts_file,
        "--model",
        saved_model,
        "--max-new-tokens",
        3,
        "--draft-size",
        0,
        "--categories",
        "translation",
        "--methods",
        "lookahead",
    )
    report = json.loads(lines[-1])
    assert list(report["per_category"]) == ["translation"]
    assert report["overall"]["mean_draft_size"] == 0


def test_bad_rows_and_methods_are_reported(tmp_path, saved_model, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "category": "rag", "turns": ["ok"]}\n{"turns": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_prompts(bad, encode=lambda text: [1, 2])
    with pytest.raises(SystemExit, match="--methods"):
        main(["bench", str(bad), "--methods", "greedy,beam"])


def test_sampling_bench_compares_with_plain_sampling(capsys, saved_model, prompts_file):
    lines = bench(
        capsys,
        prompts_file,
        "--model",
        saved_model,
        "--max-new-tokens",
        6,
        "--draft-size",
        4,
        "--temperature",
        0.7,
        "--top-p",
        0.9,
        "--seed",
        1,
        "--methods",
        "sample,lookahead",
    )
    report = json.loads(lines[-1])
    overall = report["overall"]
    assert "identity" not in overall
    assert report["identity"].startswith("not applicable")
    assert "identity: not applicable" in "\n".join(lines[:-1])
    assert report["mismatches"] == []
    assert overall["sample_tok_s"] > 0
    assert overall["speedup_vs_sample"] > 0
    assert overall["tokens_per_step"] >= 1.0
    assert overall["accepted_per_step"] >= 0
    assert 0 <= overall["acceptance_rate"] <= 1
    assert overall["mean_draft_size"] <= 4
    assert report["config"]["sampling"] == {
        "temperature": 0.7,
        "top_k": 0,
        "top_p": 0.9,
        "repetition_penalty": 1.0,
        "seed": 1,
    }


def test_sampling_options_are_checked(prompts_file):
    with pytest.raises(SystemExit, match="temperature"):
        main(["bench", str(prompts_file), "--temperature", "-1"])
    with pytest.raises(SystemExit, match="--methods"):
        main(["bench", str(prompts_file), "--temperature", "0.7", "--methods", "greedy"])
