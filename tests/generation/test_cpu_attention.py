"""The CPU decode attention kernel: softmax attention to float32 rounding against a float64
reference, for the shapes and masks the engine passes; a query's result the same whatever
else is in the call; the calls it refuses go to torch's sdpa."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from genhelpers import VOCAB, sequential_logits

from generation import cpu_attention
from generation.attention import attend, use_sdpa_gqa
from generation.kv_cache import BatchKVCache
from generation.step_cost import tree_draft
from generation.verify import Block, forward_blocks, prefill_row
from trie_store.draft import Draft

pytestmark = pytest.mark.skipif(
    cpu_attention.kernel() is None, reason="the CPU attention kernel could not be built here"
)

HEADS, KV_HEADS, DIM = 6, 2, 64


def reference(query, key, value, mask):
    """Softmax attention in float64, each query head over its group's key/value head."""
    groups = query.shape[1] // key.shape[1]
    key, value = (t.double().repeat_interleave(groups, 1) for t in (key, value))
    scores = query.double() @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
    if mask is not None:
        scores = scores + mask.double()[..., : key.shape[2]]
    return torch.softmax(scores, dim=-1) @ value


def inputs(rows, q, keys, dtype, generator, capacity=None):
    """Query `[rows, heads, q, d]` as the model makes it (a transposed view) and keys/values as
    views of longer cache buffers, as the engine passes them."""
    query = torch.randn(rows, q, HEADS, DIM, generator=generator).transpose(1, 2).to(dtype)
    buffers = (
        torch.randn(rows, KV_HEADS, capacity or keys + 7, DIM, generator=generator).to(dtype)
        for _ in range(2)
    )
    key, value = (b[:, :, :keys] for b in buffers)
    return query, key, value


def hidden_mask(rows, q, keys, dtype, generator, extra=0):
    """An additive mask with keys hidden at random (key 0 always seen), `extra` keys past the
    call's length."""
    seen = torch.rand(rows, 1, q, keys + extra, generator=generator) < 0.7
    seen[..., 0] = True
    mask = torch.zeros(seen.shape, dtype=dtype)
    return mask.masked_fill_(~seen, torch.finfo(dtype).min)


@pytest.mark.parametrize("keys", [1, 37, 256, 300, 777])  # 256: one span; more: spans merged
@pytest.mark.parametrize("q", [1, 2, 5, 16])
@pytest.mark.parametrize("mask_rows", [3, 1])
def test_float32_equals_float64_softmax_attention(keys, q, mask_rows):
    generator = torch.Generator().manual_seed(keys * 100 + q * 10 + mask_rows)
    query, key, value = inputs(3, q, keys, torch.float32, generator)
    mask = hidden_mask(mask_rows, q, keys, torch.float32, generator, extra=3)
    out = cpu_attention.decode_attention(query, key, value, mask, None)
    assert out is not None
    assert out.shape == query.shape
    torch.testing.assert_close(out.double(), reference(query, key, value, mask), rtol=0, atol=2e-6)
    assert torch.equal(out, attend(query, key, value, mask, None))  # the engine's path takes it


def test_one_token_without_a_mask_sees_every_key():
    generator = torch.Generator().manual_seed(1)
    query, key, value = inputs(2, 1, 300, torch.float32, generator)
    out = cpu_attention.decode_attention(query, key, value, None, None)
    torch.testing.assert_close(out.double(), reference(query, key, value, None), rtol=0, atol=2e-6)


def test_a_mask_shared_by_every_query_token():
    generator = torch.Generator().manual_seed(2)
    query, key, value = inputs(2, 4, 90, torch.float32, generator)
    mask = hidden_mask(2, 1, 90, torch.float32, generator)  # [rows, 1, 1, keys]
    out = cpu_attention.decode_attention(query, key, value, mask, None)
    torch.testing.assert_close(out.double(), reference(query, key, value, mask), rtol=0, atol=2e-6)


def test_bfloat16_within_its_rounding():
    generator = torch.Generator().manual_seed(3)
    query, key, value = inputs(2, 3, 500, torch.bfloat16, generator)
    mask = hidden_mask(2, 3, 500, torch.bfloat16, generator)
    out = cpu_attention.decode_attention(query, key, value, mask, None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), reference(query, key, value, mask), rtol=0, atol=1e-2)


def test_a_query_gets_the_same_result_whatever_else_is_in_the_call():
    """Alone with only the keys it sees, or in a block of several tokens and rows over more
    keys (hidden from it): bit for bit the same output, as a plain step and a verify pass
    need."""
    generator = torch.Generator().manual_seed(4)
    query, key, value = inputs(3, 5, 600, torch.float32, generator, capacity=700)
    mask = torch.zeros(3, 1, 5, 600)
    for row, length in enumerate((600, 410, 513)):
        for token in range(5):  # a chain: token t sees the prefix up to length - 5 + t
            mask[row, 0, token, length - 5 + token + 1 :] = torch.finfo(torch.float32).min
    together = cpu_attention.decode_attention(query, key, value, mask, None)
    for row, length in enumerate((600, 410, 513)):
        for token in range(5):
            seen = length - 5 + token + 1
            alone = cpu_attention.decode_attention(
                query[row : row + 1, :, token : token + 1],
                key[row : row + 1, :, :seen],
                value[row : row + 1, :, :seen],
                None,
                None,
            )
            assert torch.equal(alone[0, :, 0], together[row, :, token])


