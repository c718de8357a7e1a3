"""Linear layers with weights prepacked once for oneDNN, for CPU inference.

torch sends a float32 `nn.Linear` to MKL's sgemm. On the AMD EPYC (AVX-512) of these machines
that runs the decode-shaped GEMMs (1..64 rows against a weight matrix) far below the cores'
peak: all 211 linears of SmolLM2-135M took 59 ms at 1 row and 83 ms at 16 rows on 2 threads.
oneDNN's JIT kernels use AVX-512 here, and a weight packed once into its blocked layout needs
no reorder per call: 37 ms and 43 ms. That is most of the gap between a one-token step and a
16-token verify pass (docs/perf-notes.md). The same kernels serve plain decoding and generate().
"""

from __future__ import annotations

import torch
from torch import nn

# oneDNN has no float64 matmul and no fast float16 path without AVX512-FP16.
PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def _packs(dtype: torch.dtype) -> bool:
    """oneDNN packs bfloat16 weights only on CPUs with AVX-512 (or AVX-NE-CONVERT); elsewhere
    the reorder raises, and a bfloat16 model keeps torch's own linears."""
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype in PACKABLE_DTYPES


class PackedLinear(nn.Module):
    """`nn.Linear` for CPU inference: the weight lives only in oneDNN's packed layout.

    No autograd, no `.to()`: the packed weight is an opaque oneDNN tensor.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # A plain attribute, not a buffer: `model.to()` or `state_dict()` cannot handle it.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def can_pack(model: nn.Module) -> bool:
    """True when this torch has oneDNN and the model is a CPU model of a packable dtype."""
    param = next(model.parameters(), None)
    return (
        param is not None
        and param.device.type == "cpu"
        and _packs(param.dtype)
        and torch.backends.mkldnn.is_available()
    )


@torch.no_grad()
def pack_linear_layers(model: nn.Module) -> int:
    """Swap every plain `nn.Linear` of a CPU model for a `PackedLinear`; returns how many.

    A model it cannot pack (not on CPU, float64/float16, bfloat16 on a CPU without oneDNN's
    bfloat16 path, no oneDNN) is left as it is (0).
    Weights tied to an embedding (`lm_head`) get a packed copy; the embedding keeps its own.
    """
    if not can_pack(model):
        return 0
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    return len(swaps)
