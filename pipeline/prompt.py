"""The prompt: retrieved passages + the conversation, within a token budget it never exceeds.

Passages go in best first while they fit; the first one that does not fit is cut to the room
left (when that room is worth having), and the rest stay out. Every candidate prompt is
tokenised whole, so the count is exact: no estimate, no overflow of the model's window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from pipeline.wire import ContextTooLongError

SYSTEM_INSTRUCTION = (
    "Answer the question using the numbered context passages below. "
    "If they do not hold the answer, say so."
)
# A base model (no chat template) reads the conversation as question and answer lines and
# would go on to a question of its own: its answer ends there.
BASE_STOP = ("\nQuestion:",)
# A passage cut to fewer tokens than this is more noise than context: leave it out.
MIN_PASSAGE_TOKENS = 32


class PassageLike(Protocol):
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class BuiltPrompt:
    token_ids: list[int]
    passages: list[PassageLike]  # those in the prompt, best first (the last one may be cut)
    cut_last: bool  # the last passage was shortened to fit


Render = Callable[[str], str]  # context block ("" for none) -> the whole prompt text


def context_block(passages: Sequence[PassageLike], texts: Sequence[str] | None = None) -> str:
    texts = [p.text for p in passages] if texts is None else texts
    pairs = zip(passages, texts, strict=True)
    return "\n\n".join(f"[{i}] {p.title}\n{text}" for i, (p, text) in enumerate(pairs, 1))


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
) -> BuiltPrompt:
    """The longest best-first run of `passages` whose prompt is at most `budget` tokens."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    ids = encode(render(""))
    if len(ids) > budget:
        raise ContextTooLongError(
            f"the request is {len(ids)} tokens before any context; the limit is {budget} "
            "(the model's window minus max_tokens, capped by generation.max_prompt_tokens)"
        )
    chosen: list[PassageLike] = []
    texts: list[str] = []
    for passage in passages:
        candidate = encode(render(context_block([*chosen, passage], [*texts, passage.text])))
        if len(candidate) <= budget:
            chosen.append(passage)
            texts.append(passage.text)
            ids = candidate
            continue
        cut = _cut_to_fit(encode, render, chosen, texts, passage, budget, len(candidate) - budget)
        if cut is not None:
            return BuiltPrompt(cut, [*chosen, passage], cut_last=True)
        break
    return BuiltPrompt(ids, chosen, cut_last=False)


def _cut_to_fit(
    encode: Callable[[str], list[int]],
    render: Render,
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
        ids = encode(render(context_block([*chosen, passage], [*texts, text])))
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
