"""Shared fixtures: the real bundled embedder (loaded once) and an index of the hand-written
corpus in `retrievalhelpers`."""

from __future__ import annotations

import pytest
from retrievalhelpers import DOCS

from retrieval import BuildConfig, Embedder, Index, build_index, load_embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return load_embedder()


@pytest.fixture(scope="session")
def small_index(embedder: Embedder) -> Index:
    """The hand-written corpus, exact index. Tests must not mutate it (add to a copy)."""
    return build_index(DOCS, embedder, BuildConfig(index_type="flat"))
