"""An index directory on disk: the FAISS file, the passages (Parquet) and a manifest.

Writes are atomic: everything is written and fsynced into a fresh directory beside the target,
which then takes the target's place by rename, so a crash mid-build leaves the previous index
as it was (at worst a stale `.NAME.tmp-*` folder beside it). Loading checks the manifest first
(format version, sizes, SHA-256 of every file, counts, dimension), so a truncated, corrupt or
foreign directory fails with a message rather than wrong answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from retrieval.documents import Passage
from retrieval.errors import IndexFormatError, RetrievalError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
PASSAGES_FILE = "passages.parquet"
_CHUNK = 1 << 20

PASSAGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_id", pa.string()),
        ("doc_sha", pa.string()),
        ("title", pa.string()),
        ("source", pa.string()),
        ("text", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("metadata", pa.string()),  # JSON: rows of one corpus may carry different fields
    ]
)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bytes: int
    sha256: str


class IndexSettings(BaseModel):
    """How an index was built: what a reload and an incremental add must do the same way."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    embedder: str
    index_type: str  # the FAISS factory string
    search_params: str
    chunk_tokens: int
    chunk_overlap: int


class Manifest(IndexSettings):
    """An index directory's table of contents."""

    format_version: int
    metric: Literal["inner_product"]
    dim: int
    count: int
    files: dict[str, FileEntry]


@dataclass
class StoredIndex:
    """An index directory's contents in memory."""

    settings: IndexSettings
    index: faiss.Index
    passages: list[Passage]
    doc_shas: dict[str, str]


