"""A lone request (`LookaheadGenerator.stream` / `generate`: a batch of one) gives transformers'
greedy `generate` output, token for token, in float64, whatever its drafts."""

import numpy as np
import pytest
from genhelpers import (
    ARCHITECTURES,
    VOCAB,
    OracleDrafter,
    PromptLookupDrafter,
    eos_model,
    first_stop,
    fixed_engine,
    greedy,
    tiny_model,
)

from generation import LookaheadConfig

MAX_NEW = 40
DRAFT_SIZES = (0, 1, 4, 16, 64)


def prompts(seed: int) -> list[np.ndarray]:
    """Prompts that don't repeat themselves, and prompts that do (so lookups hit)."""
    rng = np.random.default_rng(seed)
    plain = [rng.integers(0, VOCAB, n) for n in (1, 7, 33)]
    looped = [np.tile(rng.integers(0, VOCAB, n), reps) for n, reps in ((5, 6), (12, 3))]
    return plain + looped


@pytest.fixture(scope="module", params=ARCHITECTURES)
def case(request, tokenizer):
    arch = request.param
    model = tiny_model(arch, seed=ARCHITECTURES.index(arch))
    engine = fixed_engine(model, tokenizer, arch)
    cases = [(p, greedy(model, p, MAX_NEW)) for p in prompts(seed=len(arch))]
    return model, engine, cases


@pytest.mark.parametrize("draft_size", DRAFT_SIZES)
def test_equals_greedy_for_every_draft_size_and_drafter(case, draft_size):
    _, engine, cases = case
    config = LookaheadConfig(max_new_tokens=MAX_NEW, draft_size=draft_size)
    accepted = 0
    for i, (prompt, reference) in enumerate(cases):
        oracle = OracleDrafter(np.concatenate([prompt, reference]), seed=i)
        for drafter in (oracle, PromptLookupDrafter(), None):  # None: the default trie
            result = engine.generate(prompt, config, drafter)
            assert result.token_ids == reference.tolist()
            assert result.finish_reason == "length"
            if drafter is not None:
                assert drafter.observed == result.token_ids
            assert max(result.stats.draft_sizes) <= draft_size
            accepted += sum(result.stats.accepted)
    assert (accepted > 0) == (draft_size > 0)


@pytest.mark.parametrize(("draft_size", "hit_rate"), [(4, 0.7), (16, 1.0), (64, 1.0)])
def test_eos_inside_an_accepted_chunk(tokenizer, draft_size, hit_rate):
    for seed, arch in enumerate(ARCHITECTURES):
        prompt = prompts(seed=3)[2]
        model, unstopped, eos = eos_model(arch, seed, prompt, MAX_NEW)
        reference = greedy(model, prompt, MAX_NEW)
        k = len(reference) - 1
        assert reference[k] == eos  # transformers stops at the new EOS
        engine = fixed_engine(model, tokenizer, arch)
        drafter = OracleDrafter(np.concatenate([prompt, unstopped]), seed=k, hit_rate=hit_rate)
        config = LookaheadConfig(MAX_NEW, draft_size=draft_size)
        chunks = list(engine.stream(prompt, config, drafter))
        assert [t for c in chunks for t in c.token_ids] == reference.tolist()
        assert chunks[-1].finish_reason == "eos"
        if hit_rate == 1.0:  # the draft ran past the EOS: it was cut inside the chunk
            assert len(chunks[-1].token_ids) > 1
            assert chunks[-1].stats.accepted[-1] >= len(chunks[-1].token_ids)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_stop_string_inside_an_accepted_chunk(tokenizer, arch):
    model = tiny_model(arch)
    prompt = prompts(seed=5)[-1]
    unstopped = greedy(model, prompt, MAX_NEW)
    text = tokenizer.decode(unstopped, skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    expected = unstopped[: first_stop(tokenizer, unstopped, stop)]
    transformers_stopped = greedy(model, prompt, MAX_NEW, stop_strings=[stop], tokenizer=tokenizer)
    assert transformers_stopped.tolist() == expected.tolist()

    engine = fixed_engine(model, tokenizer, arch)
    drafter = OracleDrafter(np.concatenate([prompt, unstopped]), seed=1, hit_rate=1.0)
    config = LookaheadConfig(MAX_NEW, stop=(stop,), draft_size=16)
    result = engine.generate(prompt, config, drafter)
    assert result.token_ids == expected.tolist()
    assert result.finish_reason == "stop"
    assert result.text == text[: text.index(stop)]
    assert result.stats.accepted[-1] >= 1  # the stop fell inside a multi-token chunk
