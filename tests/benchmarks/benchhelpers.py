"""What the benchmark commands' tests share: a prompt file's rows and the check that a reported
ratio is the ratio of the figures reported beside it."""

from __future__ import annotations

# RAG prompts end with the question on their last line (bench-warm paraphrases that line).
PROMPTS = [
    {
        "question_id": 1,
        "category": "rag",
        "turns": ["Passage: the cat sat on the mat.\nQ: where did the cat sit?"],
    },
    {"question_id": 2, "category": "rag", "turns": ["Passage: a dog ran home.\nQ: who ran?"]},
    {"question_id": 3, "category": "translation", "turns": ["Translate: le chat"]},
    {"id": "x", "prompt": "Say the cat sat twice: the cat sat"},
]


def is_rounded_ratio(
    ratio: float, num: float, den: float, num_err: float, den_err: float, ratio_err: float
) -> bool:
    """Whether `ratio`, rounded to within `ratio_err`, can be the ratio of two values that were
    printed as `num` and `den`, each rounded to within its own error: a benchmark divides before
    it rounds, so an exact comparison of the printed figures would fail by rounding alone."""
    low = (num - num_err) / (den + den_err) - ratio_err
    high = (num + num_err) / (den - den_err) + ratio_err
    return low <= ratio <= high
