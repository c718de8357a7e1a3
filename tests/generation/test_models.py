"""`models.speed_up`: the verify-pass speed-ups change how the arithmetic is scheduled, never what
it computes."""

import copy

import numpy as np
import pytest
import torch
from genhelpers import VOCAB, cached_row, sequential_logits, tiny_model, tree_logits

from generation.attention import NAME as SDPA_GQA
from generation.models import speed_up
from generation.step_cost import tree_draft


@torch.inference_mode()
@pytest.mark.parametrize("seed", range(3))
def test_float64_tree_logits_equal_sequential_and_stock(seed):
    stock = tiny_model("llama", seed, dtype=torch.float64)
    fast = copy.deepcopy(stock)
    assert speed_up(fast) == [SDPA_GQA]
    rng = np.random.default_rng(seed)
    context = rng.integers(0, VOCAB, 20)
    draft = tree_draft(24, rng, VOCAB)
    tree = tree_logits(fast, cached_row(fast, context), draft)
    reference = tree_logits(stock, cached_row(stock, context), draft)
    torch.testing.assert_close(tree, reference, rtol=0, atol=1e-13)
    torch.testing.assert_close(tree, sequential_logits(stock, context, draft), rtol=0, atol=1e-12)


def test_float32_fast_tree_matches_stock_sequential():
    stock = tiny_model("llama", 5, dtype=torch.float32)
    fast = copy.deepcopy(stock)
    assert speed_up(fast) == ["packed_linear", SDPA_GQA]
    rng = np.random.default_rng(5)
    context = rng.integers(0, VOCAB, 40)
    draft = tree_draft(32, rng, VOCAB)
    tree = tree_logits(fast, cached_row(fast, context), draft)
    torch.testing.assert_close(tree, sequential_logits(stock, context, draft), rtol=0, atol=1e-4)
