"""`lookahead-rag serve` refuses what its replicas could not use before it starts Ray (a missing
or corrupt index, a missing API key file), each in its own words; only the default index
location is ever built on its own."""

from __future__ import annotations

import shutil

import pytest

from pipeline import ray_runtime
from pipeline.commands.cli import main
from retrieval.versions import resolve


@pytest.fixture
def no_ray(monkeypatch):
    """`serve` must fail before it starts (or joins) Ray at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("serve started Ray")

    monkeypatch.setattr(ray_runtime, "running", refuse)


def _serve(capsys, *argv: str) -> tuple[int, str]:
    code = main(["serve", "--port", "1", *argv])
    return code, capsys.readouterr().err


def test_a_mistyped_index_path_is_an_error_that_says_how_to_build_one(tmp_path, capsys, no_ray):
    typo = tmp_path / "typo_idx"
    code, err = _serve(capsys, "--index", str(typo))
    assert code == 1
    assert f"no index at {typo}: build it with `lookahead-rag index --corpus stdlib" in err
    assert not typo.exists()  # nothing was built there


def test_a_corrupt_index_fails_at_once_with_the_real_reason(
    tmp_path, capsys, no_ray, small_index_dir
):
    copy = tmp_path / "idx"
    shutil.copytree(small_index_dir, copy)
    corrupt = resolve(copy)[1]  # the current version's directory
    faiss_file = corrupt / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    code, err = _serve(capsys, "--index", str(copy))
    assert code == 1
    assert f"error: {faiss_file} is corrupt: its SHA-256 differs from the manifest's" in err
    (corrupt / "manifest.json").write_text("{}")
    code, err = _serve(capsys, "--index", str(copy))
    assert code == 1
    assert f"error: {corrupt / 'manifest.json'} is corrupt: Field required" in err


def test_a_missing_api_key_file_fails_before_ray(
    tmp_path, capsys, no_ray, small_index_dir, app_environment
):
    missing = tmp_path / "keys"
    app_environment({"LOOKAHEAD_RAG__SERVER__API_KEY_FILE": str(missing)})
    code, err = _serve(capsys, "--index", str(small_index_dir))
    assert code == 1
    assert str(missing) in err