def write_index_dir(
    path: str | Path, stored: StoredIndex, extra: Mapping[str, bytes] | None = None
) -> Manifest:
    """Write `stored` to `path` atomically, replacing an index already there (never any other
    kind of directory); returns the manifest written, with the files' sizes and checksums.
    `extra` files (name -> content) go into the directory and its manifest too."""
    target = Path(path)
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: its 0700 mode would become the index's
    try:
        faiss.write_index(stored.index, str(tmp / INDEX_FILE))
        pq.write_table(_passage_table(stored.passages, stored.doc_shas), tmp / PASSAGES_FILE)
        extra = dict(extra or {})
        for name, content in extra.items():
            (tmp / name).write_bytes(content)
        names = (INDEX_FILE, PASSAGES_FILE, *extra)
        manifest = Manifest(
            **stored.settings.model_dump(),
            format_version=FORMAT_VERSION,
            metric="inner_product",
            dim=stored.index.d,
            count=stored.index.ntotal,
            files={name: _file_entry(tmp / name) for name in names},
        )
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        for name in (*names, MANIFEST):
            fsync(tmp / name)
        fsync(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def check_index_dir(path: str | Path, verify: bool = True) -> Manifest:
    """The manifest of a complete and intact index directory, checked without loading it:
    every file there with its size and, unless `verify=False`, its checksum. Cheap next to a
    load, so a service can refuse a bad index before it starts anything."""
    root = Path(path)
    manifest = read_manifest(root)
    for name, entry in manifest.files.items():
        _check_file(root / name, entry, verify)
    return manifest


def read_index_dir(path: str | Path, verify: bool = True) -> StoredIndex:
    """Load and check an index directory; `verify=False` skips the checksums (sizes are
    always checked)."""
    root = Path(path)
    manifest = check_index_dir(root, verify)
    try:
        index = faiss.read_index(str(root / INDEX_FILE))
    except RuntimeError as exc:
        raise IndexFormatError(f"{root / INDEX_FILE} is not a readable FAISS index") from exc
    passages, doc_shas = _read_passages(root / PASSAGES_FILE)
    for what, got, want in (
        ("vectors", index.ntotal, manifest.count),
        ("passages", len(passages), manifest.count),
        ("dimension", index.d, manifest.dim),
    ):
        if got != want:
            raise IndexFormatError(f"{root}: {got} {what} where the manifest says {want}")
    settings = IndexSettings(**manifest.model_dump(include=set(IndexSettings.model_fields)))
    return StoredIndex(settings, index, passages, doc_shas)


def read_manifest(root: Path) -> Manifest:
    file = root / MANIFEST
    if not file.is_file():
        raise IndexFormatError(f"no index at {root}: {MANIFEST} is missing{_interrupted(root)}")
    try:
        manifest = Manifest.model_validate_json(file.read_bytes())
    except ValidationError as exc:
        raise IndexFormatError(f"{file} is corrupt: {exc.errors()[0]['msg']}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{root} has index format {manifest.format_version}; this version reads "
            f"{FORMAT_VERSION}. Rebuild it with `lookahead-rag index`."
        )
    missing = {INDEX_FILE, PASSAGES_FILE} - manifest.files.keys()
    if missing:
        raise IndexFormatError(f"{file} lists no {', '.join(sorted(missing))}")
    return manifest


def _check_replaceable(target: Path) -> None:
    """Only an index directory or an empty one may be replaced: `--out ~/docs` must not wipe
    a folder of documents."""
    if not target.exists() or (target / MANIFEST).is_file():
        return
    if not target.is_dir() or any(target.iterdir()):
        raise RetrievalError(f"refusing to replace {target}: it exists and is not an index")


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`. An existing target is first renamed aside and removed only
    once the new one is in place; between the two renames (microseconds) `target` is absent,
    and a crash there leaves the old index at `.NAME.old-*`, which loading then points to."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _interrupted(root: Path) -> str:
    olds = sorted(root.parent.glob(f".{root.name}.old-*")) if root.parent.is_dir() else []
    if not olds or root.exists():
        return ""
    return f" (an interrupted update left the previous index at {olds[0]}; rename it back)"


def _check_file(file: Path, entry: FileEntry, verify: bool) -> None:
    if not file.is_file():
        raise IndexFormatError(f"{file} is missing")
    size = file.stat().st_size
    if size != entry.bytes:
        raise IndexFormatError(
            f"{file} is {size} bytes where the manifest says {entry.bytes}: truncated or replaced"
        )
    if verify and _sha256(file) != entry.sha256:
        raise IndexFormatError(f"{file} is corrupt: its SHA-256 differs from the manifest's")


def _passage_table(passages: list[Passage], doc_shas: dict[str, str]) -> pa.Table:
    columns = {
        "id": [p.id for p in passages],
        "doc_id": [p.doc_id for p in passages],
        "doc_sha": [doc_shas[p.doc_id] for p in passages],
        "title": [p.title for p in passages],
        "source": [p.source for p in passages],
        "text": [p.text for p in passages],
        "start": [p.start for p in passages],
        "end": [p.end for p in passages],
        "metadata": [json.dumps(p.metadata, default=str) for p in passages],
    }
    return pa.table(columns, schema=PASSAGE_SCHEMA)


def _read_passages(file: Path) -> tuple[list[Passage], dict[str, str]]:
    try:
        table = pq.read_table(file, schema=PASSAGE_SCHEMA)
    except (pa.ArrowException, OSError) as exc:
        raise IndexFormatError(f"{file} is not a readable passage table: {exc}") from exc
    cols = {name: table.column(name).to_pylist() for name in PASSAGE_SCHEMA.names}
    passages = [
        Passage(
            id=cols["id"][i],
            doc_id=cols["doc_id"][i],
            text=cols["text"][i],
            title=cols["title"][i],
            source=cols["source"][i],
            start=cols["start"][i],
            end=cols["end"][i],
            metadata=json.loads(cols["metadata"][i]),
        )
        for i in range(table.num_rows)
    ]
    return passages, dict(zip(cols["doc_id"], cols["doc_sha"], strict=True))


def _file_entry(file: Path) -> FileEntry:
    return FileEntry(bytes=file.stat().st_size, sha256=_sha256(file))


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    """Make `path` (a file, or a directory's entries) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
