"""`lookahead-rag bench-index`: how long a corpus change takes to become searchable, and what a
version switch does to search latency.

A real index (stdlib modules, the default embedder) is served by a `LiveIndex` that watches its
pointer as a Retriever replica does, while a searcher thread embeds and searches questions back
to back. After a steady spell, documents are added one change at a time (`update_index`: the
path of the admin route's builder and of `lookahead-rag index --add`); each change is timed
from its request to the moment a search finds the new document. Search latency is reported
for the steady spell and for the switch windows (a change's request until a second after the
switch). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HELP = "index versions: change-to-searchable time, search latency during a switch"

DOCUMENTED_BOUND_S = 30.0  # docs/index-versions.md: a change reaches every replica within this
QUESTIONS = (
    "How do I parse a JSON string?",
    "What does functools.partial do?",
    "How do I read a CSV file row by row?",
    "How do I join two paths?",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--modules",
        default="json,functools,csv,pathlib,itertools,subprocess,collections,re",
        help="stdlib modules of the corpus, comma-separated",
    )
    parser.add_argument("--changes", type=int, default=3, help="changes made, one at a time")
    parser.add_argument(
        "--watch-interval", type=float, default=2.0, help="pointer polls (retrieval default 2 s)"
    )
    parser.add_argument("--steady-s", type=float, default=5.0, help="searching before changes")


class Searcher:
    """Searches back to back on its own thread, as a replica serves: (start, latency ms)."""

    def __init__(self, live) -> None:
        self.live, self.samples = live, []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.halt.is_set():
            start = time.perf_counter()
            loaded = self.live.snapshot()
            vectors = loaded.index.embed_queries([QUESTIONS[i % len(QUESTIONS)]])
            loaded.index.search_vectors(vectors, 5)
            self.samples.append((start, 1000 * (time.perf_counter() - start)))
            i += 1

    def __enter__(self) -> Searcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.thread.join()


def _percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0, "p50": 0.0, "p95": 0.0}
    p50, p95 = np.percentile(ms, [50, 95])
    return {"n": len(ms), "p50": round(float(p50), 2), "p95": round(float(p95), 2)}


def run(args: argparse.Namespace) -> int:
    from retrieval import (
        BuildConfig,
        Changes,
        Document,
        LiveIndex,
        build_index,
        load_embedder,
        stdlib_documents,
        update_index,
    )

    if args.changes < 1 or args.watch_interval <= 0 or args.steady_s < 0:
        raise SystemExit("--changes >= 1, --watch-interval > 0 and --steady-s >= 0, please")
    embedder = load_embedder()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "index"
        docs = stdlib_documents(args.modules.split(","))
        build_index(docs, embedder, BuildConfig(), out=root)
        live = LiveIndex(root, embedder).watch(args.watch_interval)
        builds, searchable, windows = [], [], []
        try:
            with Searcher(live) as searcher:
                time.sleep(args.steady_s)
                for i in range(args.changes):
                    word = f"saffron-lantern-{i}"
                    note = Document(f"bench-note-{i}", f"The password of vault {i} is {word}.")
                    asked = time.perf_counter()
                    info, _ = update_index(root, Changes(add=[note]), embedder)
                    builds.append(time.perf_counter() - asked)
                    while live.snapshot().version != info.version:
                        time.sleep(0.01)
                    hit = live.snapshot().index.search(f"What is the password of vault {i}?", 1)
                    assert hit[0].doc_id == note.id, hit
                    searchable.append(time.perf_counter() - asked)
                    time.sleep(1.0)
                    windows.append((asked, time.perf_counter()))
            first = windows[0][0]
            steady = [ms for start, ms in searcher.samples if start < first]
            switch = [
                ms for start, ms in searcher.samples if any(a <= start < b for a, b in windows)
            ]
            chunks = len(live.snapshot().index)
        finally:
            live.close()
    report = {
        "documents": len(docs) + args.changes,
        "chunks": chunks,
        "watch_interval_s": args.watch_interval,
        "changes": args.changes,
        "build_s": [round(s, 3) for s in builds],
        "searchable_s": [round(s, 3) for s in searchable],
        "searchable_max_s": round(max(searchable), 3),
        "documented_bound_s": DOCUMENTED_BOUND_S,
        "within_bound": max(searchable) <= DOCUMENTED_BOUND_S,
        "search_ms": {"steady": _percentiles(steady), "switch": _percentiles(switch)},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"index of {report['documents']} documents, {chunks} passages")
    for i, (built, found) in enumerate(zip(builds, searchable, strict=True)):
        print(f"change {i}: built and published in {built:.2f} s, searchable after {found:.2f} s")
    for name, figures in report["search_ms"].items():
        print(f"search {name}: p50 {figures['p50']} ms, p95 {figures['p95']} ms (n={figures['n']})")
    print(json.dumps(report))
    return 0
