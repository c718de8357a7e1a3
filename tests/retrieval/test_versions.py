"""Index versions with the real embedder and FAISS: changes by document id, the pointer, checks
before publishing, pruning and pins, the writers' lock, and a live index switching versions."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from retrievalhelpers import DOCS, QUESTIONS

from retrieval import (
    BuildConfig,
    Document,
    Embedder,
    IndexFormatError,
    build_index,
    load_index,
    versions,
)
from retrieval.changes import update_index
from retrieval.documents import Changes
from retrieval.errors import ChangeError
from retrieval.index import publish
from retrieval.live import LiveIndex
from retrieval.store import PASSAGES_FILE

TIDES = Document("tides", "Ocean tides are caused mainly by the Moon's gravity.", title="Tides")
TIDES_Q = "Why does the sea rise and fall twice a day?"
EIFFEL_Q = next(q for q, doc in QUESTIONS.items() if doc == "eiffel")
PHOTO_EDIT = Document(
    "photosynthesis",
    "Photosynthesis happens in chloroplasts; its light reactions split water molecules.",
    title="Photosynthesis",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder: Embedder) -> dict[str, Path]:
    """Version 1 of an exact and of an HNSW index: every hand-written document but the last
    (chess), built once; tests change copies."""
    folder = tmp_path_factory.mktemp("built")
    for kind in ("flat", "hnsw"):
        build_index(DOCS[:-1], embedder, BuildConfig(index_type=kind), out=folder / kind)
    return {kind: folder / kind for kind in ("flat", "hnsw")}


@pytest.fixture
def root(built, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built["flat"], tmp_path / "idx"))


class Recorder:
    """An embedding step that counts what it was asked to embed."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder, self.texts = embedder, []

    def __call__(self, texts):
        self.texts += texts
        return self.embedder.embed_passages(texts)


def top_doc(index, question: str) -> str:
    return index.search(question, k=1)[0].doc_id


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_changes_by_id_embed_only_what_changed(built, tmp_path, embedder, index_type) -> None:
    root = Path(shutil.copytree(built[index_type], tmp_path / index_type))
    embed = Recorder(embedder)
    changes = Changes(add=[TIDES, DOCS[1], DOCS[-1]], update=[PHOTO_EDIT], delete=["eiffel"])
    info, applied = update_index(root, changes, embedder, embed=embed)
    assert (info.version, info.parent) == (2, 1)
    assert info.change == versions.Change(added=2, updated=1, deleted=1, unchanged=1)
    assert info.documents == len(DOCS) + 1 - 1  # + tides, chess - eiffel
    # Only the two new documents and the edited one were embedded, each one passage.
    assert len(embed.texts) == 3 == applied.embedded
    assert sum("chloroplasts; its light" in t for t in embed.texts) == 1
    assert (root / versions.POINTER).read_text().strip() == "v000002"
    new, old = load_index(root, embedder), load_index(root, embedder, version=1)
    assert len(new) == info.chunks == new.vector_index.ntotal
    assert top_doc(new, TIDES_Q) == "tides"
    assert "eiffel" not in {p.doc_id for p in new.search(EIFFEL_Q, k=20)}
    photo = [p.text for p in new.passages if p.doc_id == "photosynthesis"]
    assert photo == [PHOTO_EDIT.text]  # every old passage of it is gone
    # Kept rows keep their vectors: a kept document's question still finds it.
    kept = {q: doc for q, doc in QUESTIONS.items() if doc not in ("eiffel", "photosynthesis")}
    found = new.search(list(kept), k=1)
    assert [hits[0].doc_id for hits in found] == list(kept.values())
    # The version it started from is as it was.
    assert top_doc(old, EIFFEL_Q) == "eiffel"
    assert "tides" not in old.doc_shas


def test_a_change_that_changes_nothing_publishes_nothing(root, embedder) -> None:
    info, applied = update_index(root, Changes(add=[DOCS[0]], update=[DOCS[1]]), embedder)
    assert (info.version, applied) == (1, None)
    assert versions.listed(root) == [1]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (Changes(update=[TIDES]), r"1 document\(s\) is not indexed: add it: 'tides'"),
        (Changes(delete=["tides", "nope"]), r"2 document\(s\) is not indexed: 'tides', 'nope'"),
        (Changes(add=[PHOTO_EDIT]), "exists: update it: 'photosynthesis'"),
        (Changes(add=[TIDES], delete=["tides"]), "given more than once: 'tides'"),
        (Changes(add=[Document("blank", " \n")]), "has no text"),
        (Changes(), "no change"),
    ],
)
def test_changes_that_do_not_fit_are_refused(root, embedder, changes, message) -> None:
    with pytest.raises(ChangeError, match=message):
        update_index(root, changes, embedder)
    assert versions.current(root) == 1
    assert versions.listed(root) == [1]


