"""The embedded default corpus: stdlib docstrings, extracted safely and reproducibly."""

from __future__ import annotations

import sys

import pytest

from retrieval import read_corpus, stdlib_documents
from retrieval.stdlib_docs import DENY


def test_subset_documents_modules_functions_classes_and_methods() -> None:
    docs = {d.id: d for d in stdlib_documents(["json", "bisect", "textwrap"])}
    assert {"json", "json.dumps", "json.JSONEncoder", "json.JSONEncoder.encode"} <= docs.keys()
    assert "bisect.insort_left" in docs  # a C-accelerated function (`_bisect`)
    dumps = docs["json.dumps"]
    assert dumps.text.startswith("json.dumps(obj, *, skipkeys=False")
    assert "JSON formatted ``str``" in dumps.text
    assert dumps.source == "pydoc:json.dumps"
    assert docs["json.JSONEncoder"].metadata == {"kind": "class"}
    assert not [i for i in docs if i.split(".")[-1].startswith("_")]  # public names only


def test_extraction_is_deterministic_and_runs_out_of_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "graphlib", raising=False)  # the extraction must not import
    modules = ["unittest", "email.mime", "graphlib"]
    first = stdlib_documents(modules)
    assert first == stdlib_documents(modules)
    assert "graphlib" not in sys.modules
    ids = {d.id for d in first}
    assert len(ids) == len(first)  # `unittest.main` is both a module and a class
    assert {"email.mime.text.MIMEText", "graphlib.TopologicalSorter"} <= ids
    # signatures with default objects print their addresses, which change from run to run
    assert "testLoader=<unittest.loader.TestLoader object>" in "".join(d.text for d in first)
    assert not [d.id for d in first if " at 0x" in d.text]


def test_whole_corpus_has_thousands_of_documents_and_no_denied_module() -> None:
    docs = read_corpus("stdlib")
    assert 3000 <= len(docs) <= 10000
    assert len({d.id for d in docs}) == len(docs)
    modules = {d.id for d in docs if d.metadata["kind"] == "module"}
    assert {"json", "os", "xml.dom.minidom", "xml.etree.ElementTree"} <= modules
    roots = {d.id.split(".")[0] for d in docs}
    assert not roots & (DENY | {"test"})
    assert not [m for m in modules if any(p.startswith("_") or p == "test" for p in m.split("."))]
