"""Batched lookahead: every sequence's tokens equal its own plain greedy decoding (float64),
whoever shares the batch with it, joins or leaves."""

import numpy as np
import pytest
from genhelpers import (
    ARCHITECTURES,
    VOCAB,
    OracleDrafter,
    PromptLookupDrafter,
    cheap_costs,
    drive,
    eos_model,
    first_stop,
    fixed_engine,
    greedy,
    tiny_model,
    tokens_of,
)

from generation import BatchDecoder, LookaheadConfig
from generation.attention import use_sdpa_gqa

MAX_NEW = 30
DRAFT_SIZES = (0, 4, "auto", 16)


def prompts(seed: int) -> list[np.ndarray]:
    """Different lengths; some repeat themselves, so lookups hit."""
    rng = np.random.default_rng(seed)
    plain = [rng.integers(0, VOCAB, n) for n in (1, 7, 33)]
    looped = [np.tile(rng.integers(0, VOCAB, n), reps) for n, reps in ((5, 6), (12, 3), (3, 4))]
    return plain + looped


# Both layouts over the architectures: ragged where the service runs it (the engine's
# attention), padded on gpt2 as transformers ships it and on mistral, whose sliding window the
# probe refuses to flatten.
LAYOUTS = {"llama": "ragged", "qwen2": "ragged", "mistral": "ragged", "gpt2": "padded"}


@pytest.fixture(scope="module", params=list(LAYOUTS.items()), ids=lambda p: "-".join(p))
def case(request, tokenizer):
    arch, layout = request.param
    model = tiny_model(arch, seed=ARCHITECTURES.index(arch))
    cases = [(p, greedy(model, p, MAX_NEW)) for p in prompts(seed=len(arch))]
    if layout == "ragged":
        assert use_sdpa_gqa(model)
    engine = fixed_engine(model, tokenizer, arch)
    # the probe refuses the ragged pass only where attention has a sliding window it can't model
    assert engine.ragged == (layout == "ragged" and arch != "mistral")
    return model, engine, cases


def test_sequences_joining_and_leaving_equal_their_own_greedy(case):
    _, engine, cases = case
    decoder = BatchDecoder(engine.lm, 3, cheap_costs(), prefill_chunk=8, ragged=engine.ragged)
    arrivals, drafters = {}, {}
    for i, (prompt, reference) in enumerate(cases):
        drafter = (
            OracleDrafter(np.concatenate([prompt, reference]), seed=i, hit_rate=0.7),
            PromptLookupDrafter(),
            None,  # the default request trie
        )[i % 3]
        drafters[i] = drafter
        config = LookaheadConfig(MAX_NEW, draft_size=DRAFT_SIZES[i % len(DRAFT_SIZES)])
        arrivals.setdefault(0 if i < 3 else 3 * i, []).append((i, prompt, config, drafter))
    chunks = drive(engine, decoder, arrivals)
    for i, (_, reference) in enumerate(cases):
        assert tokens_of(chunks[i]) == reference.tolist()
        assert chunks[i][-1].finish_reason == "length"
        assert all(c.finish_reason is None for c in chunks[i][:-1])
        if drafters[i] is not None:
            assert drafters[i].observed == reference.tolist()
        stats = chunks[i][-1].stats
        if DRAFT_SIZES[i % len(DRAFT_SIZES)] == 0:
            assert stats.draft_sizes == [0] * stats.steps
    assert decoder.stats.mean_batch > 2
    assert decoder.stats.tokens > decoder.stats.sequences  # drafts were accepted
    verified = decoder.stats.draft_rows + decoder.stats.sequences  # every tree's nodes
    if engine.ragged:  # each row paid for its own tree
        assert decoder.stats.rows == verified
    else:  # padded to the longest
        assert decoder.stats.rows > verified
    assert not decoder.busy
    assert decoder.free == 3


def test_eos_stop_strings_and_budget_inside_accepted_chunks(tokenizer):
    for seed, arch in enumerate(ARCHITECTURES):
        prompt = prompts(seed=3)[2]
        model, unstopped, eos = eos_model(arch, seed, prompt, MAX_NEW)
        engine = fixed_engine(model, tokenizer, arch)
        other = prompts(seed=4)[3]
        other_unstopped = greedy(tiny_model(arch, seed), other, MAX_NEW)
        text = tokenizer.decode(other_unstopped, skip_special_tokens=True)
        half = len(text) // 2  # plain letters, from the second half on if it has them
        starts = [*range(half, len(text)), *range(half)]
        stop = next(text[i : i + 2] for i in starts if text[i : i + 2].isalpha())

        def oracle(p, full, seed):
            return OracleDrafter(np.concatenate([p, full]), seed=seed, hit_rate=1.0)

        until_eos = LookaheadConfig(MAX_NEW, draft_size=16)
        stopping = LookaheadConfig(MAX_NEW, stop=(stop,), draft_size=16)
        seven = LookaheadConfig(7, draft_size=16)
        arrivals = {
            0: [
                ("eos", prompt, until_eos, oracle(prompt, unstopped, 1)),
                ("stop", other, stopping, oracle(other, other_unstopped, 2)),
                ("short", other, seven, oracle(other, other_unstopped, 3)),
            ]
        }
        chunks = drive(engine, engine.decoder(3), arrivals)
        assert tokens_of(chunks["eos"]) == greedy(model, prompt, MAX_NEW).tolist()
        assert tokens_of(chunks["eos"])[-1] == eos
        assert chunks["eos"][-1].finish_reason == "eos"
        assert len(chunks["eos"][-1].token_ids) > 1  # the draft ran past the EOS: cut inside
        expected = other_unstopped[: first_stop(tokenizer, other_unstopped, stop)]
        if eos in expected:  # the EOS comes first
            expected = expected[: expected.tolist().index(eos) + 1]
        else:
            assert chunks["stop"][-1].finish_reason == "stop"
            assert chunks["stop"][-1].stats.accepted[-1] >= 1  # inside a multi-token chunk
            assert "".join(c.text for c in chunks["stop"]) == text[: text.index(stop)]
        assert tokens_of(chunks["stop"]) == expected.tolist()
        short = greedy(model, other, 7).tolist()
        assert tokens_of(chunks["short"]) == short
        if len(short) == 7:
            assert chunks["short"][-1].finish_reason == "length"
            assert len(chunks["short"][-1].token_ids) > 1  # the budget ran out inside a chunk


