from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.prompt import (
    BASE_STOP,
    MIN_PASSAGE_TOKENS,
    SYSTEM_INSTRUCTION,
    base_render,
    bos_text,
    build_prompt,
    chat_render,
    completion_render,
    document_order,
)
from pipeline.wire import ContextTooLongError


@dataclass(frozen=True)
class P:
    id: str
    title: str
    text: str
    doc_id: str = "json"
    start: int = 0


WORDS = [
    "json",
    "load",
    "dumps",
    "parse",
    "string",
    "object",
    "file",
    "encoder",
    "decoder",
    "indent",
    "sort",
    "keys",
]


def passage(i: int, n_words: int, doc_id: str = "json", start: int | None = None) -> P:
    """Passage i; by default the i-th of one document, so document order is ranking order."""
    text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n_words))
    return P(f"p{i}", f"json.t{i}", text, doc_id, 100 * i if start is None else start)


def n_tokens(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=False))


QUESTION = [{"role": "user", "content": "How do I parse JSON?"}]


def test_passages_go_in_best_first_while_they_fit(tokenizer):
    passages = [passage(i, 20) for i in range(4)]
    render = chat_render(tokenizer, QUESTION)
    everything = build_prompt(tokenizer, render, passages, budget=10_000)
    assert [p.id for p in everything.passages] == ["p0", "p1", "p2", "p3"]
    assert not everything.cut_last
    text = tokenizer.decode(everything.token_ids)
    assert text.index("[1] json.t0") < text.index("[2] json.t1") < text.index("How do I parse")
    # The ids are exactly the tokenised prompt text: no estimate.
    assert everything.token_ids == tokenizer.encode(
        render(text[text.index("[1]") : text.index("<|im_end|>", text.index("[1]"))]),
        add_special_tokens=False,
    )


def test_a_passage_that_does_not_fit_is_cut_and_the_rest_left_out(tokenizer):
    passages = [passage(0, 30), passage(1, 300), passage(2, 30)]
    render = chat_render(tokenizer, QUESTION)
    base = len(build_prompt(tokenizer, render, passages[:1], 10_000).token_ids)
    budget = base + 100
    prompt = build_prompt(tokenizer, render, passages, budget)
    assert [p.id for p in prompt.passages] == ["p0", "p1"]
    assert prompt.cut_last
    assert budget - 5 <= len(prompt.token_ids) <= budget
    text = tokenizer.decode(prompt.token_ids)
    body = text[text.index("[2] json.t1\n") + len("[2] json.t1\n") : text.index("<|im_end|>")]
    assert passages[1].text.startswith(body)


# Ranked best first, but from two documents and out of place in them.
RANKED = [
    passage(0, 20, doc_id="json", start=900),
    passage(1, 20, doc_id="csv", start=0),
    passage(2, 20, doc_id="json", start=10),
    passage(3, 20, doc_id="csv", start=500),
]


def test_the_instruction_then_passages_in_document_order_then_the_question(tokenizer):
    render = chat_render(tokenizer, QUESTION)
    prompt = build_prompt(tokenizer, render, RANKED, budget=10_000)
    assert [p.id for p in prompt.passages] == ["p1", "p3", "p2", "p0"]  # csv 0, 500; json 10, 900
    text = tokenizer.decode(prompt.token_ids)
    at = [text.index(part) for part in (SYSTEM_INSTRUCTION, "[1] json.t1", "[2] json.t3")]
    at += [text.index(part) for part in ("[3] json.t2", "[4] json.t0", "How do I parse")]
    assert at == sorted(at)
    by_score = build_prompt(tokenizer, render, RANKED, budget=10_000, order="score")
    assert [p.id for p in by_score.passages] == ["p0", "p1", "p2", "p3"]
    assert tokenizer.decode(by_score.token_ids).index("[1] json.t0") > 0


def test_the_same_passages_in_another_ranking_give_the_same_prompt(tokenizer):
    """So requests that retrieve them share everything but the question, whatever the scores."""
    render = chat_render(tokenizer, QUESTION)
    one = build_prompt(tokenizer, render, RANKED, budget=10_000)
    other = build_prompt(tokenizer, render, RANKED[::-1], budget=10_000)
    assert one.token_ids == other.token_ids
    assert one.passages == other.passages
    asked = chat_render(tokenizer, [{"role": "user", "content": "What is csv.reader?"}])
    another = build_prompt(tokenizer, asked, [*RANKED[2:], *RANKED[:2]], budget=10_000)
    pairs = zip(one.token_ids, another.token_ids, strict=False)
    shared = next(i for i, (a, b) in enumerate(pairs) if a != b)
    assert f"[4] json.t0\n{RANKED[0].text}" in tokenizer.decode(one.token_ids[:shared])


