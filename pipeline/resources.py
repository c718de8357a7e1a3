"""The service's index: where it lives, built once on first use, opened with a clear error.

The default corpus is the embedded stdlib docs, so a fresh machine gets a working index with no
download; it is built once into the cache directory and reused by every later run. Only that
default location is built on its own: an index directory named explicitly must hold an index
already (a mistyped `--index` must not quietly become a new index of another corpus).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.config import Config
from retrieval import STDLIB


def index_dir(config: Config) -> Path:
    """`retrieval.index_dir`, else a cache folder named after the corpus."""
    retrieval = config.retrieval
    if retrieval.index_dir is not None:
        return Path(retrieval.index_dir)
    from generation.defaults import cache_dir

    if retrieval.corpus == STDLIB:
        name = STDLIB
    else:
        corpus = Path(retrieval.corpus).resolve()
        name = f"{corpus.stem}-{hashlib.sha256(str(corpus).encode()).hexdigest()[:8]}"
    return cache_dir() / "indexes" / name


def ensure_index(config: Config, progress: bool = True) -> Path:
    """The index directory, checked whole (`retrieval.check_index_dir`: manifest, sizes,
    checksums) so that a bad one fails here, in seconds, rather than in a replica. The default
    location is built from `retrieval.corpus` first if it does not exist yet; an explicit
    `retrieval.index_dir` that does not exist is a FileNotFoundError saying how to build it."""
    from retrieval.versions import check_current

    path = index_dir(config)
    if not path.exists():  # retrieval writes index folders atomically: present means complete
        if config.retrieval.index_dir is not None:
            raise _missing(path, config)
        _build(config.retrieval.corpus, path, progress)
    check_current(path)
    return path


def _build(corpus: str, path: Path, progress: bool) -> None:
    from retrieval import BuildConfig, build_index, read_corpus  # the embedder: seconds to import

    print(f"building the {corpus!r} index into {path} (once)", flush=True)
    build_index(read_corpus(corpus), config=BuildConfig(progress=progress), out=path)


def open_index(config: Config, version: int | None = None):
    """`version` of the index (default: the current one), loaded, or a FileNotFoundError that
    says how to make one."""
    from retrieval import load_index

    return load_index(existing_index_dir(config), version=version)


def open_live_index(config: Config):
    """The index's current version, loaded, for a `LiveIndex.watch` to keep current."""
    from retrieval import LiveIndex

    return LiveIndex(existing_index_dir(config))


def existing_index_dir(config: Config) -> Path:
    """`index_dir`, which must exist (a FileNotFoundError that says how to make one)."""
    path = index_dir(config)
    if not path.exists():
        raise _missing(path, config)
    return path


def _missing(path: Path, config: Config) -> FileNotFoundError:
    return FileNotFoundError(
        f"no index at {path}: build it with `lookahead-rag index --corpus "
        f"{config.retrieval.corpus} --out {path}`, or leave retrieval.index_dir (--index) unset "
        "to use the default index, which is built on first use"
    )
