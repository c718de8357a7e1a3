"""The engine's attention: grouped heads folded into rows give what repeating the key/value
heads gives (float64), for every mask shape the engine and transformers pass."""

from __future__ import annotations

import pytest
import torch

from generation.attention import attend

HEADS, KV_HEADS, DIM, KEYS = 6, 2, 8, 11


def reference(query, key, value, mask):
    """transformers' `repeat_kv` path: every query head over its own copy of its group's keys."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def random_mask(shape, generator) -> torch.Tensor:
    """Hidden keys at random, key 0 always seen (no all-hidden softmax row)."""
    seen = torch.rand(shape, generator=generator, dtype=torch.float64) < 0.6
    seen[..., 0] = True
    return seen


@pytest.mark.parametrize("q", [1, 2, 5, 12])  # 12: beyond FOLD_MAX_QUERIES
@pytest.mark.parametrize("mask_rows", [3, 1])  # one mask per row, or one for all rows
@pytest.mark.parametrize("kind", ["float", "bool", "none", "per-head"])
def test_folded_groups_equal_repeated_key_value_heads(q, mask_rows, kind):
    generator = torch.Generator().manual_seed(q * 10 + mask_rows)
    query = torch.randn(3, q, HEADS, DIM, generator=generator, dtype=torch.float64).transpose(1, 2)
    key, value = (
        torch.randn(3, KV_HEADS, KEYS, DIM, generator=generator, dtype=torch.float64)
        for _ in range(2)
    )
    heads = HEADS if kind == "per-head" else 1
    seen = random_mask((mask_rows, heads, q, KEYS), generator)
    mask = {
        "float": torch.zeros(seen.shape, dtype=torch.float64).masked_fill_(~seen, -1e300),
        "bool": seen,
        "none": None,
        "per-head": seen,
    }[kind]
    got = attend(query, key, value, mask, scaling=None)
    assert got.shape == (3, HEADS, q, DIM)
    torch.testing.assert_close(got, reference(query, key, value, mask), rtol=0, atol=1e-12)
