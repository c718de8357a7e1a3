"""`lookahead-rag index` and `search` through the real dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from retrievalhelpers import DOCS

from pipeline.commands.cli import main


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rows = [{"id": d.id, "title": d.title, "text": d.text} for d in DOCS]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]), encoding="utf-8")
    return path


def test_index_then_search_json(corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "idx"
    assert main(["index", "--corpus", str(corpus), "--out", str(out), "--quiet"]) == 0
    assert f"version 1: {len(DOCS) - 1} passages" in capsys.readouterr().out
    question = "What is molten rock that reaches the surface called?"
    assert main(["search", "--index", str(out), question, "-k", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    assert {"id", "score", "title", "source", "text"} <= rows[0].keys()
    assert rows[0]["id"] == "volcanoes#0"
    assert rows[0]["title"] == "Volcanoes"
    assert rows[0]["score"] > rows[1]["score"]

    # bare --add: --corpus's new documents only are embedded; the index keeps its settings
    extra = tmp_path / "extra.jsonl"
    chess = DOCS[-1]
    extra.write_text(json.dumps({"id": chess.id, "text": chess.text, "title": chess.title}))
    assert main(["index", "--corpus", str(extra), "--out", str(out), "--add", "--quiet"]) == 0
    assert f"version 2: {len(DOCS)} passages from {len(DOCS)} documents (1 added, 0 updated" in (
        capsys.readouterr().out
    )
    assert (
        main(["search", "--index", str(out), "a chess opening", "how bread rises", "-k", "1"]) == 0
    )
    text = capsys.readouterr().out
    assert "# a chess opening" in text
    assert "Sicilian Defence" in text
    assert "Sourdough" in text


def test_update_and_delete_by_id(corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "idx"
    assert main(["index", "--corpus", str(corpus), "--out", str(out), "--quiet"]) == 0
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "kiln.md").write_text("# Kilns\nA kiln fires clay into ceramic at 1200 degrees.")
    assert main(["index", "--out", str(out), "--add", str(notes), "--quiet"]) == 0
    (notes / "kiln.md").write_text("# Kilns\nA kiln is an oven that fires pottery.")
    edit = ["index", "--out", str(out), "--update", str(notes / "kiln.md"), "--quiet"]
    assert main([*edit, "--delete", "eiffel", "chess"]) == 1  # chess was never indexed
    assert "1 document(s) is not indexed: 'chess'" in capsys.readouterr().err
    assert main([*edit, "--delete", "eiffel"]) == 0
    printed = capsys.readouterr().out
    assert "version 3: " in printed
    assert "(0 added, 1 updated, 1 deleted, 0 unchanged; 1 passages embedded)" in printed
    assert main(["search", "--index", str(out), "what fires pottery", "-k", "1", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)
    assert (hit["id"], hit["title"]) == ("kiln.md#0", "Kilns")
    assert "oven that fires pottery" in hit["text"]
    assert main(edit) == 0  # the same content again: no new version
    assert "nothing changed, version 3 stays current" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["index", "--corpus", "/nonexistent/corpus", "--out", "{tmp}/i"], "does not exist"),
        (
            ["index", "--corpus", "{corpus}", "--out", "{tmp}/i", "--index-type", "Nope9"],
            "unknown index type",
        ),
        (["search", "--index", "{tmp}/missing", "question"], "no index at"),
    ],
)
def test_errors_are_one_line(
    argv: list[str], message: str, corpus: Path, tmp_path: Path, capsys
) -> None:
    argv = [a.format(tmp=tmp_path, corpus=corpus) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err
    assert "Traceback" not in err
