"""Index versions on disk: immutable, checked versions and an atomic pointer to the current one
(as Milvus, Qdrant and Weaviate switch a collection alias: build the new one, move the alias).

    DIR/CURRENT            the current version's name, replaced by rename: a reader sees the
                           old name or the new one, never a mix
    DIR/versions/v000007/  one index directory (`retrieval.store`) with its `version.json`
    DIR/pins/NAME.json     a version held for a batch job, never pruned while pinned
    DIR/.lock              held (flock) by a writer for a whole read -> change -> publish, so two
                           changes at once are applied one after the other and neither is lost

A version is never written once published, so a process that loaded it needs no lock to search
it (FAISS wants mutual exclusion for any change to an index in use). A directory written before
versions existed (an index at its top) reads as version 0 and becomes version 1 under the lock
at its first change or pin. This module knows files only; `retrieval.index.publish` checks a
version's contents before it becomes current.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from retrieval import store
from retrieval.errors import IndexFormatError, RetrievalError

POINTER = "CURRENT"
VERSIONS = "versions"
PINS = "pins"
LOCK = ".lock"
VERSION_FILE = "version.json"
DEFAULT_KEEP = 3  # versions kept besides the current and pinned ones
_NAME = re.compile(r"v(\d{6,})")
_PIN_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class Change(BaseModel):
    """What a version changed from its parent, in documents."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0  # given again with the same content: not re-embedded

    @property
    def any(self) -> bool:
        return bool(self.added or self.updated or self.deleted)


class VersionInfo(BaseModel):
    """A version's `version.json` (version 0: an index from before versions, described from its
    manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int
    parent: int | None
    created: float  # Unix time
    documents: int
    chunks: int
    embedder: str
    dim: int
    change: Change = Change()


def version_name(version: int) -> str:
    return f"v{version:06d}"


def version_dir(root: str | Path, version: int) -> Path:
    """Where `version` lives (0: `root` itself, an index from before versions)."""
    return Path(root) if version == 0 else Path(root) / VERSIONS / version_name(version)


def current(root: str | Path) -> int:
    """The current version's number from the pointer: cheap enough to poll (0: no pointer)."""
    pointer = Path(root) / POINTER
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return 0
    match = _NAME.fullmatch(name)
    if match is None:
        raise IndexFormatError(f"{pointer} is corrupt: {name[:40]!r} names no version")
    return int(match.group(1))


def resolve(root: str | Path, version: int | None = None) -> tuple[int, Path]:
    """`version` (default: the current one) and its directory, which must exist."""
    root = Path(root)
    version = current(root) if version is None else version
    path = version_dir(root, version)
    if version and not path.is_dir():
        raise IndexFormatError(
            f"{root} has no version {version} (kept: {_listed(root)}); it was pruned or "
            "never written"
        )
    return version, path


def check_current(root: str | Path) -> store.Manifest:
    """The current version's manifest, checked whole (sizes and checksums) without loading it."""
    return store.check_index_dir(resolve(root)[1])


def info(root: str | Path, version: int | None = None) -> VersionInfo:
    """What `version` (default: the current one) holds, from its files alone."""
    version, path = resolve(root, version)
    if version == 0:
        return _unversioned_info(path, store.read_index_dir(path, verify=False))
    file = path / VERSION_FILE
    try:
        return VersionInfo.model_validate_json(file.read_bytes())
    except (OSError, ValidationError) as exc:
        raise IndexFormatError(f"{file} is missing or corrupt: {exc}") from exc


def _unversioned_info(path: Path, stored: store.StoredIndex) -> VersionInfo:
    return VersionInfo(
        version=0,
        parent=None,
        created=(path / store.MANIFEST).stat().st_mtime,
        documents=len(stored.doc_shas),
        chunks=len(stored.passages),
        embedder=stored.settings.embedder,
        dim=stored.index.d,
    )


def listed(root: str | Path) -> list[int]:
    """The versions on disk, oldest first."""
    folder = Path(root) / VERSIONS
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name)))


def _listed(root: Path) -> str:
    return ", ".join(map(str, listed(root))) or "none"


