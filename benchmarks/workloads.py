"""Traffic that repeats itself, as production traffic does: popular questions asked again, word
for word or rephrased. `bench-warm` replays prompts in rounds of paraphrases and repeats;
`bench-serve` draws questions from a Zipf law over topics, each asked as itself or rephrased."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PARAPHRASES = (
    "Based on the passages above, answer: {q}",
    "{q} Answer from the text.",
    "Question: {q}",
)
ZIPF_S = 1.1  # popularity: the k-th topic is asked ~1 / k^s as often as the first


def paraphrase(text: str, which: int) -> str:
    """The prompt with its last line (the question) rewritten by a template."""
    head, _, question = text.rstrip().rpartition("\n")
    template = PARAPHRASES[which % len(PARAPHRASES)]
    return f"{head}\n{template.format(q=question)}" if head else template.format(q=question)


class ZipfQuestions:
    """Questions drawn at random: a topic by a Zipf law over `topics` (the first the most
    popular), then one of its forms, itself or a paraphrase, uniformly; so popular topics come
    back both word for word and rephrased."""

    def __init__(self, topics: Sequence[str], s: float = ZIPF_S, seed: int = 0) -> None:
        if not topics:
            raise ValueError("a Zipf workload needs at least one topic")
        weights = 1.0 / np.arange(1, len(topics) + 1) ** s
        self.topics, self.p = list(topics), weights / weights.sum()
        self.rng = np.random.default_rng(seed)

    def __call__(self, n: int) -> list[str]:
        """The next `n` questions of the stream."""
        asked = []
        for topic in self.rng.choice(len(self.topics), size=n, p=self.p):
            form = int(self.rng.integers(len(PARAPHRASES) + 1))
            text = self.topics[topic]
            asked.append(text if form == 0 else paraphrase(text, form - 1))
        return asked
