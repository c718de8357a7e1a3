"""kv_cache.py, the batch's KV rows: lengths track prompt + emitted tokens, entries equal a fresh
prefill, rows freed by a finished or cancelled sequence carry nothing into the next one."""

import numpy as np
import pytest
import torch
from genhelpers import (
    VOCAB,
    OracleDrafter,
    drive,
    fixed_engine,
    greedy,
    reference_cache,
    tiny_model,
    tokens_of,
    tree,
)

from generation import LookaheadConfig
from generation.kv_cache import BatchKVCache
from generation.verify import Block, forward_blocks, prefill_row


def assert_row_holds(cache: BatchKVCache, row: int, model, ids: np.ndarray) -> None:
    """Row `row`'s real entries are exactly those of transformers' own pass over `ids`."""
    assert cache.lengths[row] == len(ids)
    fresh = reference_cache(model, ids)
    for mine, theirs in zip(cache.layers, fresh.layers, strict=True):
        for got, want in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
            torch.testing.assert_close(got[row, :, : len(ids)], want[0], rtol=0, atol=1e-12)


def test_rows_track_prompt_plus_emitted_and_reused_rows_start_clean(tokenizer):
    model = tiny_model("qwen2")
    engine = fixed_engine(model, tokenizer)
    rng = np.random.default_rng(1)
    lengths, budgets = (15, 40, 3, 22), (60, 12, 50, 40)
    prompts = {key: rng.integers(0, VOCAB, n) for key, n in zip("abcd", lengths, strict=True)}
    budget = dict(zip("abcd", budgets, strict=True))
    references = {k: greedy(model, p, budget[k]) for k, p in prompts.items()}
    checked = []

    def check(decoder, handles, chunks):
        for key, handle in handles.items():
            row = decoder.row_of(handle)
            if row is None:
                continue
            ids = np.concatenate([prompts[key], tokens_of(chunks[key])])
            assert decoder.cache.lengths[row] == len(ids) - 1  # the newest token: next root
            if len(checked) % 5 == 0:
                assert_row_holds(decoder.cache, row, model, ids[:-1])
            checked.append(key)

    def arrival(key, seed):
        full = np.concatenate([prompts[key], references[key]])
        drafter = OracleDrafter(full, seed=seed, hit_rate=0.5)
        return key, prompts[key], LookaheadConfig(budget[key], draft_size=8), drafter

    arrivals = {0: [arrival("a", 0), arrival("b", 1)], 2: [arrival("c", 2)], 20: [arrival("d", 3)]}
    decoder = engine.decoder(max_batch=2, prefill_chunk=16)
    chunks = drive(engine, decoder, arrivals, cancel={12: ["a"]}, check=check)
    for key in "bcd":
        assert tokens_of(chunks[key]) == references[key].tolist()
    assert len(checked) > 40
    assert {"b", "c", "d"} <= set(checked)


def test_keep_moves_non_contiguous_paths_and_growth_keeps_entries():
    model = tiny_model("llama")
    rng = np.random.default_rng(3)
    contexts = [rng.integers(0, VOCAB, n) for n in (9, 2, 300)]  # 300: past the first capacity
    cache = BatchKVCache(model, max_rows=3)
    for row, context in enumerate(contexts):
        prefill_row(model, cache, row, context[:-1], chunk=64)
    truth = [greedy(model, c, 3) for c in contexts]
    drafts = []
    for context, t in zip(contexts, truth, strict=True):
        wrong = (t + 1) % VOCAB
        # decoys first: the accepted nodes 0, 2, 5 are not a prefix of the flattened order
        drafts.append(
            tree([context[-1], wrong[0], t[0], wrong[1], wrong[1], t[1]], [-1, 0, 0, 1, 2, 2])
        )
    drafts[1] = drafts[1].truncate(2)  # padded; accepts nodes 0 and 2
    forward_blocks(model, cache, slice(0, 3), [Block.of_draft(d) for d in drafts])
    cache.keep([0, 1, 2], [np.array([0, 2, 5]), np.array([0, 2]), np.array([0])])
    for row, (context, t, n) in enumerate(zip(contexts, truth, (2, 1, 0), strict=True)):
        assert_row_holds(cache, row, model, np.concatenate([context, t[:n]]))
    cache.move_row(2, 0)
    assert_row_holds(cache, 0, model, contexts[2])
    assert cache.lengths[2] == 0


@pytest.mark.parametrize("bad_rows", [slice(0, 5), slice(2, 2)])
def test_planning_outside_the_rows_is_refused(bad_rows):
    cache = BatchKVCache(tiny_model("gpt2"), max_rows=4)
    with pytest.raises(ValueError, match="rows"):
        cache.plan_forward(bad_rows, 1)
