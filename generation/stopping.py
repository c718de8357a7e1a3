"""Where generation ends inside an accepted chunk: the first EOS token, or the first token that
completes a stop string. Nothing after it is emitted.

A step accepts several tokens at once, so stop conditions are checked token by token within the
chunk, exactly as plain decoding would have checked them one step at a time. Token ids keep the
EOS / stop-completing token (like transformers' `generate`); the text ends before the stop
string (like the OpenAI API). Text that might be the start of a stop string is held back until
the next tokens show whether it is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from generation.detokenize import IncrementalDetokenizer


@dataclass(frozen=True)
class Cut:
    """What to keep of one accepted chunk."""

    n_tokens: int  # tokens of the chunk to emit
    text: str  # text safe to emit now
    reason: str | None  # "eos", "stop", or None to go on


class StopScanner:
    """Turns accepted tokens into text and finds the exact token where generation stops."""

    def __init__(
        self, detokenizer: IncrementalDetokenizer, eos_ids: frozenset[int], stop: Sequence[str]
    ) -> None:
        self._detokenizer = detokenizer
        self._eos_ids = eos_ids
        self._stop = tuple(stop)
        self._longest = max((len(s) for s in self._stop), default=0)
        self._pending = ""  # decoded text not yet emitted

    def scan(self, tokens: np.ndarray) -> Cut:
        """Feed one accepted chunk; say how much of it stands and what text it releases."""
        for i, token in enumerate(tokens.tolist()):
            if token in self._eos_ids:
                return Cut(i + 1, self.flush(), "eos")
            delta = self._detokenizer.push(token)
            if not delta:
                continue
            self._pending += delta
            at = self._find_stop(len(delta))
            if at is not None:
                text, self._pending = self._pending[:at], ""
                return Cut(i + 1, text, "stop")
        return Cut(len(tokens), self._release(), None)

    def flush(self) -> str:
        """All text still held, incomplete characters included: generation has ended."""
        text, self._pending = self._pending + self._detokenizer.flush(), ""
        return text

    def _find_stop(self, new_chars: int) -> int | None:
        """Start of the earliest stop string that ends inside the newest `new_chars` characters."""
        starts = []
        for stop in self._stop:
            lo = max(0, len(self._pending) - new_chars - len(stop) + 1)
            at = self._pending.find(stop, lo)
            if at >= 0:
                starts.append(at)
        return min(starts, default=None)

    def _release(self) -> str:
        """Pending text minus its longest tail that could still grow into a stop string."""
        keep = 0
        for k in range(min(self._longest - 1, len(self._pending)), 0, -1):
            tail = self._pending[-k:]
            if any(stop.startswith(tail) for stop in self._stop):
                keep = k
                break
        text = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return text
