"""`lookahead-rag bench` end to end on a tiny saved model: the table and the JSON last line it
promises (docs/benchmarks.md), figures checked against each other, never against a speed."""

import json
import re

import pytest
from benchhelpers import is_rounded_ratio

from benchmarks.generation_speed import read_prompts
from pipeline.commands.cli import main

# Half a unit of the last digit each figure is rounded to in the JSON.
TOK_S_ERR, RATIO_ERR, PER_STEP_ERR, DRAFT_ERR, RATE_ERR = 0.005, 0.0005, 0.0005, 0.005, 0.00005
LOOKAHEAD_KEYS = {"tokens_per_step", "mean_draft_size", "accepted_per_step", "acceptance_rate"}
GREEDY_VS_PLD_KEYS = {
    f"{name}{cpu}"
    for name in ("speedup_vs_greedy", "speedup_vs_pld", "pld_vs_greedy")
    for cpu in ("", "_cpu")
}


def bench(capsys, *args):
    assert main(["bench", *map(str, args), "--threads", "1", "--dtype", "float64"]) == 0
    return capsys.readouterr().out.strip().splitlines()


def table(lines: list[str]) -> dict[str, dict[str, str]]:
    """Row name -> column title -> cell. Cells are right-aligned two spaces apart, and titles
    have single spaces inside."""
    header, *body = (re.split(r" {2,}", line.strip()) for line in lines)
    return {row[0]: dict(zip(header[1:], row[1:], strict=True)) for row in body}


def check_figures(figures: dict, reference: str = "greedy") -> None:
    """What holds between one row's figures, whatever the speeds."""
    for ratio, num, den in (
        (f"speedup_vs_{reference}", "lookahead", reference),
        ("speedup_vs_pld", "lookahead", "pld"),
        (f"pld_vs_{reference}", "pld", reference),
    ):
        if ratio in figures:
            num_tok_s, den_tok_s = figures[f"{num}_tok_s"], figures[f"{den}_tok_s"]
            assert is_rounded_ratio(
                figures[ratio], num_tok_s, den_tok_s, TOK_S_ERR, TOK_S_ERR, RATIO_ERR
            ), (ratio, figures)
    if "tokens_per_step" in figures:
        # each step emits the draft tokens it accepted and one of the model's own (no EOS here)
        assert figures["tokens_per_step"] == pytest.approx(
            1 + figures["accepted_per_step"], abs=2 * PER_STEP_ERR
        )
        assert is_rounded_ratio(
            figures["acceptance_rate"],
            figures["accepted_per_step"],
            figures["mean_draft_size"],
            PER_STEP_ERR,
            DRAFT_ERR,
            RATE_ERR,
        ), figures


def test_bench_prints_a_table_and_a_json_last_line(capsys, saved_model, prompts_file):
    lines = bench(
        capsys, prompts_file, "--model", saved_model, "--max-new-tokens", 12, "--draft-size", 4
    )
    report = json.loads(lines[-1])
    assert set(report) == {"overall", "per_category", "mismatches", "config"}
    rows = {**report["per_category"], "overall": report["overall"]}
    assert {name: figures["prompts"] for name, figures in rows.items()} == {
        "rag": 2,
        "translation": 1,
        "all": 1,  # a row without a category
        "overall": 4,
    }
    for figures in rows.values():
        assert set(figures) == {
            "prompts",
            *(f"{m}_tok_s" for m in ("greedy", "pld", "lookahead")),
            *GREEDY_VS_PLD_KEYS,
            *LOOKAHEAD_KEYS,
            "identity",
        }
        check_figures(figures)
        assert figures["identity"] == 1.0  # float64: lookahead is greedy, token for token
        assert 0 < figures["mean_draft_size"] <= 4
    assert report["mismatches"] == []
    assert report["config"] == {
        "model": str(saved_model),
        "dtype": "float64",
        "device": "cpu",
        "threads": 1,
        "max_new_tokens": 12,
        "draft_size": 4,
        "prompts": 4,
        "sampling": {
            "temperature": 0.0,
            "top_k": 0,
            "top_p": 1.0,
            "repetition_penalty": 1.0,
            "seed": 0,
        },
    }
    printed = table(lines[:-1])  # no identity note, no mismatch lines under greedy
    assert list(printed) == ["rag", "translation", "all", "overall"]
    for name, cells in printed.items():
        figures = rows[name]
        assert cells["prompts"] == str(figures["prompts"])
        assert cells["lookahead t/s"] == f"{figures['lookahead_tok_s']:.1f}"
        assert cells["la/greedy"] == f"{figures['speedup_vs_greedy']:.2f}x"
        assert cells["tok/step"] == f"{figures['tokens_per_step']:.2f}"
        assert cells["identity"] == "100%"


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
    assert {name: f["prompts"] for name, f in report["per_category"].items()} == {
        "rag": 1,
        "translation": 1,
    }
    overall = report["overall"]
    assert set(overall) == {
        "prompts",
        "greedy_tok_s",
        "lookahead_tok_s",
        "speedup_vs_greedy",
        "speedup_vs_greedy_cpu",
        *LOOKAHEAD_KEYS,
        "identity",
    }
    check_figures(overall)
    assert overall["identity"] == 1.0
    assert report["config"]["prompts"] == 2
    assert "pld t/s" not in table(lines[:-1])["overall"]


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
    overall = report["overall"]
    assert set(overall) == {"prompts", "lookahead_tok_s", *LOOKAHEAD_KEYS}
    # no draft: plain decoding, one token a step
    assert overall["mean_draft_size"] == 0
    assert overall["tokens_per_step"] == 1.0
    assert overall["accepted_per_step"] == 0.0
    assert overall["acceptance_rate"] == 0.0
    assert report["config"]["draft_size"] == 0
    assert list(table(lines[:-1])) == ["translation", "overall"]


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
    assert set(overall) == {
        "prompts",
        "sample_tok_s",
        "lookahead_tok_s",
        "speedup_vs_sample",
        "speedup_vs_sample_cpu",
        *LOOKAHEAD_KEYS,
    }
    check_figures(overall, reference="sample")
    assert overall["mean_draft_size"] <= 4
    assert report["identity"].startswith("not applicable")
    assert lines[-2] == f"identity: {report['identity']}"
    assert report["mismatches"] == []
    assert table(lines[:-2])["overall"]["la/sample"] == f"{overall['speedup_vs_sample']:.2f}x"
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


@pytest.mark.parametrize("ids", ["[]", '["a", 2]', "[-1]", '"some text"'])
def test_a_prompt_row_of_token_ids_must_hold_token_ids(tmp_path, ids):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": "ok", "ids": [5, 6]}\n{"id": "bad", "ids": ' + ids + "}\n")
    with pytest.raises(ValueError, match=r"ids.jsonl:2: .*token ids"):
        read_prompts(path, encode=lambda ids: ids)
