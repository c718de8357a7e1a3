"""Snapshot and restore of a global trie: a numpy .npz archive, never pickle.

The archive holds the node arrays of `GlobalTrie.to_arrays` plus its settings as scalars and a
format tag with a version. Loading reads it with `allow_pickle=False` and checks every field and
every tree invariant, so a corrupt or foreign file gives one ValueError saying what is wrong.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from trie_store.config import TrieConfig
from trie_store.global_trie import GlobalTrie

FORMAT = "lookahead-rag/global-trie"
VERSION = 1


def save_global_trie(trie: GlobalTrie, path: str | os.PathLike[str]) -> None:
    """Write `trie` to `path` atomically (a temporary file renamed over it)."""
    path = Path(path)
    fields = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "branch_length": np.array(trie.config.branch_length, dtype=np.int64),
        "max_context": np.array(trie.config.max_context, dtype=np.int64),
        "prior": np.array(trie.config.prior, dtype=np.float64),
        "max_nodes": np.array(trie.max_nodes, dtype=np.int64),
        "half_life": np.array(trie.half_life, dtype=np.float64),
        **trie.to_arrays(),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **fields)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_global_trie(path: str | os.PathLike[str]) -> GlobalTrie:
    """Read a trie written by `save_global_trie`; ValueError if the file is not a sound one."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with archive:
            fields = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a global trie snapshot ({err})") from None
    if str(fields.get("format", "")) != FORMAT:
        raise ValueError(f"{path}: not a global trie snapshot (format tag missing or wrong)")
    try:
        version = int(fields["version"])
        if version != VERSION:
            raise ValueError(f"snapshot format version {version}, this code reads {VERSION}")
        config = TrieConfig(
            branch_length=int(fields["branch_length"]),
            max_context=int(fields["max_context"]),
            prior=float(fields["prior"]),
        )
        return GlobalTrie.from_arrays(
            fields["tokens"],
            fields["parents"],
            fields["counts"],
            config=config,
            max_nodes=int(fields["max_nodes"]),
            half_life=float(fields["half_life"]),
        )
    except KeyError as err:
        raise ValueError(f"{path}: corrupt global trie snapshot (field {err} missing)") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: corrupt global trie snapshot ({err})") from None
