"""The real default model (float32): a batch of RAG prompts gives each prompt's greedy answer."""

import pytest
import torch
from genhelpers import drive, tokens_of
from test_default_model import PASSAGE, QUESTIONS

from generation import LookaheadConfig, LookaheadGenerator, load_model
from generation.batch import BatchDecoder

pytestmark = pytest.mark.slow
MAX_NEW = 40


def test_a_batch_of_rag_prompts_gives_each_its_greedy_answer():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = LookaheadGenerator(load_model(), LookaheadConfig(draft_size=0))
        model = engine.lm.model
        prompts = [engine.encode(f"Passage: {PASSAGE}\n\nQuestion: {q}") for q in QUESTIONS]
        references = []
        for ids in prompts:
            x = torch.from_numpy(ids).unsqueeze(0)
            out = model.generate(
                x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=MAX_NEW
            )
            references.append(out[0, len(ids) :].tolist())
        arrivals = {  # plain, a fixed draft, a larger one; the third joins later
            0: [(i, prompts[i], LookaheadConfig(MAX_NEW, draft_size=k), None)
                for i, k in ((0, 0), (1, 8))],
            2: [(2, prompts[2], LookaheadConfig(MAX_NEW, draft_size=16), None)],
        }  # fmt: skip
        decoder = BatchDecoder(engine, max_batch=3, prefill_chunk=128)
        chunks = drive(decoder, arrivals)
    finally:
        torch.set_num_threads(threads)
    for i, reference in enumerate(references):
        assert tokens_of(chunks[i]) == reference
        text = engine.lm.tokenizer.decode(reference, skip_special_tokens=True)
        assert "".join(c.text for c in chunks[i]) == text
    assert decoder.stats.tokens > decoder.stats.sequences  # the passage was copied
