"""How `bench-quality` judges one answer: normalised containment of a gold answer, abstention,
and the `[n]` citations it makes.

A short answer is right when a gold answer appears in it as whole words once both are
normalised: case, punctuation, number words ("forty-two" is "42", "48,000" is "48000"), plural
"s", and unit spellings ("metres", "m"; "per cent", "%"). Containment, not exact match, because
a model that answers "The ferry leaves every 40 minutes." has answered; the gold answers are
kept short so that containment is not generous.
"""

from __future__ import annotations

import re
import unicodedata

_SMALL = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_WORDS = {w: i for i, w in enumerate(_SMALL)} | {w: 10 * i for i, w in enumerate(_TENS, 2)}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}

# Spellings of a unit -> one token (matched after plurals lose their "s").
UNITS = {
    "square kilometre": "km2",
    "square kilometer": "km2",
    "square km": "km2",
    "sq km": "km2",
    "km 2": "km2",  # km² after NFKC
    "kilometre": "km",
    "kilometer": "km",
    "millimetre": "mm",
    "millimeter": "mm",
    "centimetre": "cm",
    "centimeter": "cm",
    "metre": "m",
    "meter": "m",
    "minute": "min",
    "per cent": "percent",
    "%": " percent",
    "degrees celsius": "degree",
    "degree celsius": "degree",
    "°c": " degree",
    "°": " degree",
}
_UNIT_RE = re.compile(
    "|".join(
        rf"(?<![a-z]){re.escape(k)}(?![a-z])" if k[0].isalpha() else re.escape(k)
        for k in sorted(UNITS, key=len, reverse=True)
    )
)

_ABSTAIN_RE = re.compile(
    r"\b(?:(?:do|does|did)(?:n't| not) (?:hold|mention|say|state|specify|provide|contain|include"
    r"|give|tell|have)"
    r"|no (?:information|mention|answer|details?|data)"
    r"|not (?:mentioned|provided|specified|stated|given|known|available|included|found|listed)"
    r"|(?:cannot|can't|unable to) (?:answer|find|determine|say|tell|be determined|be found)"
    r"|i (?:don't|do not) know"
    r"|unknown)\b"
)
_CITATION_RE = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def normalise(text: str) -> str:
    """Lower case, number words as digits, one spelling per unit, words only."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    text = _CITATION_RE.sub(" ", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 48,000 -> 48000
    text = re.sub(r"(?<=\d)(?=[a-z%°])|(?<=[a-z])(?=\d)", " ", text)  # 31m -> 31 m
    text = re.sub(r"[^\w\s.:%°²]|_", " ", text)  # hyphens and punctuation to spaces
    text = re.sub(r"(?<!\d)[.:]|[.:](?!\d)", " ", text)  # keep 3.40 and 7:15 only
    words = [_singular(w) for w in text.split()]
    text = " ".join(_numbers(words))
    return " ".join(_UNIT_RE.sub(lambda m: UNITS[m.group(0)], text).split())


def contains(text: str, gold: str) -> bool:
    """`gold` appears in `text` as whole words, both normalised."""
    needle = normalise(gold)
    return bool(needle) and f" {needle} " in f" {normalise(text)} "


def holds_answer(text: str, golds: list[str]) -> bool:
    return any(contains(text, gold) for gold in golds)


def abstained(answer: str) -> bool:
    """The answer says the passages do not hold the answer (or that it does not know)."""
    text = unicodedata.normalize("NFKC", answer).lower().replace("’", "'")
    return bool(_ABSTAIN_RE.search(text))


def citations(answer: str) -> list[int]:
    """The passage numbers an answer cites as `[n]` or `[n, m]`, in order, each once."""
    found = [int(n) for group in _CITATION_RE.findall(answer) for n in group.split(",")]
    return list(dict.fromkeys(found))


def _singular(word: str) -> str:
    if (
        len(word) > 3
        and word.endswith("s")
        and word[-2:] not in ("ss", "us", "is")
        and word.isalpha()
    ):
        return word[:-1]
    return word


def _numbers(words: list[str]) -> list[str]:
    """Runs of number words ("one hundred and forty two") as one number ("142")."""
    out: list[str] = []
    total = current = 0
    run: list[str] = []

    def flush() -> None:
        nonlocal total, current, run
        if run:
            if run[-1] == "and":  # "... two and" : the "and" belongs to the sentence
                run.pop()
                out.append(str(total + current))
                out.append("and")
            else:
                out.append(str(total + current))
        total = current = 0
        run = []

    for word in words:
        if word in NUMBER_WORDS:
            if run and run[-1] in NUMBER_WORDS and not (current % 10 == 0 < current % 100):
                flush()  # "six seven" is two numbers; "forty two" is one
            current += NUMBER_WORDS[word]
        elif word in SCALES and run:
            if SCALES[word] == 100:
                current *= 100
            else:
                total, current = total + current * SCALES[word], 0
        elif word == "and" and run and run[-1] in SCALES:
            pass
        else:
            flush()
            out.append(word)
            continue
        run.append(word)
    flush()
    return out
