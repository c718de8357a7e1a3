"""Global trie snapshot and restore: round trip, and clear errors on anything else."""

import zipfile

import numpy as np
import pytest

from trie_store import GlobalTrie, TrieConfig, load_global_trie, save_global_trie


@pytest.fixture
def trie() -> GlobalTrie:
    trie = GlobalTrie(TrieConfig(branch_length=3, max_context=2, prior=0.5), max_nodes=500)
    trie.insert([1, 2, 3, 4, 1, 2, 5, 1, 2, 3])
    trie.add_ngrams([[7, 8], [7, 9, 1]], [4.0, 2.5])
    return trie


def test_round_trip_keeps_settings_counts_and_drafts(trie, tmp_path):
    path = tmp_path / "global.npz"
    save_global_trie(trie, path)
    back = load_global_trie(path)
    assert (back.config, back.max_nodes, back.half_life) == (
        trie.config,
        trie.max_nodes,
        trie.half_life,
    )
    assert len(back) == len(trie)
    for ngram in ([1, 2], [1, 2, 3], [7], [7, 9, 1], [4, 1]):
        assert back.count(ngram) == pytest.approx(trie.count(ngram))
    for context in ([1, 2], [9, 7], [5]):
        assert back.draft(context, 8) == trie.draft(context, 8)
    back.insert([7, 8])  # a restored trie keeps working
    assert back.count([7, 8]) > trie.count([7, 8])


def test_save_replaces_atomically(trie, tmp_path):
    path = tmp_path / "global.npz"
    save_global_trie(GlobalTrie(), path)
    save_global_trie(trie, path)
    assert len(load_global_trie(path)) == len(trie)
    assert [p.name for p in tmp_path.iterdir()] == ["global.npz"]


def rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as archive:
        fields = {name: archive[name] for name in archive.files}
    fields.update(changes)
    for name in [n for n, v in changes.items() if v is None]:
        del fields[name]
    with open(path, "wb") as f:
        np.savez(f, **fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": np.array("something else")}, "format"),
        ({"version": np.array(99)}, "version 99"),
        ({"counts": None}, "counts"),
        ({"parents": np.array([-1, 5, 0])}, "tokens, parents, counts"),
        ({"branch_length": np.array(-3)}, "branch_length"),
        ({"max_nodes": np.array(2)}, "budget"),
        ({"half_life": np.array(-1.0)}, "half_life"),
    ],
)
def test_tampered_fields_are_named(trie, tmp_path, changes, message):
    path = tmp_path / "global.npz"
    save_global_trie(trie, path)
    rewrite(path, **changes)
    with pytest.raises(ValueError, match=message):
        load_global_trie(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t, p, c: p.__setitem__(1, 3), "before its child"),
        (lambda t, p, c: t.__setitem__(2, -5), "non-negative"),
        (lambda t, p, c: c.__setitem__(2, c[1] * 10), "counts more than its parent"),
        (lambda t, p, c: c.__setitem__(1, np.nan), "finite"),
        (lambda t, p, c: t.__setitem__(0, 4), "root"),
    ],
)
def test_broken_trees_are_rejected(trie, tmp_path, mutate, message):
    arrays = trie.to_arrays()
    mutate(arrays["tokens"], arrays["parents"], arrays["counts"])
    path = tmp_path / "global.npz"
    save_global_trie(trie, path)
    rewrite(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_global_trie(path)


def test_duplicate_children_and_overlong_paths_are_rejected():
    tokens = np.array([-1, 4, 4], dtype=np.int64)
    with pytest.raises(ValueError, match="same token"):
        GlobalTrie.from_arrays(tokens, np.array([-1, 0, 0]), np.array([0.0, 2.0, 1.0]))
    chain = np.arange(-1, 6, dtype=np.int64)
    with pytest.raises(ValueError, match="longer than"):
        GlobalTrie.from_arrays(
            chain, np.arange(-1, 6), np.r_[0.0, np.ones(6)], config=TrieConfig(branch_length=3)
        )


def test_garbage_and_pickles_are_not_snapshots(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00not a zip at all" * 10)
    with pytest.raises(ValueError, match="not a global trie snapshot"):
        load_global_trie(garbage)
    truncated = tmp_path / "truncated.npz"
    save_global_trie(GlobalTrie(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a global trie snapshot"):
        load_global_trie(truncated)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.arange(3))
    with pytest.raises(ValueError, match=r"not an \.npz archive"):
        load_global_trie(plain)
    pickled = tmp_path / "pickled.npz"
    with zipfile.ZipFile(pickled, "w") as z, z.open("tokens.npy", "w") as f:
        np.save(f, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a global trie snapshot"):
        load_global_trie(pickled)
    with pytest.raises(FileNotFoundError):
        load_global_trie(tmp_path / "missing.npz")
