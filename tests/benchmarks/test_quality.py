"""`lookahead-rag bench-quality`: the shipped QA set, the judge of one answer, and the command
end to end on tiny saved models (a chat one and a base one) over the shipped corpus."""

import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

from benchmarks.quality import CORPUS, QA_FILE, judge, read_qa, summarise
from benchmarks.quality_scoring import holds_answer
from pipeline.commands.cli import main
from retrieval import read_corpus


def test_the_shipped_set_has_50_questions_10_unanswerable_each_answer_in_its_document():
    rows = read_qa(QA_FILE)
    docs = {d.id: d.text for d in read_corpus(CORPUS)}
    answerable = [r for r in rows if r.answers]
    assert len(rows) >= 50
    assert len(rows) - len(answerable) >= 10
    for row in answerable:
        assert holds_answer(docs[row.source], list(row.answers)), row.id


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"answers": []}', "question"),
        ('{"question": " ", "answers": []}', "non-blank string"),
        ('{"question": "q?", "answers": "x"}', "list of non-blank strings"),
        ("not json", "bad QA row"),
    ],
)
def test_a_bad_qa_row_is_refused_with_its_line(tmp_path, line, error):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "ok?", "answers": ["a"]}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"qa.jsonl:2: .*{error}"):
        read_qa(path)


def passage(doc_id, text):
    return SimpleNamespace(doc_id=doc_id, text=text, start=0)


def answer(text, passages, tokens=10, steps=4):
    sources = tuple(SimpleNamespace(text=p.text) for p in passages)
    finished = SimpleNamespace(completion_tokens=tokens, stats=SimpleNamespace(steps=steps))
    return SimpleNamespace(text=text, sources=sources, finished=finished)


def test_an_answer_is_judged_against_golds_passages_and_citations():
    row = read_qa(QA_FILE)[0]  # the ferry leaves every forty minutes
    shown = [
        passage("market", "Forty stalls from eight to one."),
        passage("ferry", "It leaves the north pier every forty minutes."),
    ]
    job = SimpleNamespace(passages=shown)
    good = judge(row, job, answer("Every 40 minutes [2], not [1] or [7].", shown))
    assert good.correct
    assert good.retrieval_hit
    assert good.citations == [2, 1]  # [7] names no passage in the prompt
    assert good.supported_citations == 1
    wrong = judge(row, SimpleNamespace(passages=shown[:1]), answer("I don't know.", shown[:1]))
    assert not wrong.correct
    assert not wrong.retrieval_hit  # forty minutes is in the market text, not the ferry's
    assert wrong.abstained
    unanswerable = read_qa(QA_FILE)[-1]
    declined = judge(unanswerable, job, answer("The passages do not say.", shown, 6, 3))
    figures = summarise([good, wrong, declined], [], {"lookahead": 2.0})
    assert figures["accuracy"] == 0.5
    assert figures["retrieval_hit"] == 0.5
    assert figures["citation_precision"] == 0.5
    assert figures["cited_support"] == 0.5
    assert figures["abstention"] == 1.0
    assert figures["false_abstention"] == 0.5
    assert figures["tokens_per_s"] == 13.0  # 26 tokens in 2 s
    assert figures["tokens_per_step"] == round(26 / 11, 3)


@pytest.fixture(scope="module")
def quality_index(tmp_path_factory):
    """The shipped corpus's real index (default embedder, FAISS)."""
    from retrieval import build_index

    out = tmp_path_factory.mktemp("quality") / "index"
    build_index(read_corpus(CORPUS), out=out)
    return out


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, saved_model):
    """The tiny saved model, its tokenizer without a chat template: a base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-base")
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(path)
    AutoModelForCausalLM.from_pretrained(saved_model).save_pretrained(path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return path


def test_bench_quality_reports_every_model_and_stays_lossless(
    capsys, tmp_path, quality_index, saved_model, base_model
):
    rows = read_qa(QA_FILE)
    qa = tmp_path / "qa.jsonl"
    picked = [*rows[:3], *rows[-2:]]
    qa.write_text("".join(json.dumps(asdict(r)) + "\n" for r in picked))
    out = tmp_path / "answers.jsonl"
    threads = torch.get_num_threads()
    try:
        argv = [
            "bench-quality", qa, "--index", quality_index, "--model", f"{saved_model},{base_model}",
            "--max-tokens", 6, "--top-k", 2, "--order", "document", "--max-batch", 2,
            "--dtype", "float64", "--draft-size", 4, "--compare-plain", "--out", out,
        ]  # fmt: skip
        assert main(list(map(str, argv))) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(report["models"]) == [str(saved_model), str(base_model)]
    for figures in report["models"].values():
        assert figures["answerable"] == 3
        assert figures["unanswerable"] == 2
        assert figures["identity"] == 1.0  # float64: lookahead is plain greedy
        assert 0 <= figures["retrieval_hit"] <= 1
        assert figures["tokens_per_s"] > 0
    assert report["config"]["order"] == "document"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 10
    assert {r["id"] for r in records} == {r.id for r in picked}


def test_bench_quality_writes_the_service_prompts_as_a_bench_batch_workload(
    capsys, tmp_path, quality_index, saved_model
):
    from transformers import AutoTokenizer

    from benchmarks.generation_speed import read_prompts

    rows = read_qa(QA_FILE)[:3]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    out = tmp_path / "prompts.jsonl"
    argv = [
        "bench-quality", qa, "--index", quality_index, "--model", saved_model,
        "--top-k", 2, "--dtype", "float64", "--write-prompts", out,
    ]  # fmt: skip
    assert main(list(map(str, argv))) == 0
    assert "3 prompts written" in capsys.readouterr().out
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["id"] for w in written] == [r.id for r in rows]
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    for row, line in zip(rows, written, strict=True):
        assert line["category"] == "rag"
        assert row.question in tokenizer.decode(line["ids"])  # instruction, passages, question
    prompts = read_prompts(out, encode=lambda ids: ids)  # ids are taken as they are
    assert [p.ids.tolist() for p in prompts] == [w["ids"] for w in written]
