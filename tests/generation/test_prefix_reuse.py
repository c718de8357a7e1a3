"""The decoder's prefix reuse: a prompt that starts with tokens an earlier request computed takes
their KV from the prefix cache and prefills only the rest, with the answer and the KV it would
have without (float64, several architectures); admission prefers cache hits without starving."""

import time

import numpy as np
import pytest
import torch
from genhelpers import (
    ARCHITECTURES,
    VOCAB,
    cheap_costs,
    drive,
    fixed_engine,
    greedy,
    reference_cache,
    tiny_model,
    tokens_of,
)

from generation import BatchDecoder, LookaheadConfig
from generation.prefix_cache import BLOCK, PrefixCache

MAX_NEW = 12
MiB = 1 << 20


def shared_prompts(seed: int, n: int) -> list[np.ndarray]:
    """`n` prompts sharing a 2.5-block instruction, then their own question."""
    rng = np.random.default_rng(seed)
    instruction = rng.integers(0, VOCAB, int(2.5 * BLOCK))
    return [np.concatenate([instruction, rng.integers(0, VOCAB, 9 + i)]) for i in range(n)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_reused_prefix_gives_the_answer_and_the_kv_of_a_full_prefill(arch, tokenizer):
    model = tiny_model(arch, seed=5)
    engine = fixed_engine(model, tokenizer, arch)
    prompts = shared_prompts(ARCHITECTURES.index(arch), 3)
    decoder = BatchDecoder(engine.lm, 2, cheap_costs(), 16, engine.ragged, PrefixCache(64 * MiB))
    config = LookaheadConfig(MAX_NEW, draft_size=4)
    first = drive(engine, decoder, {0: [(0, prompts[0], config, None)]})[0]
    assert first[-1].stats.prefix_tokens == 0  # nothing cached yet
    assert decoder.prefix_cache.stats.blocks == 2  # its prompt's whole blocks, now shared
    later = drive(engine, decoder, {0: [(i, p, config, None) for i, p in enumerate(prompts[1:])]})
    for i, prompt in enumerate(prompts[1:]):
        assert later[i][-1].stats.prefix_tokens == 2 * BLOCK
        assert tokens_of(later[i]) == greedy(model, prompt, MAX_NEW).tolist()
    assert decoder.prefix_cache.stats.hits == 4 * BLOCK

    # the KV a reused prefix leaves in a row is what a full prefill computes
    decoder.add(engine.request(prompts[2], config))
    decoder.step()  # admitted, prefilled whole (nobody else decoding), one decode step
    row = len(prompts[2]) - 1
    assert decoder.cache.lengths[0] > row
    want = reference_cache(model, prompts[2][:-1])
    keys, values = decoder.cache.row_kv(0, row)
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        torch.testing.assert_close(k[:, :row], want.layers[layer].keys[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(v[:, :row], want.layers[layer].values[0], rtol=0, atol=1e-12)


def test_a_request_can_opt_out_and_a_tiny_cache_stays_within_its_bytes(tokenizer):
    model = tiny_model("llama", seed=1)
    engine = fixed_engine(model, tokenizer)
    prompts = shared_prompts(1, 3)
    decoder = BatchDecoder(engine.lm, 1, cheap_costs(), 16, engine.ragged, PrefixCache(MiB))
    off = LookaheadConfig(MAX_NEW, draft_size=4, reuse_prefix=False)
    chunks = drive(engine, decoder, {0: [(0, prompts[0], off, None)]})[0]
    assert chunks[-1].stats.prefix_tokens == 0
    assert decoder.prefix_cache.stats.queries == 0  # not looked up, not stored
    assert len(decoder.prefix_cache) == 0
    one_block = 2 * 2 * 2 * BLOCK * 12 * 8  # layers x (k, v) x kv heads x tokens x dim x float64
    small = BatchDecoder(engine.lm, 1, cheap_costs(), 16, engine.ragged, PrefixCache(one_block))
    on = LookaheadConfig(MAX_NEW, draft_size=4)
    for i, prompt in enumerate(prompts):
        chunks = drive(engine, small, {0: [(i, prompt, on, None)]})[i]
        assert tokens_of(chunks) == greedy(model, prompt, MAX_NEW).tolist()
    assert small.prefix_cache.stats.bytes <= one_block
    assert small.prefix_cache.stats.hits == 2 * BLOCK  # the first block, twice


def waited_as_if(decoder: BatchDecoder, waited: dict[int, float]) -> None:
    """Every waiting sequence as if it had waited `waited[handle]` seconds (else none), so the
    order tested never depends on how fast the machine ran between the adds."""
    now = time.perf_counter()
    for sequence in decoder._waiting:
        sequence.queued_at = now - waited.get(sequence.handle, 0.0)


def test_admission_prefers_cached_prefixes_but_ages_the_others(tokenizer, monkeypatch):
    model = tiny_model("qwen2", seed=2)
    engine = fixed_engine(model, tokenizer)
    decoder = BatchDecoder(engine.lm, 1, cheap_costs(), 16, engine.ragged, PrefixCache(64 * MiB))
    config = LookaheadConfig(4, draft_size=0)
    shared = shared_prompts(2, 3)
    other = np.random.default_rng(9).integers(0, VOCAB, 90)
    drive(engine, decoder, {0: [(0, shared[0], config, None)]})
    cold = decoder.add(engine.request(other, config))
    warm = decoder.add(engine.request(shared[1], config))
    waited_as_if(decoder, {})  # arrived together
    decoder.step()
    assert decoder.row_of(warm) == 0  # the cache hit went first, though it came second
    assert decoder.stats_of(cold).queue_s == 0  # still waiting
    while decoder.busy:
        decoder.step()
    # a request that has waited long enough goes before a newer cache hit
    cold = decoder.add(engine.request(other[::-1].copy(), config))
    warm = decoder.add(engine.request(shared[2], config))
    waited_as_if(decoder, {cold: 10.0})
    decoder.step()
    assert decoder.row_of(cold) == 0
