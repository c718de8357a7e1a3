"""transformers' sdpa attention, minus the key/value copy it makes for a masked GQA block on CPU.

With grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads), a masked
multi-token query (our draft tree) makes transformers' sdpa path `repeat_kv` the whole cache,
copying every layer's keys and values three times per verify pass. On CPU, torch's flash kernel
takes the grouped heads directly (`enable_gqa=True`) with a mask and gives the same result bit
for bit. Everything else (one-token steps, unmasked prefill, other devices) is transformers' own
`sdpa_attention_forward`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_gqa"


def sdpa_gqa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`query [b, heads, q, d]`, `key/value [b, kv_heads, kv, d]` -> `[b, q, heads, d]`, None."""
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if not (
        grouped
        and query.device.type == "cpu"
        and query.shape[2] > 1
        and attention_mask is not None
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        enable_gqa=True,
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_sdpa_gqa(model: PreTrainedModel) -> bool:
    """Switch a model that runs transformers' sdpa attention to this one; False if it does not."""
    if model.config._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return True
