"""`lookahead-rag index --distributed` builds the index a local build does: the same passages,
vectors (to float tolerance) and search results, with the embedding on two Ray actors; and
`--add --distributed` extends it the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.commands.cli import main
from retrieval import load_index, stdlib_documents
from retrieval.store import read_index_dir
from retrieval.versions import resolve

QUERIES = ("parse a JSON string", "write an object as JSON to a file", "custom decoder")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The json module's docs as a JSONL corpus (`all.jsonl`), and all but the last document
    (`first.jsonl`)."""
    docs = stdlib_documents(["json"])
    folder = tmp_path_factory.mktemp("corpus")
    rows = [
        json.dumps({"id": d.id, "title": d.title, "text": d.text, "source": d.source}) + "\n"
        for d in docs
    ]
    (folder / "all.jsonl").write_text("".join(rows), encoding="utf-8")
    (folder / "first.jsonl").write_text("".join(rows[:-1]), encoding="utf-8")
    return folder


def _index(*argv: str | Path) -> None:
    # float32: a bfloat16 encoder's vectors move by ~1e-3 with the batch's padding
    assert main(["index", *map(str, argv), "--dtype", "float32", "--quiet"]) == 0


def _vectors(path: Path) -> np.ndarray:
    index = read_index_dir(resolve(path)[1]).index
    return index.reconstruct_n(0, index.ntotal)


@pytest.mark.usefixtures("local_ray")
def test_distributed_index_equals_the_local_one(corpus: Path, tmp_path: Path) -> None:
    local, distributed = tmp_path / "local", tmp_path / "distributed"
    _index("--corpus", corpus / "all.jsonl", "--out", local)
    on_ray = ("--distributed", "--actors", 2, "--block-rows", 8)
    _index("--corpus", corpus / "first.jsonl", "--out", distributed, *on_ray)
    _index("--corpus", corpus / "all.jsonl", "--out", distributed, "--add", *on_ray)
    a, b = (read_index_dir(resolve(path)[1]) for path in (local, distributed))
    assert a.settings == b.settings
    assert a.doc_shas == b.doc_shas
    assert [p.id for p in a.passages] == [p.id for p in b.passages]
    assert len(a.passages) > 2 * 8  # several blocks to share between the two actors
    np.testing.assert_allclose(_vectors(local), _vectors(distributed), atol=1e-5)
    a, b = load_index(local), load_index(distributed)
    for hits_a, hits_b in zip(a.search(list(QUERIES), 5), b.search(list(QUERIES), 5), strict=True):
        assert [p.id for p in hits_a] == [p.id for p in hits_b]


def test_bad_distributed_options_fail_before_any_work(tmp_path: Path) -> None:
    base = ["index", "--corpus", "stdlib", "--out", str(tmp_path / "i"), "--distributed"]
    with pytest.raises(SystemExit, match="must be >= 1"):
        main([*base, "--actors", "0"])
    with pytest.raises(SystemExit, match="add --device cuda"):
        main([*base, "--gpus-per-actor", "1"])


@pytest.mark.usefixtures("local_ray")
def test_an_actor_that_cannot_load_the_embedder_is_a_one_line_error(
    corpus: Path, tmp_path: Path, capsys
) -> None:
    # The driver chunks on the CPU; the actors load the embedder on a GPU no machine has.
    argv = ["index", "--corpus", str(corpus / "first.jsonl"), "--out", str(tmp_path / "i")]
    assert main([*argv, "--distributed", "--device", "cuda:99", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: distributed embedding failed: ")
    assert "EmbedderLoadError" in err
    assert not (tmp_path / "i").exists()