def test_the_budget_chooses_best_first_whatever_the_order(tokenizer):
    render = chat_render(tokenizer, QUESTION)
    two = build_prompt(tokenizer, render, RANKED[:2], budget=10_000, order="score")
    budget = len(two.token_ids) + 12  # two whole passages and a sliver: no third
    for order in ("document", "score"):
        prompt = build_prompt(tokenizer, render, RANKED, budget, order=order)
        assert {p.id for p in prompt.passages} == {"p0", "p1"}
        assert len(prompt.token_ids) <= budget
    long_third = passage(2, 300, doc_id="json", start=10)
    cut = build_prompt(tokenizer, render, [*RANKED[:2], long_third], budget + 60)
    assert [p.id for p in cut.passages] == ["p1", "p2", "p0"]  # the cut one in its place
    assert cut.cut_last
    assert budget + 60 - 5 <= len(cut.token_ids) <= budget + 60


def test_a_sliver_of_room_is_not_worth_a_cut_passage(tokenizer):
    passages = [passage(0, 30), passage(1, 300)]
    render = chat_render(tokenizer, QUESTION)
    base = len(build_prompt(tokenizer, render, passages[:1], 10_000).token_ids)
    prompt = build_prompt(tokenizer, render, passages, base + MIN_PASSAGE_TOKENS // 2)
    assert [p.id for p in prompt.passages] == ["p0"]
    assert not prompt.cut_last


def test_a_request_too_long_by_itself_is_refused_with_its_size(tokenizer):
    render = chat_render(tokenizer, [{"role": "user", "content": "word " * 500}])
    with pytest.raises(ContextTooLongError, match=r"the request is \d+ tokens .* limit is 100"):
        build_prompt(tokenizer, render, [passage(0, 10)], budget=100)


def test_completion_prompts_are_raw_text_after_the_context(tokenizer):
    prompt = build_prompt(tokenizer, completion_render(tokenizer, "def f("), [passage(0, 5)], 1000)
    assert tokenizer.decode(prompt.token_ids) == f"[1] json.t0\n{passage(0, 5).text}\n\ndef f("
    bare = build_prompt(tokenizer, completion_render(tokenizer, "def f("), [], 1000)
    assert tokenizer.decode(bare.token_ids) == "def f("


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 400), min_size=0, max_size=6),
    budget=st.integers(40, 900),
    starts=st.permutations(range(6)),
    order=st.sampled_from(["document", "score"]),
)
def test_the_prompt_never_exceeds_the_budget(tokenizer, lengths, budget, starts, order):
    passages = [passage(i, n, start=starts[i]) for i, n in enumerate(lengths)]
    render = chat_render(tokenizer, QUESTION)
    try:
        prompt = build_prompt(tokenizer, render, passages, budget, order=order)
    except ContextTooLongError:
        assert n_tokens(tokenizer, render("")) > budget
        return
    assert len(prompt.token_ids) <= budget
    # Best first: the passages used are a prefix of the ranking, in the prompt in `order`.
    best = passages[: len(prompt.passages)]
    assert prompt.passages == (sorted(best, key=document_order) if order == "document" else best)


def test_a_base_model_gets_question_and_answer_lines_after_the_context(tokenizer):
    messages = [
        {"role": "user", "content": "How do I parse JSON?"},
        {"role": "assistant", "content": "With json.loads."},
        {"role": "user", "content": "And write it?"},
    ]
    prompt = build_prompt(tokenizer, base_render(tokenizer, messages), [passage(0, 5)], 1000)
    assert tokenizer.decode(prompt.token_ids) == (
        f"{SYSTEM_INSTRUCTION}\n\n[1] json.t0\n{passage(0, 5).text}\n\n"
        "Question: How do I parse JSON?\nAnswer: With json.loads.\nQuestion: And write it?\n"
        "Answer:"
    )
    bare = build_prompt(tokenizer, base_render(tokenizer, messages[:1]), [], 1000)
    assert tokenizer.decode(bare.token_ids) == "Question: How do I parse JSON?\nAnswer:"
    assert BASE_STOP == ("\nQuestion:", "\n\n")  # what the model writes after its answer


class BosTokenizer:
    """A tokenizer that puts BOS (id 2) before any text it encodes, as Gemma's and Llama's do."""

    bos_token, bos_token_id = "<bos>", 2

    def encode(self, text, add_special_tokens=True):
        ids = [ord(c) + 10 for c in text.replace(self.bos_token, "\x00")]
        ids = [self.bos_token_id if i == 10 else i for i in ids]
        return [self.bos_token_id, *ids] if add_special_tokens else ids


def test_prompts_start_with_bos_where_the_tokenizer_adds_one(tokenizer):
    assert bos_text(tokenizer) == ""  # SmolLM2's tokenizer adds none
    bos = BosTokenizer()
    assert bos_text(bos) == "<bos>"
    assert completion_render(bos, "def f(")("") == "<bos>def f("
    assert base_render(bos, QUESTION)("").startswith("<bos>Question: ")
    ids = build_prompt(bos, base_render(bos, QUESTION), [], 1000).token_ids
    assert ids[0] == 2
    assert ids.count(2) == 1
