"""Prepacked oneDNN linears compute what nn.Linear computes."""

import copy

import pytest
import torch
from genhelpers import VOCAB, tiny_model
from torch import nn

from generation.attention import NAME as SDPA_GQA
from generation.models import speed_up
from generation.packed_linear import PackedLinear, pack_linear_layers

BF16_PACKS = torch.ops.mkldnn._is_mkldnn_bf16_supported()
NO_BF16 = pytest.mark.skipif(not BF16_PACKS, reason="this CPU has no oneDNN bfloat16 path")


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=NO_BF16)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_computes_what_linear_computes(dtype, bias):
    torch.manual_seed(1)
    linear = nn.Linear(40, 72, bias=bias).to(dtype)
    packed = PackedLinear(linear)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for shape in [(1, 40), (16, 40), (1, 5, 40)]:
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(packed(x), linear(x), **tol)


def test_pack_swaps_every_linear_and_keeps_the_logits():
    stock = tiny_model("llama", dtype=torch.float32)
    packed = copy.deepcopy(stock)
    assert pack_linear_layers(packed) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; head
    assert not any(type(m) is nn.Linear for m in packed.modules())
    ids = torch.randint(0, VOCAB, (1, 30))
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-5)


def test_pack_leaves_float64_models_alone():
    model = tiny_model("llama", dtype=torch.float64)
    assert pack_linear_layers(model) == 0
    assert speed_up(model) == [SDPA_GQA]


def test_bfloat16_models_are_packed_only_where_onednn_has_a_bfloat16_path():
    """Elsewhere the reorder raises: the model must still load, with torch's own linears."""
    model = tiny_model("llama", dtype=torch.bfloat16)
    assert pack_linear_layers(model) == (2 * 7 + 1 if BF16_PACKS else 0)
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.inference_mode():
        assert model(ids).logits.dtype == torch.bfloat16
