"""Corpus ingestion: a folder, a JSONL or Parquet file, a text file, or the stdlib docs.

Ids are stable across runs: a text file's id is its path relative to the corpus root; a row's
id is its `id` column, else `FILE:LINE` (JSONL, 1-based) or `FILE:ROW` (Parquet, 0-based).
Rows carry `text` (required), `title`, `source`; every other column goes to `metadata`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.documents import Document
from retrieval.errors import CorpusError
from retrieval.stdlib_docs import stdlib_documents

STDLIB = "stdlib"
TEXT_SUFFIXES = frozenset({".txt", ".md"})
ROW_SUFFIXES = frozenset({".jsonl", ".parquet"})
_RESERVED = ("id", "text", "title", "source")


def read_corpus(path: str | Path) -> list[Document]:
    """Every document under `path` (`"stdlib"`: the embedded default corpus), in a stable
    order, ids checked unique; documents with no text are left out."""
    if str(path) == STDLIB:
        return stdlib_documents()
    root = Path(path)
    if not root.exists():
        raise CorpusError(
            f"corpus {str(path)!r} does not exist (give a folder, a .jsonl, "
            f".parquet, .txt or .md file, or {STDLIB!r})"
        )
    if root.is_dir():
        files = corpus_files(root)
        docs = [doc for file in files for doc in _read_file(file, root)]
    else:
        docs = list(_read_file(root, root.parent))
    docs = [doc for doc in docs if doc.text.strip()]
    if not docs:
        raise CorpusError(f"empty corpus: no document with text under {root}")
    check_unique_ids(docs)
    return docs


def corpus_files(root: Path) -> list[Path]:
    """The supported files under `root`, sorted, hidden files and folders left out."""
    suffixes = TEXT_SUFFIXES | ROW_SUFFIXES
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def check_unique_ids(docs: Iterable[Document]) -> None:
    dupes = [doc_id for doc_id, n in Counter(doc.id for doc in docs).items() if n > 1]
    if dupes:
        raise CorpusError(f"duplicate document ids: {', '.join(map(repr, dupes[:5]))}")


def _read_file(file: Path, root: Path) -> Iterator[Document]:
    name = file.relative_to(root).as_posix()
    suffix = file.suffix.lower()
    try:
        if suffix in TEXT_SUFFIXES:
            yield _text_document(name, file.read_text(encoding="utf-8"))
        elif suffix == ".jsonl":
            yield from _jsonl_documents(name, file)
        elif suffix == ".parquet":
            yield from _parquet_documents(name, file)
        else:
            raise CorpusError(f"unsupported corpus file {file}: use .txt, .md, .jsonl or .parquet")
    except (OSError, UnicodeDecodeError, pa.ArrowException) as exc:
        raise CorpusError(f"cannot read corpus file {file}: {exc}") from exc


def _text_document(name: str, text: str) -> Document:
    """A markdown file's first `# ` heading is its title; otherwise the file name."""
    heading = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "")
    return Document(id=name, text=text, title=heading or Path(name).stem, source=name)


def _jsonl_documents(name: str, file: Path) -> Iterator[Document]:
    with file.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{file}:{lineno}: not valid JSON ({exc})") from exc
            yield _row_document(row, f"{name}:{lineno}", f"{file}:{lineno}")


def _parquet_documents(name: str, file: Path) -> Iterator[Document]:
    for i, row in enumerate(pq.read_table(file).to_pylist()):
        yield _row_document(row, f"{name}:{i}", f"{file} row {i}")


def _row_document(row: Any, fallback_id: str, where: str) -> Document:
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise CorpusError(f"{where}: a row needs a string 'text' field")
    doc_id = row.get("id")
    return Document(
        id=fallback_id if doc_id is None else str(doc_id),
        text=row["text"],
        title=str(row.get("title") or ""),
        source=str(row.get("source") or fallback_id),
        metadata={k: v for k, v in row.items() if k not in _RESERVED},
    )