def test_a_cancelled_sequence_frees_its_row_for_a_newcomer(case):
    _, engine, cases = case
    decoder = engine.decoder(2, prefill_chunk=4)
    config = LookaheadConfig(MAX_NEW, draft_size=4)
    (p0, r0), (p1, r1), (p2, r2) = cases[1], cases[3], cases[4]
    rows = []

    def check(decoder, handles, chunks):
        if "late" in handles:
            rows.append(decoder.row_of(handles["late"]))

    arrivals = {
        0: [("a", p0, config, PromptLookupDrafter()), ("b", p1, config, PromptLookupDrafter())],
        3: [("late", p2, config, PromptLookupDrafter())],
    }
    chunks = drive(engine, decoder, arrivals, cancel={3: ["a"]}, check=check)
    assert 0 < len(tokens_of(chunks["a"])) < MAX_NEW
    assert r0.tolist()[: len(tokens_of(chunks["a"]))] == tokens_of(chunks["a"])
    assert tokens_of(chunks["b"]) == r1.tolist()
    assert tokens_of(chunks["late"]) == r2.tolist()
    assert 1 in rows  # the newcomer decoded in the row the cancelled sequence had held
    assert not decoder.cancel(12345)


class FailingDrafter(PromptLookupDrafter):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def draft(self, context, max_nodes):
        self.after -= 1
        if self.after < 0:
            raise RuntimeError("drafter broke")
        return super().draft(context, max_nodes)


def test_a_failing_sequence_fails_alone(case):
    _, engine, cases = case
    config = LookaheadConfig(MAX_NEW, draft_size=4)
    arrivals = {
        0: [
            ("bad", cases[3][0], config, FailingDrafter(after=3)),
            ("good", cases[4][0], config, PromptLookupDrafter()),
        ]
    }
    chunks = drive(engine, engine.decoder(2), arrivals)
    last = chunks["bad"][-1]
    assert last.finish_reason == "error"
    assert isinstance(last.error, RuntimeError)
    assert len(chunks["bad"]) == 4
    assert tokens_of(chunks["good"]) == cases[4][1].tolist()


def test_a_failed_pass_fails_the_sequences_in_it_and_the_queue_goes_on(case, monkeypatch):
    """A model error (say, out of memory) during a decode pass ends the sequences of that pass,
    each with its error; a sequence still queued then decodes its own greedy answer."""
    model, engine, cases = case
    forward, calls = model.forward, []

    def breaks_once_with_two_rows(**kw):
        calls.append(kw["input_ids"].shape)
        if kw["input_ids"].shape[0] == 2 and not any(c[0] == -1 for c in calls):
            calls.append((-1,))
            raise RuntimeError("out of memory")
        return forward(**kw)

    monkeypatch.setattr(model, "forward", breaks_once_with_two_rows)
    config = LookaheadConfig(MAX_NEW, draft_size=4)
    arrivals = {0: [(key, cases[i][0], config, PromptLookupDrafter()) for key, i in
                    (("a", 1), ("b", 2), ("queued", 4))]}  # fmt: skip
    chunks = drive(engine, engine.decoder(2), arrivals)
    for key in "ab":
        assert chunks[key][-1].finish_reason == "error"
        assert str(chunks[key][-1].error) == "out of memory"
    assert tokens_of(chunks["queued"]) == cases[4][1].tolist()


def test_free_counts_rows_not_yet_promised(case):
    _, engine, cases = case
    decoder = engine.decoder(2)
    config = LookaheadConfig(5, draft_size=0)
    assert (decoder.free, decoder.live, decoder.waiting) == (2, 0, 0)
    for expected_free in (1, 0, 0):
        decoder.add(engine.request(cases[1][0], config))
        assert decoder.free == expected_free
    decoder.step()
    assert (decoder.free, decoder.live, decoder.waiting) == (0, 2, 1)
    while decoder.busy:
        decoder.step()
    assert (decoder.free, decoder.live, decoder.waiting) == (2, 0, 0)


def test_a_sequence_drafts_and_accepts_in_a_batch_as_it_does_alone(case):
    # same prompt, same fixed draft size: the same drafts (its own drafter sources), the same
    # acceptance, step for step, whoever else is in the batch
    _, engine, cases = case
    config = LookaheadConfig(MAX_NEW, draft_size=4)
    prompt = cases[4][0]  # one that repeats itself: its drafts hit

    def stats_of(batch: list[np.ndarray]):
        decoder = BatchDecoder(engine.lm, 3, cheap_costs(), prefill_chunk=8, ragged=engine.ragged)
        arrivals = {0: [(i, p, config, None) for i, p in enumerate(batch)]}
        return drive(engine, decoder, arrivals)[0][-1].stats

    alone = stats_of([prompt])
    together = stats_of([prompt, cases[0][0], cases[5][0]])
    assert sum(alone.accepted) > 0
    assert together.accepted == alone.accepted
    assert together.draft_sizes == alone.draft_sizes