@pytest.mark.parametrize(
    "case",
    ["prefill-sized", "float64", "bool mask", "per-head mask", "causal without mask", "head dim"],
)
def test_calls_it_does_not_take_go_to_sdpa(case):
    generator = torch.Generator().manual_seed(5)
    q = 17 if case == "prefill-sized" else 2
    dtype = torch.float64 if case == "float64" else torch.float32
    query, key, value = inputs(2, q, 40, dtype, generator)
    mask = hidden_mask(2, q, 40, dtype, generator)
    if case == "bool mask":
        mask = mask == 0
    elif case == "per-head mask":
        mask = mask.expand(2, HEADS, q, 40)
    elif case == "causal without mask":
        mask = None
    elif case == "head dim":
        query, key, value = query[..., :48], key[..., :48], value[..., :48]
    assert not cpu_attention.fits(query, key, value, mask)
    assert cpu_attention.decode_attention(query, key, value, mask, None) is None


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(cpu_attention.ENV, "0")
    monkeypatch.setattr(cpu_attention, "_state", {})
    assert cpu_attention.kernel() is None
    generator = torch.Generator().manual_seed(6)
    query, key, value = inputs(1, 1, 10, torch.float32, generator)
    assert cpu_attention.decode_attention(query, key, value, None, None) is None


def test_a_ragged_call_gives_each_row_what_it_gets_alone():
    """Rows of 3, 1, 5 and 2 tokens flattened into one call, each over its own cache and mask
    rows: bit for bit what each row gets in a call of its own."""
    generator = torch.Generator().manual_seed(7)
    sizes = np.array([3, 1, 5, 2])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat, key, value = inputs(1, int(sizes.sum()), 420, torch.float32, generator)
    key, value = (
        t.expand(4, -1, -1, -1) + torch.arange(4.0)[:, None, None, None] for t in (key, value)
    )
    mask = hidden_mask(4, int(sizes.max()), 420, torch.float32, generator)
    out = cpu_attention.ragged_attention(flat, key, value, mask, offsets, sizes, None)
    assert out.shape == (sizes.sum(), HEADS, DIM)
    for row, (at, n) in enumerate(zip(offsets, sizes, strict=True)):
        alone = cpu_attention.decode_attention(
            flat[:, :, at : at + n], key[row : row + 1], value[row : row + 1],
            mask[row : row + 1, :, :n], None,
        )  # fmt: skip
        assert torch.equal(out[at : at + n], alone[0].transpose(0, 1))
        want = reference(flat[:, :, at : at + n], key[row : row + 1], value[row : row + 1],
                         mask[row : row + 1, :, :n])  # fmt: skip
        torch.testing.assert_close(alone.double(), want, rtol=0, atol=2e-6)


def test_a_row_stops_at_the_last_key_it_sees():
    """Keys past every token's last seen key are never read: NaN there changes nothing."""
    generator = torch.Generator().manual_seed(8)
    query, key, value = inputs(2, 2, 700, torch.float32, generator)
    mask = torch.zeros(2, 1, 2, 700)
    mask[0, :, :, 300:] = torch.finfo(torch.float32).min  # row 0 sees 300 keys, row 1 all
    clean = cpu_attention.decode_attention(query, key, value, mask, None)
    key[0, :, 300:], value[0, :, 300:] = float("nan"), float("nan")
    assert torch.equal(cpu_attention.decode_attention(query, key, value, mask, None), clean)


def test_ragged_verify_pass_on_the_kernel_gives_plain_logits():
    """A float32 model with 64-wide heads: the ragged pass (one kernel call for all rows) gives
    each row the logits of a plain forward over its context and path."""
    model = tiny_kernel_model()
    assert cpu_attention.serves(model)
    rng = np.random.default_rng(9)
    contexts = [rng.integers(0, VOCAB, n) for n in (5, 40, 300, 2)]
    cache = BatchKVCache(model, len(contexts))
    for row, context in enumerate(contexts):
        prefill_row(model, cache, row, context[:-1], 64)
    drafts = []
    for context, size in zip(contexts, (4, 1, 9, 2), strict=True):
        draft = tree_draft(size, rng, VOCAB)
        drafts.append(Draft(np.array([context[-1], *draft.tokens[1:]]), draft.parent,
                            draft.depth, draft.scores))  # fmt: skip
    sizes = np.array([len(d) for d in drafts])
    assert cpu_attention.takes_ragged(model, sizes)
    blocks = [Block.of_draft(d) for d in drafts]
    with torch.inference_mode():
        logits = forward_blocks(model, cache, slice(0, 4), blocks, ragged=True)
        for row, (context, draft) in enumerate(zip(contexts, drafts, strict=True)):
            want = sequential_logits(model, context[:-1], draft)
            torch.testing.assert_close(logits[row], want, rtol=0, atol=1e-4)


def tiny_kernel_model():
    config = tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=192, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=512,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    assert use_sdpa_gqa(model)
    return model
