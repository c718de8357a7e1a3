"""Incremental detokenisation: text deltas for tokens as they arrive, equal in sum to one decode.

Decoding tokens one by one breaks on byte-level pieces (a multi-byte character split over
several tokens decodes to U+FFFD until its last byte arrives) and on tokenizers that drop a
leading space at the start of a decode. So each delta is the difference between decoding a
short window with and without the new tokens, and nothing is emitted while the window still
ends inside a character (the offsets scheme of vLLM and TGI).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

_REPLACEMENT = "\ufffd"
# Prompt tokens kept as left context, so the first generated word decodes with its space.
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Feed generated token ids one at a time; each call returns the text they complete."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = [int(t) for t in prompt_ids[-_CONTEXT_TOKENS:]]
        self._prefix = 0  # window start: context that shapes how the next piece decodes
        self._read = len(self._ids)  # tokens before this are already emitted as text
        self._prefix_text = self._decode(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def push(self, token: int) -> str:
        """The new text once `token` is appended ("" while a character is still incomplete)."""
        self._ids.append(int(token))
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(self._prefix_text) or text.endswith(_REPLACEMENT):
            return ""
        delta = text[len(self._prefix_text) :]
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix : self._read])
        return delta

    def flush(self) -> str:
        """Whatever the pending tokens decode to, incomplete characters included: the end."""
        delta = self._decode(self._ids[self._prefix :])[len(self._prefix_text) :]
        self._prefix = self._read = len(self._ids)
        self._prefix_text = ""
        return delta
