"""bench-warm's request stream: originals, then paraphrases and repeats, on random replicas."""

import argparse
import json

import pytest

from benchmarks.warm_service import paraphrase, read_stream, shortened


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
