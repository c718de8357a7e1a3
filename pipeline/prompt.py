"""The prompt: retrieved passages + the conversation, within a token budget it never exceeds.

The instruction comes first, then the passages, then the question, so that requests share the
longest prefix they can (the decoder reuses the KV of a prefix it has computed before). Which
passages go in is decided best first: each goes in while it fits; the first one that does not
fit is cut to the room left (when that room is worth having), and the rest stay out. Their order
in the prompt is `document` (by document, then position in it: requests that retrieve the same
passages, in whatever ranking, share the whole context) or `score` (best first). Every candidate
prompt is tokenised whole, in its final order, so the count is exact: no estimate, no overflow
of the model's window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from pipeline.config import PassageOrder
from pipeline.wire import ContextTooLongError

SYSTEM_INSTRUCTION = (
    "Answer the question using the numbered context passages below. "
    "If they do not hold the answer, say so."
)
# A base model (no chat template) reads the conversation as question and answer lines and
# goes on after its answer: to a question of its own, or a blank line and a passage it makes
# up (Gemma 3 270M does both). Its answer ends there.
BASE_STOP = ("\nQuestion:", "\n\n")
# A passage cut to fewer tokens than this is more noise than context: leave it out.
MIN_PASSAGE_TOKENS = 32


class PassageLike(Protocol):
    id: str
    doc_id: str
    start: int  # where the passage starts in its document
    title: str
    text: str


@dataclass(frozen=True)
class BuiltPrompt:
    token_ids: list[int]
    passages: list[PassageLike]  # those in the prompt, in prompt order ([1], [2], ...)
    cut_last: bool  # the lowest-ranked passage in it (the last one chosen) was shortened to fit


Render = Callable[[str], str]  # context block ("" for none) -> the whole prompt text


def document_order(passage: PassageLike) -> tuple[str, int, str]:
    return passage.doc_id, passage.start, passage.id


def context_block(passages: Sequence[PassageLike], texts: Sequence[str]) -> str:
    pairs = zip(passages, texts, strict=True)
    return "\n\n".join(f"[{i}] {p.title}\n{text}" for i, (p, text) in enumerate(pairs, 1))


def prompt_order(passages: Sequence[PassageLike], order: PassageOrder) -> list[int]:
    """Indices of `passages` (best first) in the order they take in the prompt."""
    if order == "score":
        return list(range(len(passages)))
    return sorted(range(len(passages)), key=lambda i: document_order(passages[i]))


def chat_render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> Render:
    """The chat template over `messages`, a system message with the context going first."""

    def render(context: str) -> str:
        system = [{"role": "system", "content": f"{SYSTEM_INSTRUCTION}\n\n{context}"}]
        return tokenizer.apply_chat_template(
            (system if context else []) + list(messages),
            tokenize=False,
            add_generation_prompt=True,
        )

    return render


def base_render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> Render:
    """A completion prompt for a model without a chat template: the instruction and context,
    then each user turn as `Question: ...` and each assistant turn as `Answer: ...`, ending in
    `Answer:` for the model to continue (stop it at `BASE_STOP`)."""
    labels = {"user": "Question: ", "assistant": "Answer: ", "system": ""}
    turns = "".join(f"{labels.get(m['role'], '')}{m['content']}\n" for m in messages)
    bos = bos_text(tokenizer)

    def render(context: str) -> str:
        head = f"{SYSTEM_INSTRUCTION}\n\n{context}\n\n" if context else ""
        return f"{bos}{head}{turns}Answer:"

    return render


def completion_render(tokenizer: PreTrainedTokenizerBase, prompt: str) -> Render:
    """Raw text continuation: the context block, then the caller's prompt as given (after the
    BOS token, where the tokenizer puts one before any text)."""
    bos = bos_text(tokenizer)
    return lambda context: f"{bos}{context}\n\n{prompt}" if context else f"{bos}{prompt}"


def bos_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS token as text where encoding adds it (Gemma, Llama), else "": prompts are
    encoded without special tokens, and such a model reads text without BOS poorly."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer.encode("a")[:1] != [bos]:
        return ""
    return tokenizer.bos_token


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    render: Render,
    passages: Sequence[PassageLike],
    budget: int,
    order: PassageOrder = "document",
) -> BuiltPrompt:
    """The longest best-first run of `passages` whose prompt is at most `budget` tokens, the
    passages in `order`."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(chosen: Sequence[PassageLike], texts: Sequence[str]) -> list[int]:
        where = prompt_order(chosen, order)
        return encode(render(context_block([chosen[i] for i in where], [texts[i] for i in where])))

    def in_order(chosen: list[PassageLike]) -> list[PassageLike]:
        return [chosen[i] for i in prompt_order(chosen, order)]

    ids = encode(render(""))
    if len(ids) > budget:
        raise ContextTooLongError(
            f"the request is {len(ids)} tokens before any context; the limit is {budget} "
            "(the model's window minus max_tokens, capped by generation.max_prompt_tokens)"
        )
    chosen: list[PassageLike] = []
    texts: list[str] = []
    for passage in passages:
        candidate = prompt_ids([*chosen, passage], [*texts, passage.text])
        if len(candidate) <= budget:
            chosen.append(passage)
            texts.append(passage.text)
            ids = candidate
            continue
        overflow = len(candidate) - budget
        cut = _cut_to_fit(encode, prompt_ids, chosen, texts, passage, budget, overflow)
        if cut is not None:
            return BuiltPrompt(cut, in_order([*chosen, passage]), cut_last=True)
        break
    return BuiltPrompt(ids, in_order(chosen), cut_last=False)


def _cut_to_fit(
    encode: Callable[[str], list[int]],
    prompt_ids: Callable[[Sequence[PassageLike], Sequence[str]], list[int]],
    chosen: list[PassageLike],
    texts: list[str],
    passage: PassageLike,
    budget: int,
    overflow: int,
) -> list[int] | None:
    """The prompt ids with `passage` shortened until they fit, or None if too little is left.

    Re-tokenising the cut text can shift a boundary by a token, so shorten and re-check."""
    keep = len(encode(passage.text)) - overflow
    while keep >= MIN_PASSAGE_TOKENS:
        text = _prefix_within(encode, passage.text, keep)
        ids = prompt_ids([*chosen, passage], [*texts, text])
        if len(ids) <= budget:
            return ids
        keep -= len(ids) - budget
    return None


def _prefix_within(encode: Callable[[str], list[int]], text: str, keep: int) -> str:
    """The longest prefix of `text` that encodes to at most `keep` tokens (binary search)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(text[:mid])) <= keep:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]
