"""EOS and stop strings inside one accepted chunk: cut exactly, nothing after them emitted."""

import numpy as np
import pytest

from generation.detokenize import IncrementalDetokenizer
from generation.stopping import StopScanner

EOS = 2


def pieces(tokenizer, *texts):
    """Token ids whose pieces are exactly `texts` (each must be one token)."""
    ids = []
    for text in texts:
        (token,) = tokenizer.encode(text, add_special_tokens=False)
        ids.append(token)
    return np.array(ids)


def scanner(tokenizer, stop=(), eos=frozenset({EOS})):
    return StopScanner(IncrementalDetokenizer(tokenizer, []), eos, stop)


def test_no_stop_passes_everything(tokenizer):
    cut = scanner(tokenizer).scan(pieces(tokenizer, "The", " cat", " sat"))
    assert (cut.n_tokens, cut.text, cut.reason) == (3, "The cat sat", None)


def test_eos_inside_chunk_keeps_it_and_drops_the_rest(tokenizer):
    chunk = np.concatenate([pieces(tokenizer, "The", " cat"), [EOS], pieces(tokenizer, " sat")])
    cut = scanner(tokenizer).scan(chunk)
    assert (cut.n_tokens, cut.text, cut.reason) == (3, "The cat", "eos")


def test_stop_string_across_two_tokens_inside_chunk(tokenizer):
    chunk = pieces(tokenizer, "The", " cat", " sat", " on", " the")
    cut = scanner(tokenizer, stop=["t sa"]).scan(chunk)
    assert (cut.n_tokens, cut.text, cut.reason) == (3, "The ca", "stop")


def test_stop_string_ending_mid_token(tokenizer):
    cut = scanner(tokenizer, stop=["ca"]).scan(pieces(tokenizer, "The", " cat", " sat"))
    assert (cut.n_tokens, cut.text, cut.reason) == (2, "The ", "stop")


def test_earliest_of_several_stop_strings_wins(tokenizer):
    cut = scanner(tokenizer, stop=["sat", "cat"]).scan(pieces(tokenizer, "The", " cat sat"[:4]))
    assert (cut.text, cut.reason) == ("The ", "stop")


def test_possible_stop_prefix_is_held_back_then_released(tokenizer):
    scan = scanner(tokenizer, stop=["###"])
    first = scan.scan(pieces(tokenizer, "The", " #"))
    assert (first.text, first.reason) == ("The ", None)
    second = scan.scan(pieces(tokenizer, " cat"))
    assert (second.text, second.reason) == ("# cat", None)


def test_stop_string_across_chunks(tokenizer):
    scan = scanner(tokenizer, stop=["##"])
    assert scan.scan(pieces(tokenizer, "Hi", " #")).text == "Hi "
    cut = scan.scan(pieces(tokenizer, "#", " more"))
    assert (cut.n_tokens, cut.text, cut.reason) == (1, "", "stop")


def test_flush_releases_held_text(tokenizer):
    scan = scanner(tokenizer, stop=["###"])
    assert scan.scan(pieces(tokenizer, "Hi", " #")).text == "Hi "
    assert scan.flush() == "#"


@pytest.mark.parametrize("eos", [frozenset(), frozenset({EOS})])
def test_ignored_eos_is_ordinary_token(tokenizer, eos):
    chunk = np.concatenate([pieces(tokenizer, "Hi"), [EOS], pieces(tokenizer, " there")])
    cut = scanner(tokenizer, eos=eos).scan(chunk)
    assert cut.n_tokens == (3 if not eos else 2)
