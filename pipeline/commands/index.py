"""`lookahead-rag index`: build an index directory from a corpus, or change it by document id
(`--add`, `--update`, `--delete`). Either way the result is a new version of the directory,
published only once whole and checked (`retrieval.versions`), and every service serving the
directory switches to it within `retrieval.watch_interval_s` plus the load time, with no other
step. With `--distributed`, the passages are embedded by a pool of Ray actors
(`pipeline.jobs.distributed_embedding`) and everything else is done as in a local build.

The command lives in `pipeline` because the distributed build needs Ray; retrieval itself knows
nothing of Ray."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.errors import RetrievalError
from retrieval.versions import DEFAULT_KEEP

HELP = "build an index, or add, update and delete its documents (a new version each time)"

if TYPE_CHECKING:
    import numpy as np

    from retrieval.documents import Changes, Document
    from retrieval.index import EmbedPassages
    from retrieval.store import IndexSettings
    from retrieval.versions import VersionInfo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        help="build from this corpus: a folder (.txt/.md/.jsonl/.parquet files), one such file, "
        "or 'stdlib' for the embedded Python standard library docs (a folder named stdlib: "
        "./stdlib)",
    )
    parser.add_argument("--out", required=True, type=Path, help="index directory to write")
    changes = parser.add_argument_group(
        "changes by document id (one new version for all of them; unchanged documents are "
        "not embedded again; the index's own embedder and settings are used)"
    )
    changes.add_argument(
        "--add",
        nargs="*",
        metavar="PATH",
        help="add the documents of these corpus files or folders (ids as a corpus gives them: "
        "a file's path under the folder, a row's id); bare --add adds --corpus's new documents",
    )
    changes.add_argument(
        "--update",
        nargs="+",
        metavar="PATH",
        help="replace indexed documents (all their passages) with these files' documents",
    )
    changes.add_argument("--delete", nargs="+", metavar="ID", help="delete documents by id")
    parser.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help=f"old versions kept besides the current and pinned ones (default {DEFAULT_KEEP})",
    )
    parser.add_argument(
        "--index-type",
        default="auto",
        help="auto (by corpus size), flat (exact), hnsw, ivfpq, or a FAISS factory string",
    )
    parser.add_argument(
        "--search-params", default=None, help="FAISS search parameters, e.g. efSearch=256"
    )
    parser.add_argument(
        "--embedder",
        default=None,
        help="sentence-transformers model name or path (default: the bundled all-MiniLM-L6-v2)",
    )
    parser.add_argument("--chunk-tokens", type=int, default=128, help="passage length in tokens")
    parser.add_argument("--chunk-overlap", type=int, default=32, help="tokens shared by neighbours")
    parser.add_argument("--batch-size", type=int, default=32, help="embedding batch size")
    parser.add_argument("--device", default="cpu", help="embedder device (cpu, cuda, cuda:1)")
    parser.add_argument("--dtype", default="auto", help="embedder dtype (auto, float32, ...)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    distributed = parser.add_argument_group(
        "distributed (Ray Data; a local loopback Ray, or server.ray_address / "
        "LOOKAHEAD_RAG__SERVER__RAY_ADDRESS)"
    )
    distributed.add_argument(
        "--distributed",
        action="store_true",
        help="embed on a pool of Ray actors, each loading the embedder once (--device is theirs)",
    )
    distributed.add_argument("--actors", type=int, default=2, help="embedder actors (default 2)")
    distributed.add_argument(
        "--block-rows", type=int, default=1024, help="passages per actor call (default 1024)"
    )
    distributed.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (needs --device cuda)"
    )


def run(args: argparse.Namespace) -> int:
    changing = args.add is not None or args.update or args.delete
    if not changing and args.corpus is None:
        raise SystemExit("give --corpus to build, or --add / --update / --delete to change")
    if args.add == [] and args.corpus is None:
        raise SystemExit("bare --add adds --corpus's documents: give --corpus, or paths")
    if args.keep < 0:
        raise SystemExit("--keep must be >= 0")
    if args.distributed:
        _check_distributed(args)
    started = time.perf_counter()
    try:
        line = _change(args) if changing else _build(args)
    except (RetrievalError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{line}, {time.perf_counter() - started:.1f} s")
    return 0


def _build(args: argparse.Namespace) -> str:
    from retrieval import versions
    from retrieval.corpus import read_corpus
    from retrieval.embedding import DEFAULT_EMBEDDER, load_embedder
    from retrieval.index import BuildConfig, build_index

    docs = read_corpus(args.corpus)
    # The driver of a distributed build only chunks: its own embedder copy stays on the CPU.
    device = "cpu" if args.distributed else args.device
    embedder = load_embedder(args.embedder or DEFAULT_EMBEDDER, device, args.dtype)
    config = BuildConfig(
        index_type=args.index_type,
        search_params=args.search_params,
        chunk_tokens=args.chunk_tokens,
        chunk_overlap=args.chunk_overlap,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    embed = _distributed(args, embedder.name)
    index = build_index(docs, embedder, config, args.out, embed, args.keep)
    return _summary(args.out, versions.info(args.out), len(index), index.settings)


def _change(args: argparse.Namespace) -> str:
    from retrieval import versions
    from retrieval.changes import update_index

    changes = _changes(args)
    device = "cpu" if args.distributed else args.device
    embed = _distributed(args, versions.info(args.out).embedder)
    info, applied = update_index(
        args.out,
        changes,
        embed=embed,
        keep=args.keep,
        device=device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    if applied is None:
        return f"{args.out}: nothing changed, version {info.version} stays current"
    return _summary(args.out, info, applied.embedded, applied.index.settings)


def _changes(args: argparse.Namespace) -> Changes:
    from retrieval.corpus import read_corpus
    from retrieval.documents import Changes

    def documents(paths: Sequence[str]) -> list[Document]:
        return [doc for path in paths for doc in read_corpus(path)]

    adding = args.add if args.add else ([args.corpus] if args.add == [] else [])
    return Changes(
        add=documents(adding), update=documents(args.update or []), delete=args.delete or []
    )


def _summary(out: Path, info: VersionInfo, embedded: int, settings: IndexSettings) -> str:
    c = info.change
    return (
        f"{out}: version {info.version}: {info.chunks} passages from {info.documents} "
        f"documents ({c.added} added, {c.updated} updated, {c.deleted} deleted, {c.unchanged} "
        f"unchanged; {embedded} passages embedded), "
        f"{' '.join(filter(None, (settings.index_type, settings.search_params)))}, "
        f"embedder {settings.embedder}"
    )


def _check_distributed(args: argparse.Namespace) -> None:
    if args.actors < 1 or args.block_rows < 1:
        raise SystemExit("--actors and --block-rows must be >= 1")
    if args.gpus_per_actor < 0:
        raise SystemExit("--gpus-per-actor must be >= 0")
    if args.gpus_per_actor > 0 and not args.device.startswith("cuda"):
        raise SystemExit("--gpus-per-actor gives the actors GPUs: add --device cuda")


def _distributed(args: argparse.Namespace, embedder: str) -> EmbedPassages | None:
    """With `--distributed`, the embedding step that runs on Ray actors (Ray starts, or is
    joined, on its first call, and is left when it returns); else None (embed here)."""
    if not args.distributed:
        return None
    from pipeline.jobs.distributed_embedding import EmbedOptions, embed_on_ray

    options = EmbedOptions(
        embedder=embedder,
        device=args.device,
        dtype=args.dtype,
        actors=args.actors,
        block_rows=args.block_rows,
        batch_size=args.batch_size,
        gpus_per_actor=args.gpus_per_actor,
        progress=not args.quiet,
    )

    def embed(texts: Sequence[str]) -> np.ndarray:
        from pipeline import ray_runtime
        from pipeline.config import load_config

        with ray_runtime.connected(load_config(), quiet=True):
            return embed_on_ray(texts, options)

    return embed
