"""Incremental detokenisation: deltas add up to one decode, split characters are held back."""

from hypothesis import given, settings
from hypothesis import strategies as st

from generation.detokenize import IncrementalDetokenizer


def deltas(tokenizer, prompt_ids, ids):
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    return [detok.push(t) for t in ids]


def test_multibyte_character_appears_once_complete(tokenizer):
    ids = tokenizer.encode("a 🦜 b", add_special_tokens=False)
    parts = deltas(tokenizer, [], ids)
    assert "".join(parts) == "a 🦜 b"
    assert "" in parts  # the parrot's bytes span several tokens
    assert not any("\ufffd" in p for p in parts)
    assert any(p.endswith("🦜") for p in parts)


def test_first_word_keeps_its_leading_space(tokenizer):
    prompt = tokenizer.encode("Say hello:", add_special_tokens=False)
    ids = tokenizer.encode(" hello world", add_special_tokens=False)
    assert "".join(deltas(tokenizer, prompt, ids)) == " hello world"


def test_special_tokens_give_no_text(tokenizer):
    ids = [*tokenizer.encode("Hi", add_special_tokens=False), tokenizer.eos_token_id]
    ids += tokenizer.encode(" there", add_special_tokens=False)
    assert "".join(deltas(tokenizer, [], ids)) == "Hi there"


@settings(max_examples=60, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from([*"abc xyz.,\n", "é", "ß", "中", "文", "😀", "🦜", "ก"]),
        max_size=40,
    ),
    st.text(alphabet="ab ", max_size=8),
)
def test_deltas_join_to_the_text(tokenizer, text, prompt_text):
    prompt = tokenizer.encode(prompt_text, add_special_tokens=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    parts = deltas(tokenizer, prompt, ids)
    assert "".join(parts) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in parts)


def test_flush_returns_an_unfinished_character(tokenizer):
    ids = tokenizer.encode("ok 🦜", add_special_tokens=False)[:-1]  # cut inside the parrot
    detok = IncrementalDetokenizer(tokenizer, [])
    text = "".join(detok.push(t) for t in ids)
    assert text + detok.flush() == tokenizer.decode(ids)
    assert tokenizer.decode(ids).endswith("\ufffd")
    assert detok.flush() == ""
