"""The real default model in float32 (whatever `auto` picks on this machine): lookahead equals
plain greedy on RAG-style prompts."""

import numpy as np
import pytest
import torch
from genhelpers import cached_row, drive, tokens_of, tree_logits

from generation import LookaheadConfig, LookaheadGenerator, cpu_attention, load_model
from generation.attention import NAME as SDPA_GQA
from trie_store.draft import Draft

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
    yield LookaheadGenerator(
        load_model(dtype="float32"), LookaheadConfig(max_new_tokens=40, draft_size=16)
    )
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


PROMPTS = [
    "Passage: The Amazon River in South America is the largest river by discharge volume of "
    "water in the world. Question: Which river has the largest discharge?",
    "Summarise in one sentence: The committee met on Tuesday to discuss the budget. After a "
    "long debate, members agreed to raise funding for schools and to cut road maintenance.",
]


@pytest.mark.slow
def test_real_model_float32_greedy_identity():
    """The default model with the speed-ups: generate() gives stock transformers' tokens, and a
    16-node tree holding the greedy answer (among decoys) verifies to those same tokens."""
    fast, stock = load_model(dtype="float32"), load_model(dtype="float32", fast_kernels=False)
    kernel = ("cpu_attention",) if cpu_attention.kernel() is not None else ()
    assert fast.speedups == ("packed_linear", SDPA_GQA, *kernel)
    for text in PROMPTS:
        ids = fast.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        answers = [
            lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=32)[0, ids.shape[1]:].numpy()
            for lm in (fast, stock)
        ]  # fmt: skip
        np.testing.assert_array_equal(answers[0], answers[1])
        full = np.concatenate([ids[0].numpy(), answers[0]])
        cache = cached_row(fast.model, full[: ids.shape[1] - 1], chunk=256)
        n = ids.shape[1] - 1  # cached tokens; full[n] is the root
        while n + 16 <= len(full):
            # the true branch (8 nodes) after a decoy branch, so the path is not contiguous
            decoys = (full[n + 1 : n + 8] + 1) % fast.model.config.vocab_size
            tokens = np.concatenate([[full[n]], decoys, full[n + 1 : n + 9]])
            parent = np.array([-1, *range(0, 7), 0, *range(8, 15)], dtype=np.int32)
            depth = np.array([0, *range(1, 8), *range(1, 9)], dtype=np.int32)
            draft = Draft(tokens.astype(np.int64), parent, depth, np.linspace(1, 0, 16))
            target = tree_logits(fast.model, cache, draft).argmax(-1).numpy()
            np.testing.assert_array_equal(target[[0, *range(8, 15)]], full[n + 1 : n + 9])
            cache.keep([0], [np.array([0, *range(8, 16)])])
            n += 9


BATCH_NEW = 40


def test_a_batch_of_rag_prompts_gives_each_its_greedy_answer():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = LookaheadGenerator(load_model(dtype="float32"), LookaheadConfig(draft_size=0))
        model = engine.lm.model
        prompts = [engine.encode(f"Passage: {PASSAGE}\n\nQuestion: {q}") for q in QUESTIONS]
        references = []
        for ids in prompts:
            x = torch.from_numpy(ids).unsqueeze(0)
            out = model.generate(
                x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=BATCH_NEW
            )
            references.append(out[0, len(ids) :].tolist())
        arrivals = {  # plain, a fixed draft, a larger one; the third joins later
            0: [(i, prompts[i], LookaheadConfig(BATCH_NEW, draft_size=k), None)
                for i, k in ((0, 0), (1, 8))],
            2: [(2, prompts[2], LookaheadConfig(BATCH_NEW, draft_size=16), None)],
        }  # fmt: skip
        decoder = engine.decoder(max_batch=3, prefill_chunk=128)
        chunks = drive(engine, decoder, arrivals)
    finally:
        torch.set_num_threads(threads)
    for i, reference in enumerate(references):
        assert tokens_of(chunks[i]) == reference
        text = engine.lm.tokenizer.decode(reference, skip_special_tokens=True)
        assert "".join(c.text for c in chunks[i]) == text
    assert decoder.stats.tokens > decoder.stats.sequences  # the passage was copied
