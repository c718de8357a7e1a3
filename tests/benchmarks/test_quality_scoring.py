"""`bench-quality`'s judge: normalised containment, abstention, citations."""

import pytest

from benchmarks.quality_scoring import abstained, citations, contains, holds_answer, normalise


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("The ferry leaves every forty minutes [1].", "40 minutes"),
        ("It has forty-eight thousand books.", "48000"),
        ("About 48,000 volumes.", "48000"),
        ("A stair of one hundred and forty-two steps.", "142 steps"),
        ("It is 31m tall.", "31 metres"),
        ("The island covers 84 km².", "84 square kilometres"),
        ("Bake it at 180 °C.", "180 degrees"),
        ("It is closed on Sunday and Monday.", "Sundays and Mondays"),
        ("The wind blows from the south-west.", "south west"),
        ("TOBIAS WREN designed it.", "Tobias Wren"),
        ("It leaves at 7:15.", "7:15"),
        ("Entry is 3.40 crowns.", "3.40 crowns"),
        ("Eighty per cent of them.", "80%"),
    ],
)
def test_a_gold_answer_is_found_through_its_other_spellings(text, gold):
    assert contains(text, gold)


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("Every 400 minutes.", "40 minutes"),  # whole words: 40 is not in 400
        ("Every four days.", "40 minutes"),
        ("Two and three.", "5"),  # "and" joins number words only after a scale word
        ("Six seven.", "13"),
        ("See passage [12].", "12"),  # a citation is not an answer
        ("Ada Fenlowe.", "Ada Fenlow"),
        ("", "green"),
    ],
)
def test_near_misses_are_not_answers(text, gold):
    assert not contains(text, gold)


def test_normalise_is_idempotent_and_gold_lists_are_any_of():
    text = "One hundred and forty-two steps lead to the 19-mile light."
    assert normalise(normalise(text)) == normalise(text)
    assert holds_answer("It is green.", ["blue", "green"])
    assert not holds_answer("It is green.", [])


@pytest.mark.parametrize(
    "answer",
    [
        "The passages do not mention the population.",
        "This information is not provided in the context.",
        "I don't know.",
        "The context doesn’t say who the mayor is.",
        "There is no information about that.",
        "I cannot answer that from the passages.",
    ],
)
def test_abstentions(answer):
    assert abstained(answer)


@pytest.mark.parametrize(
    "answer",
    ["There is no service on Sundays.", "The library is closed on Mondays.", "It is 31 metres."],
)
def test_answers_that_are_not_abstentions(answer):
    assert not abstained(answer)


def test_citations_in_order_each_once():
    assert citations("A [2], b [1, 3] and [2] again; not [x] or [].") == [2, 1, 3]
    assert citations("no citation") == []