@contextmanager
def locked(root: str | Path) -> Iterator[None]:
    """Hold the directory's write lock: writers (a CLI, the service's builder) take turns.
    An advisory `flock`, so it binds processes on one machine or on a file system that passes
    locks on (NFSv4); readers never take it."""
    root = Path(root)
    _check_writable_root(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_writable_root(root: Path) -> None:
    """Versions go only into an index directory or an empty or new one: `--out ~/docs` must
    not fill a folder of documents."""
    if not root.exists() or (root / POINTER).exists() or (root / store.MANIFEST).is_file():
        return
    if not root.is_dir() or any(p.name not in (LOCK, VERSIONS, PINS) for p in root.iterdir()):
        raise RetrievalError(f"refusing to write versions into {root}: it is not an index")


def write(root: str | Path, stored: store.StoredIndex, version: VersionInfo) -> Path:
    """Write a version's directory (atomically: whole or absent). Caller holds `locked`."""
    path = version_dir(root, version.version)
    if path.exists():
        raise RetrievalError(f"{path} exists already: versions are never rewritten")
    extra = {VERSION_FILE: (version.model_dump_json(indent=2) + "\n").encode()}
    store.write_index_dir(path, stored, extra)
    return path


def next_version(root: str | Path) -> int:
    return max([current(root), *listed(root)]) + 1


def set_current(root: str | Path, version: int) -> None:
    """Point `root` at `version`: one rename, durable once it returns. Caller holds `locked`."""
    root = Path(root)
    tmp = root / f".{POINTER}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(version_name(version) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, root / POINTER)
    store.fsync(root)


def discard(root: str | Path, version: int) -> None:
    """Remove a version that was never published (it failed its checks)."""
    shutil.rmtree(version_dir(root, version), ignore_errors=True)


def prune(root: str | Path, keep: int = DEFAULT_KEEP) -> list[int]:
    """Remove all but the newest `keep` versions, never the current or a pinned one, and any
    half-written folder a crash left; the versions removed. Caller holds `locked`. Processes
    that loaded a removed version keep it: it is in their memory."""
    root = Path(root)
    folder = root / VERSIONS
    if folder.is_dir():
        for stale in folder.glob(".v*.tmp-*"):  # no writer is active: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
    held = {current(root), *pins(root).values()}
    versions = listed(root)
    doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v not in held]
    for version in doomed:
        shutil.rmtree(version_dir(root, version), ignore_errors=True)
    return doomed


def convert_unversioned(root: str | Path) -> None:
    """An index from before versions (files at the top) becomes version 1: written and checked
    as a version, made current, then its old files removed (the manifest first, so a reader
    never finds half of it). Caller holds `locked`; a versioned or new directory is left as is."""
    root = Path(root)
    if (root / POINTER).exists() or not (root / store.MANIFEST).is_file():
        return
    stored = store.read_index_dir(root)
    version = _unversioned_info(root, stored).model_copy(
        update={"version": next_version(root), "created": time.time()}
    )
    store.check_index_dir(write(root, stored, version))
    set_current(root, version.version)
    for name in (store.MANIFEST, store.INDEX_FILE, store.PASSAGES_FILE):
        (root / name).unlink(missing_ok=True)


def pin(root: str | Path, name: str, version: int | None = None) -> int:
    """Hold `version` (default: the current one) under `name` until `unpin`: it is never
    pruned meanwhile. Returns the version pinned."""
    root = Path(root)
    if not _PIN_NAME.fullmatch(name):
        raise RetrievalError(f"pin name {name!r}: use letters, digits, '.', '_' and '-'")
    with locked(root):
        convert_unversioned(root)
        version, _ = resolve(root, version)
        (root / PINS).mkdir(exist_ok=True)
        tmp = root / PINS / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"version": version, "created": time.time()}) + "\n")
        os.replace(tmp, root / PINS / f"{name}.json")
    return version


def unpin(root: str | Path, name: str) -> None:
    (Path(root) / PINS / f"{name}.json").unlink(missing_ok=True)


def pins(root: str | Path) -> dict[str, int]:
    """Pin name -> the version it holds (an unreadable pin file holds nothing)."""
    folder = Path(root) / PINS
    held: dict[str, int] = {}
    for file in folder.glob("*.json") if folder.is_dir() else ():
        try:
            held[file.stem] = int(json.loads(file.read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return held
