"""Corpus ingestion: folders, JSONL, Parquet; stable ids; clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval import CorpusError, read_corpus


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_folder_reads_text_and_markdown_recursively_skipping_hidden(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.md").write_text("intro\n# Heading B\nbody of b", encoding="utf-8")
    (tmp_path / "a.txt").write_text("plain text a", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = read_corpus(tmp_path)
    assert [d.id for d in docs] == ["a.txt", "notes/b.md"]
    assert [d.title for d in docs] == ["a", "Heading B"]
    assert docs[1].source == "notes/b.md"
    assert docs[0].text == "plain text a"


def test_ids_are_stable_across_runs(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x.jsonl", [{"text": "one"}, {"text": "two"}])
    (tmp_path / "y.txt").write_text("three", encoding="utf-8")
    assert read_corpus(tmp_path) == read_corpus(tmp_path)


def test_jsonl_rows_keep_ids_titles_and_extra_fields(tmp_path: Path) -> None:
    file = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"id": 7, "title": "Seven", "text": "the seventh", "url": "http://x/7"},
            {"text": "no id here", "source": "book p. 3"},
            {"id": "empty", "text": "   "},
        ],
    )
    (tmp_path / "docs.jsonl").write_text(file.read_text() + "\n", encoding="utf-8")
    docs = read_corpus(file)
    assert [d.id for d in docs] == ["7", "docs.jsonl:2"]  # empty text is left out
    assert docs[0].title == "Seven"
    assert docs[0].metadata == {"url": "http://x/7"}
    assert docs[1].source == "book p. 3"


def test_parquet_rows(tmp_path: Path) -> None:
    table = pa.table(
        {"id": ["p1", None], "text": ["first row", "second row"], "lang": ["en", "fr"]}
    )
    pq.write_table(table, tmp_path / "docs.parquet")
    docs = read_corpus(tmp_path / "docs.parquet")
    assert [d.id for d in docs] == ["p1", "docs.parquet:1"]
    assert [d.metadata for d in docs] == [{"lang": "en"}, {"lang": "fr"}]


def test_folder_mixes_formats(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"id": "r", "text": "row"}])
    pq.write_table(pa.table({"id": ["q"], "text": ["pq row"]}), tmp_path / "more.parquet")
    (tmp_path / "page.md").write_text("# Page\ntext", encoding="utf-8")
    assert [d.id for d in read_corpus(tmp_path)] == ["q", "page.md", "r"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "empty corpus"),  # an empty folder
        (lambda p: write_jsonl(p / "blank.jsonl", [{"text": ""}]), "empty corpus"),
        (lambda p: _write(p / "bad.jsonl", '{"text": "ok"}\n{not json\n'), "bad.jsonl:2"),
        (lambda p: write_jsonl(p / "notext.jsonl", [{"title": "t"}]), "'text' field"),
        (
            lambda p: write_jsonl(p / "d.jsonl", [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]),
            "duplicate document ids",
        ),
        (lambda p: _write_bytes(p / "latin.txt", "caf\xe9".encode("latin-1")), "cannot read"),
        (lambda p: _write_bytes(p / "broken.parquet", b"not parquet at all"), "cannot read"),
        (lambda p: _write(p / "table.csv", "a,b\n"), "unsupported corpus file"),
    ],
)
def test_bad_corpora_fail_clearly(tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(CorpusError, match=message):
        read_corpus(setup(tmp_path))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