def test_bad_versions_are_never_published(root, embedder, monkeypatch) -> None:
    every = [d.id for d in DOCS[:-1]]
    with pytest.raises(IndexFormatError, match="refusing to publish an empty index"):
        update_index(root, Changes(delete=every), embedder)
    current = load_index(root, embedder)
    other = current.settings.model_copy(update={"embedder": "someone/else"})
    monkeypatch.setattr(current, "settings", other)
    with pytest.raises(IndexFormatError, match="its versions use embedder"):
        publish(current, root, versions.Change(added=1))
    monkeypatch.undo()

    # A version that does not load back whole is removed before the pointer could move.
    def truncate_then_load(path, *args, **kwargs):
        (Path(path) / PASSAGES_FILE).write_bytes(b"PAR1")
        return load_index(path, *args, **kwargs)

    monkeypatch.setattr("retrieval.index.load_index", truncate_then_load)
    with pytest.raises(IndexFormatError, match="truncated or replaced"):
        update_index(root, Changes(add=[TIDES]), embedder)
    assert versions.current(root) == 1
    assert versions.listed(root) == [1]


def test_two_concurrent_changes_both_land(root, embedder) -> None:
    moon = Document("moon", "The Moon orbits the Earth every 27 days.", title="Moon")
    errors = []

    def change(doc):
        try:
            update_index(root, Changes(add=[doc]), embedder)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=change, args=(doc,)) for doc in (TIDES, moon)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    final = versions.info(root)
    assert (final.version, final.parent, final.documents) == (3, 2, len(DOCS) + 1)
    assert {"tides", "moon"} <= load_index(root, embedder).doc_shas.keys()


def test_old_versions_are_pruned_unless_current_or_pinned(root, embedder) -> None:
    assert versions.pin(root, "job-a") == 1
    for i in range(3):
        doc = Document(f"note-{i}", f"Note number {i} about gardening.", title=f"Note {i}")
        update_index(root, Changes(add=[doc]), embedder, keep=1)
    assert versions.listed(root) == [1, 4]  # 2 and 3 pruned; 1 pinned, 4 current
    assert versions.pins(root) == {"job-a": 1}
    assert len(load_index(root, embedder, version=1)) == len(DOCS) - 1
    versions.unpin(root, "job-a")
    update_index(root, Changes(delete=["note-0"]), embedder, keep=1)
    assert versions.listed(root) == [5]
    with pytest.raises(IndexFormatError, match=r"has no version 1 \(kept: 5\)"):
        load_index(root, embedder, version=1)


def test_an_unversioned_index_becomes_version_1_at_its_first_change(
    small_index, embedder, tmp_path
) -> None:
    root = small_index.save(tmp_path / "old")  # the layout from before versions
    assert versions.resolve(root) == (0, root)
    assert versions.info(root).documents == len(DOCS)
    info, _ = update_index(root, Changes(add=[TIDES]), embedder)
    assert (info.version, info.parent) == (2, 1)
    assert not (root / "manifest.json").exists()
    assert len(load_index(root, embedder, version=1)) == len(DOCS)
    with pytest.raises(Exception, match="refusing to write versions"):
        versions.pin(tmp_path, "x")  # a folder of other things is no index


def test_a_live_index_switches_between_searches_and_refuses_a_bad_version(root, embedder) -> None:
    live = LiveIndex(root, embedder)
    before = live.snapshot()
    assert before.version == 1
    assert not live.refresh()
    update_index(root, Changes(add=[TIDES]), embedder)
    assert live.refresh()
    after = live.snapshot()
    assert (after.version, top_doc(after.index, TIDES_Q)) == (2, "tides")
    assert "tides" not in before.index.doc_shas  # a search holding the old one sees it whole

    # A foreign writer (or a bad disk) points at a corrupt version: refused, v2 serves on.
    bad = versions.version_dir(root, 3)
    shutil.copytree(versions.version_dir(root, 2), bad)
    (bad / PASSAGES_FILE).write_bytes(b"not parquet")
    versions.set_current(root, 3)
    assert not live.refresh()
    assert live.snapshot().version == 2
    assert "truncated or replaced" in live.refused[3]
    assert not live.refresh()  # not tried again

    # The next good version is taken, by the watcher, within its interval and the load.
    versions.set_current(root, 2)  # roll back, so that the next change builds on v2
    live.watch(0.05)
    try:
        moon = Document("moon", "The Moon orbits the Earth every 27 days.", title="Moon")
        info, _ = update_index(root, Changes(add=[moon]), embedder)
        assert info.version == 4
        deadline = time.monotonic() + 30
        while live.snapshot().version != 4:
            assert time.monotonic() < deadline, "the watcher never switched"
            time.sleep(0.05)
        assert top_doc(live.snapshot().index, "How long does the Moon take to orbit?") == "moon"
    finally:
        live.close()
