"""Sampling in a batch: each sequence keeps plain sampling's distribution, and its seed repeats
its answer whoever shares the batch (draft sizes fixed)."""

from dataclasses import replace

import pytest
from genhelpers import drive, fixed_engine, tokens_of
from test_sampling import (
    ALPHA,
    LENGTH,
    N_LOOKAHEAD,
    PROMPT,
    RankDrafter,
    next_token_table,
    plain_sampling,
    same_distribution,
    sharp_model,
)

from generation import LookaheadConfig, SamplingParams
from generation.batch import BatchDecoder

PARAMS = SamplingParams(temperature=0.8, top_k=6, top_p=0.8)


@pytest.fixture(scope="module")
def model():
    return sharp_model()


@pytest.fixture(scope="module")
def table(model):
    return next_token_table(model)


def test_batched_sampling_keeps_the_plain_sampling_distribution(model, table, tokenizer):
    engine = fixed_engine(model, tokenizer)
    arrivals = {}
    for seed in range(N_LOOKAHEAD):  # eight at a time, newcomers joining as others finish
        config = LookaheadConfig(LENGTH, draft_size=8, sampling=replace(PARAMS, seed=seed))
        drafter = RankDrafter(table, likely=seed % 4 != 0)  # mixed batches: hits and misses
        arrivals.setdefault(0, []).append((seed, PROMPT, config, drafter))
    decoder = BatchDecoder(engine, max_batch=8)
    chunks = drive(decoder, arrivals)
    runs = [tuple(tokens_of(chunks[seed])) for seed in range(N_LOOKAHEAD)]
    assert min(same_distribution(plain_sampling(model, PARAMS), runs)) > ALPHA
    assert decoder.stats.mean_batch > 6
    assert decoder.stats.tokens > decoder.stats.sequences  # drafts were accepted


def test_a_seed_repeats_its_answer_whatever_shares_the_batch(model, table, tokenizer):
    engine = fixed_engine(model, tokenizer)
    length = 12

    def arrival(key, seed, likely=True):
        config = LookaheadConfig(length, draft_size=4, sampling=replace(PARAMS, seed=seed))
        return key, PROMPT, config, RankDrafter(table, likely=likely)

    alone = drive(BatchDecoder(engine, max_batch=4), {0: [arrival("x", 7)]})
    crowded = drive(
        BatchDecoder(engine, max_batch=4),
        {
            0: [arrival("a", 1), arrival("b", 2, likely=False)],
            1: [arrival("x", 7)],
            2: [arrival("c", 3), arrival("d", 4)],
        },
    )
    single = engine.generate(PROMPT, arrival("x", 7)[2], RankDrafter(table, likely=True))
    assert tokens_of(alone["x"]) == tokens_of(crowded["x"]) == single.token_ids
    others = {tuple(tokens_of(crowded[k])) for k in "abcd"}
    assert len(others | {tuple(single.token_ids)}) > 2  # the seeds do differ
    assert len(crowded["x"]) < length  # some chunk held several tokens
