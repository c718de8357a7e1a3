"""`dtype="auto"`: bfloat16 where the device computes it in hardware (asked at load, never assumed
from the device type), float32 elsewhere; an explicit dtype wins; the KV cache, the load-time
tree-attention probe and the step-cost cache follow the dtype the model runs in."""

import contextlib

import numpy as np
import pytest
import torch
from genhelpers import tiny_model

from generation.engine import LookaheadConfig, LookaheadGenerator
from generation.kv_cache import BatchKVCache
from generation.models import auto_dtype, load_model
from generation.step_cost import curve_path
from generation.verify import Block, forward_blocks

CPU_FLAGS = ("avx512_bf16", "amx_tile")


def cpu_with(monkeypatch, *flags: str) -> None:
    """A CPU whose cpuinfo flags (as torch reads them) hold `flags` of `CPU_FLAGS`."""
    for name in CPU_FLAGS:
        monkeypatch.setattr(torch.cpu, f"_is_{name}_supported", lambda has=name in flags: has)


@pytest.mark.parametrize(
    ("flags", "want"),
    [((), "float32"), (("avx512_bf16",), "bfloat16"), (("amx_tile",), "bfloat16")],
)
def test_a_cpu_gets_bfloat16_only_with_bfloat16_instructions(monkeypatch, flags, want):
    cpu_with(monkeypatch, *flags)
    assert auto_dtype("cpu") == want


def test_a_torch_without_onednn_stays_float32(monkeypatch):
    cpu_with(monkeypatch, "avx512_bf16", "amx_tile")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert auto_dtype("cpu") == "float32"


@pytest.mark.parametrize(("native", "want"), [(True, "bfloat16"), (False, "float32")])
def test_a_gpu_gets_bfloat16_only_where_it_computes_it_natively(monkeypatch, native, want):
    """A GPU that would emulate bfloat16 (before Ampere) gets float32, on the device asked for."""
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return True if including_emulation else native

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(
        torch.cuda, "device", lambda device: asked.append(device) or contextlib.nullcontext()
    )
    assert auto_dtype("cuda:1") == want
    assert asked == [torch.device("cuda:1")]


def test_no_gpu_and_other_devices_get_float32(monkeypatch):
    cpu_with(monkeypatch, "amx_tile")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_dtype("cuda") == "float32"
    assert auto_dtype("meta") == "float32"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer) -> str:
    """A tiny float32 Llama saved with the default tokenizer, as a checkpoint on disk is."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", seed=3, dtype=torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_auto_loads_bfloat16_on_a_bfloat16_cpu_and_everything_follows(monkeypatch, saved):
    cpu_with(monkeypatch, "amx_tile")
    lm = load_model(saved)
    assert (lm.dtype, lm.dtype_name) == (torch.bfloat16, "bfloat16")
    engine = LookaheadGenerator(lm, LookaheadConfig(max_new_tokens=6, draft_size=4))  # probe
    assert len(engine.generate(np.arange(1, 9)).token_ids) == 6
    cache = BatchKVCache(lm.model, 1)
    forward_blocks(lm.model, cache, slice(0, 1), [Block.chain(np.arange(1, 6))])
    assert {layer.keys.dtype for layer in cache.layers} == {torch.bfloat16}
    float32 = load_model(saved, dtype="float32")
    assert curve_path(lm, 1) != curve_path(float32, 1)  # step costs are measured per dtype


def test_an_explicit_dtype_wins_and_auto_stays_float32_without_bfloat16(monkeypatch, saved):
    cpu_with(monkeypatch, "avx512_bf16")
    assert load_model(saved, dtype="float64").dtype == torch.float64
    cpu_with(monkeypatch)
    assert load_model(saved, dtype="auto").dtype == torch.float32
