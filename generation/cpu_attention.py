"""The engine's CPU attention kernel for decode and verify blocks (`csrc/decode_attention.cpp`).

torch's CPU flash kernel reads a row's cache at a fraction of memory speed for the few query
tokens a decode or verify pass has (docs/perf-notes.md, "A decode attention kernel"); this one
streams each row's keys and values once per key/value head, and gives every query the same
result whatever else is in the call, so a token's attention is the same in a plain step, a
verify tree and a padded batch.

Built from source with the machine's compiler on first use (`torch.utils.cpp_extension`,
`-O3 -march=native`, about 30 s), kept under the cache directory per CPU and torch version, and
loaded from there after. Where it cannot be built (no compiler) or `LOOKAHEAD_RAG_CPU_KERNEL=0`
asks, `attention.py` stays on torch's sdpa: the same answers up to float rounding, slower.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from generation.defaults import cache_dir

SOURCE = Path(__file__).with_name("csrc") / "decode_attention.cpp"
MAX_QUERIES = 16  # query tokens a row; longer blocks (prefill chunks) stay on torch's kernel
HEAD_DIMS = (64, 128)
DTYPES = (torch.float32, torch.bfloat16)
ENV = "LOOKAHEAD_RAG_CPU_KERNEL"  # "0" keeps torch's sdpa

log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, ModuleType | None] = {}


def _cpu_signature() -> str:
    """What a `-march=native` build depends on: the CPU's flags (a build is not moved to a
    CPU that lacks them), the compiler's target and torch."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {flags} torch {torch.__version__}"


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load_inline

    if shutil.which("ninja") is None:  # torch runs `ninja`: the pip package's, if not on PATH
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])

    source = SOURCE.read_text()
    digest = hashlib.sha256((source + _cpu_signature()).encode()).hexdigest()[:16]
    name = f"lookahead_rag_attention_{digest}"
    build_dir = cache_dir() / "kernels" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    return load_inline(
        name,
        cpp_sources=[source],
        functions=["decode_attention", "ragged_attention"],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],  # torch's own libgomp.so.1, already loaded: one thread pool
        build_directory=str(build_dir),
        verbose=False,
    )


def kernel() -> ModuleType | None:
    """The built kernel, built on the first call; None where it is turned off or cannot be
    built (said once in the log)."""
    if "module" in _state:
        return _state["module"]
    with _lock:
        if "module" not in _state:
            module = None
            if os.environ.get(ENV, "1") != "0":
                try:
                    module = _build()
                except Exception as exc:  # no compiler, no headers: torch's sdpa does the work
                    log.warning("CPU attention kernel not built (%s); using torch's sdpa", exc)
            _state["module"] = module
    return _state["module"]


def serves(model: torch.nn.Module) -> bool:
    """Whether the model's decode attention can run on the kernel (its device, dtype, head size)."""
    config = model.config.get_text_config(decoder=True)
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return model.device.type == "cpu" and model.dtype in DTYPES and dim in HEAD_DIMS


def fits(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> bool:
    """Whether the kernel computes this call: CPU, float32/bfloat16, a decode-sized block, a
    supported head size, the head dimension contiguous, and an additive mask shared by the
    heads (none only for a single token: several unmasked tokens mean causal to torch)."""
    b, heads, q, dim = query.shape
    if not (
        query.device.type == "cpu"
        and query.dtype in DTYPES
        and key.dtype == value.dtype == query.dtype
        and q <= MAX_QUERIES
        and dim in HEAD_DIMS
        and key.shape[0] == b
        and heads % key.shape[1] == 0
        and key.shape[2] > 0
        and query.stride(3) == key.stride(3) == value.stride(3) == 1
    ):
        return False
    if mask is None:
        return q == 1
    return (
        mask.dtype == query.dtype
        and mask.dim() == 4
        and mask.shape[0] in (1, b)
        and mask.shape[1] == 1
        and mask.shape[2] in (1, q)
        and mask.shape[3] >= key.shape[2]
        and mask.stride(3) == 1
    )


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor | None:
    """`query [b, heads, q, d]` over `key/value [b, kv_heads, L, d]` with an additive mask
    `[b or 1, 1, q or 1, >= L]` -> `[b, heads, q, d]` (stored as `[b, q, heads, d]`); None when
    the kernel does not take the call (`fits`) or is not available."""
    if not fits(query, key, value, mask):
        return None
    module = kernel()
    if module is None:
        return None
    return module.decode_attention(query, key, value, mask, _scale(query, scaling))


def takes_ragged(model: torch.nn.Module, sizes: np.ndarray) -> bool:
    """Whether a ragged pass of trees of `sizes` runs its attention on the kernel, in one call."""
    return int(sizes.max()) <= MAX_QUERIES and serves(model) and kernel() is not None


def ragged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    offsets: np.ndarray,
    sizes: np.ndarray,
    scaling: float | None,
) -> torch.Tensor:
    """A ragged pass in one call (`takes_ragged` said yes): `query [1, heads, N, d]`, row `i`'s
    `sizes[i]` tokens from `offsets[i]`, over `key/value [b, kv_heads, L, d]`, token `t` of row
    `i` masked by `mask[i, 0, t]` -> `[N, heads, d]`."""
    return kernel().ragged_attention(
        query, key, value, mask, offsets.tolist(), sizes.tolist(), _scale(query, scaling)
    )


def _scale(query: torch.Tensor, scaling: float | None) -> float:
    """sdpa's default: one over the square root of the head size."""
    return query.shape[3] ** -0.5 if scaling is None else scaling
