"""The index version a batch job answers from: one version for the whole run and across
`--resume`, however the corpus changes meanwhile.

A job's first run pins the current version of its index directory (`retrieval.versions.pin`:
a pinned version is never pruned) and records it in `OUT/index.json`; a resumed run reads it
there and answers from that version again, so every record of a job comes from one version.
The pin is let go when a run ends with no row left to retry (every row answered or invalid);
while rows failed it holds, for the resume that retries them. Where the index directory cannot
be written (a read-only volume), the job records the current version without pinning it and
says so: that version is then kept only as long as `keep_versions` allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from retrieval import versions

JOB_FILE = "index.json"


@dataclass(frozen=True)
class JobIndex:
    index_dir: str
    version: int
    pin: str | None  # None: not pinned (the directory is read-only)


def job_index(root: Path, out_dir: Path, resume: bool) -> JobIndex:
    """The version this run answers from: on `resume`, the one `out_dir` records; else the
    current one, pinned now and recorded."""
    recorded = out_dir / JOB_FILE
    if resume and recorded.is_file():
        job = JobIndex(**json.loads(recorded.read_text(encoding="utf-8")))
        if Path(job.index_dir).resolve() != root.resolve():
            raise ValueError(
                f"{out_dir} was answered from the index {job.index_dir}, not {root}: "
                f"resume with --index {job.index_dir}"
            )
        return job
    name = "batch-" + hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]
    try:
        job = JobIndex(str(root), versions.pin(root, name), name)
    except OSError as exc:
        job = JobIndex(str(root), versions.current(root), None)
        print(f"warning: version {job.version} of {root} not pinned ({exc})", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{JOB_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(job)) + "\n", encoding="utf-8")
    os.replace(tmp, recorded)
    return job


def release(job: JobIndex) -> None:
    """Let the version go: nothing of the job is left to answer."""
    if job.pin is not None:
        versions.unpin(job.index_dir, job.pin)
