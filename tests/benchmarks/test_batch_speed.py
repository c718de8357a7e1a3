"""`lookahead-rag bench-batch` end to end on a tiny saved model: a table, then one JSON line
with every batch size's figures (not judged: speed is the benchmark's, not the test's)."""

import json

import pytest
import torch
import transformers as tf

from generation.models import bundled_dir
from pipeline.commands.cli import main

ROWS = [
    {"question_id": 1, "category": "rag", "turns": ["Passage: the cat sat. Q: where? A: the cat"]},
    {"question_id": 2, "category": "rag", "turns": ["Passage: a dog ran. Q: who ran?"]},
    {"question_id": 3, "category": "translation", "turns": ["Translate: le chat"]},
    {"id": "x", "prompt": "Say the cat sat twice: the cat sat"},
]
PASSAGE = "Passage: " + "The lighthouse keeper logs the tide, the wind and every ship. " * 4
SHARED = [  # two prompts that share more than one prefix-cache block
    {"id": "s1", "prompt": PASSAGE + "Q: what is logged?"},
    {"id": "s2", "prompt": PASSAGE + "Q: who logs it?"},
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A two-layer float64 Llama with the default tokenizer, saved like a real checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tf.AutoTokenizer.from_pretrained(bundled_dir())
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(5)
    tf.AutoModelForCausalLM.from_config(config, dtype=torch.float64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def bench_batch(capsys, *args) -> tuple[list[str], dict]:
    threads = torch.get_num_threads()
    argv = ["bench-batch", *map(str, args), "--threads", "1", "--dtype", "float64"]
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_bench_batch_reports_every_batch_size_and_method(capsys, saved_model, prompts_file):
    lines, report = bench_batch(
        capsys, prompts_file, "--model", saved_model, "--max-new-tokens", 10,
        "--draft-size", 4, "--batch-sizes", "1,3", "--prefill-chunk", 8,
    )  # fmt: skip
    assert set(report["per_batch"]) == {"1", "3"}
    for b, figures in report["per_batch"].items():
        for method in ("sequential", "plain", "lookahead", "padded"):
            assert figures[f"{method}_tok_s"] > 0
            assert figures[f"{method}_seq_tokens_per_step"] >= 1
            assert figures[f"{method}_identity"] == 1.0
            assert figures[f"{method}_ttft_p50_s"] <= figures[f"{method}_ttft_p95_s"]
        assert figures["identity"] == 1.0
        assert 1 <= figures["plain_mean_batch"] <= int(b)
        assert figures["plain_draft_rows_per_step"] == 0
        assert figures["plain_tokens_per_step"] == pytest.approx(figures["plain_mean_batch"])
        assert 0 < figures["lookahead_draft_rows_per_step"] <= 4 * int(b)
        for method in ("plain", "lookahead", "padded"):  # decode passes only: faster than whole
            assert figures[f"{method}_decode_tok_s"] > figures[f"{method}_tok_s"]
        for method in ("plain", "lookahead", "padded"):  # rows refilled: 4 prompts > B
            assert figures[f"{method}_saturated_tok_s"] > 0
        assert figures["lookahead_decode_vs_plain"] == pytest.approx(
            figures["lookahead_decode_tok_s"] / figures["plain_decode_tok_s"], abs=2e-3
        )
    assert report["per_batch"]["3"]["plain_mean_batch"] > 1
    assert report["mismatches"] == []
    assert report["config"]["prompts"] == 4
    assert report["per_batch"]["3"]["prompts_per_row"] == pytest.approx(4 / 3, abs=0.01)
    assert report["config"]["layout"] in ("ragged", "padded")
    assert lines[0].split()[:2] == ["B", "seq"]


def test_bench_batch_counts_prompt_tokens_computed_and_reused(capsys, saved_model, tmp_path):
    path = tmp_path / "shared.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in SHARED) + "\n")
    common = [path, "--model", saved_model, "--max-new-tokens", 3, "--draft-size", 2,
              "--batch-sizes", "1", "--methods", "plain,lookahead"]  # fmt: skip
    cached = bench_batch(capsys, *common)[1]["per_batch"]["1"]
    uncached = bench_batch(capsys, *common, "--prefix-cache-mb", 0)[1]["per_batch"]["1"]
    for method in ("plain", "lookahead"):
        assert cached[f"{method}_prefix_tokens"] >= 32  # the second prompt reused a block
        assert uncached[f"{method}_prefix_tokens"] == 0
        assert (
            cached[f"{method}_prefill_tokens"] + cached[f"{method}_prefix_tokens"]
            == uncached[f"{method}_prefill_tokens"]
        )
        assert cached[f"{method}_identity"] == uncached[f"{method}_identity"] == 1.0


def test_bench_batch_methods_subset_and_bad_options(capsys, saved_model, prompts_file, tmp_path):
    per_prompt = tmp_path / "per_prompt.jsonl"
    _, report = bench_batch(
        capsys, prompts_file, "--model", saved_model, "--max-new-tokens", 4, "--draft-size", 2,
        "--batch-sizes", "2", "--methods", "plain,lookahead", "--categories", "rag",
        "--per-prompt", per_prompt,
    )  # fmt: skip
    rows = [json.loads(line) for line in per_prompt.read_text().splitlines()]
    assert sorted((r["method"], r["id"]) for r in rows) == [
        (m, i) for m in ("lookahead", "plain") for i in ("1", "2")
    ]
    for row in rows:
        assert (row["batch"], row["category"], row["identical"]) == (2, "rag", True)
        assert 1 <= row["tokens"] <= 4
        assert row["steps"] >= 1
        assert row["ttft_s"] >= 0
        assert row["prompt_tokens"] > 0
        if row["method"] == "plain":
            assert row["tokens_per_step"] == 1.0
    figures = report["per_batch"]["2"]
    assert "sequential_tok_s" not in figures
    assert report["config"]["prompts"] == 2  # one wave: no prompt ever waited for a row
    assert "lookahead_saturated_tok_s" not in figures
    assert figures["lookahead_vs_plain"] > 0
    assert report["config"]["categories"] == ["rag"]
    with pytest.raises(SystemExit, match="--batch-sizes"):
        main(["bench-batch", str(prompts_file), "--batch-sizes", "0,2"])
    with pytest.raises(SystemExit, match="--methods"):
        main(["bench-batch", str(prompts_file), "--methods", "beam"])
    with pytest.raises(SystemExit, match="--per-prompt: cannot write"):
        main(["bench-batch", str(prompts_file), "--per-prompt", str(tmp_path / "no" / "f.jsonl")])
    with pytest.raises(SystemExit, match="--prefix-cache-mb"):
        main(["bench-batch", str(prompts_file), "--prefix-cache-mb", "-1"])
