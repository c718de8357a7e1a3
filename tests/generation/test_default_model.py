"""The real default model (float32): lookahead equals plain greedy on RAG-style prompts."""

import pytest
import torch

from generation import LookaheadConfig, LookaheadGenerator, load_model

PASSAGE = (
    "The Amazon rainforest covers much of the Amazon basin of South America. The basin "
    "encompasses seven million square kilometres, of which five and a half million square "
    "kilometres are covered by the rainforest. The region includes territory belonging to "
    "nine nations: the majority of the forest is contained within Brazil, with 60% of the "
    "rainforest, followed by Peru with 13% and Colombia with 10%."
)
QUESTIONS = [
    "Which country holds most of the Amazon rainforest, and what share?",
    "Summarise the passage in two sentences.",
    "How many square kilometres does the rainforest cover? Quote the passage.",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the real model's GEMMs do use both cores
    yield LookaheadGenerator(load_model(), LookaheadConfig(max_new_tokens=40, draft_size=16))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("question", QUESTIONS)
def test_equals_greedy_on_rag_prompts(engine, question):
    ids = engine.encode(f"Passage: {PASSAGE}\n\nQuestion: {question}")
    x = torch.from_numpy(ids).unsqueeze(0)
    model = engine.lm.model
    reference = model.generate(
        x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=40
    )
    reference = reference[0, len(ids) :].tolist()
    result = engine.generate(ids)
    assert result.token_ids == reference
    text = engine.lm.tokenizer.decode(reference, skip_special_tokens=True)
    assert result.text == text
    assert result.stats.tokens_per_step > 1.0  # the passage is there to be copied
