"""A batch job's index version: pinned at its first run, kept through a change of the corpus
and old versions' pruning, the same on `--resume`, let go when nothing is left (real FAISS, the
real embedder, a copy of the session's index)."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.config import load_config
from pipeline.jobs.index_pin import JOB_FILE, job_index, release
from pipeline.jobs.rag_stages import make_search
from retrieval import Changes, load_index, update_index, versions

QUESTION = "How do I parse a JSON string?"


def test_a_job_keeps_its_version_across_a_change_and_a_resume(small_index_dir, tmp_path) -> None:
    root = shutil.copytree(small_index_dir, tmp_path / "idx")
    out = tmp_path / "answers"
    first = job_index(root, out, resume=False)
    started = versions.current(root)
    assert first.version == started
    assert json.loads((out / JOB_FILE).read_text())["version"] == started

    # The corpus changes while the job is interrupted: json's documents go; old versions are
    # pruned to none, but a pinned one stays.
    gone = sorted(d for d in load_index(root).doc_shas if d.startswith("json"))
    assert gone
    update_index(root, Changes(delete=gone), keep=0)
    assert versions.current(root) == started + 1
    assert versions.listed(root) == [started, started + 1]

    resumed = job_index(root, out, resume=True)
    assert resumed == first
    config = load_config(overrides={"retrieval.index_dir": str(root)})
    pinned = make_search(config, resumed.version)([QUESTION])[0]
    current = make_search(config)([QUESTION])[0]
    assert any(p.doc_id in gone for p in pinned)  # the job still answers from its version
    assert not any(p.doc_id in gone for p in current)

    with pytest.raises(ValueError, match="resume with --index"):
        job_index(tmp_path / "elsewhere", out, resume=True)
    release(resumed)
    assert versions.pins(root) == {}
    update_index(root, Changes(delete=[sorted(load_index(root).doc_shas)[0]]), keep=0)
    assert versions.listed(root) == [started + 2]
