"""The replay channel: the answer a prompt got last time, drafted again when it comes back.

A popular question asked again word for word retrieves the same passages and so builds the same
prompt, token for token; greedy decoding then writes the same answer (in float32 exactly; in
bfloat16 up to near-ties that a batch of another shape may round the other way). The n-gram
channels draft that answer only in pieces (a continuation seen once scores 1/2 a step, and the
global channel's share is a tenth), so a repeat decoded almost as slowly as a first ask. Replayed,
the previous answer is one chain, drafted from the position the new answer has reached for as
long as the new answer keeps to it: a repeat takes a handful of verify passes instead of one a
token. Lossless like every draft: the model verifies every token, and at the first one it writes
differently the channel falls silent for the rest of the request.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from trie_store.config import SCORE_UNIT, as_int
from trie_store.draft import Draft
from trie_store.tokens import as_tokens

# A replayed token's score given its parent's (before the request's calibration has seen one
# verified): a repeat is accepted whole in float32, so the chain's first dozen tokens outrank
# anything the n-gram channels offer, and a first wrong token costs one step of rows.
REPLAY_SCORE = 0.9
# The replay's share of a merged node's score (the request and global channels share the rest).
REPLAY_WEIGHT = 0.9
MAX_ANSWERS = 4096  # prompts remembered per replica: answers of ~256 tokens, ~8 MB in all


class AnswerMemory:
    """Each prompt's last greedy answer, keyed by the prompt's exact token ids; the least
    recently used prompt goes first when `max_answers` are held. Not thread-safe: the thread
    that steps the batch prepares and finishes every request (`pipeline.batching`)."""

    def __init__(self, max_answers: int = MAX_ANSWERS) -> None:
        self.max_answers = as_int(max_answers, "max_answers", minimum=1)
        self._answers: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def recall(self, prompt: object) -> np.ndarray | None:
        """The answer last remembered for exactly this prompt, or None."""
        key = _key(prompt)
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
        return answer

    def remember(self, prompt: object, answer: object) -> None:
        """Keep `answer` (a non-empty token sequence) as this prompt's, replacing an older one."""
        tokens = as_tokens(answer).copy()  # the caller's list or array may change after
        if len(tokens) == 0:
            return
        key = _key(prompt)
        self._answers[key] = tokens
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_answers:
            self._answers.popitem(last=False)


class Replay:
    """One request's replay of a previous answer: `observe` what the request accepts, `draft`
    the rest of the previous answer from there while every accepted token matched it."""

    def __init__(self, answer: object, score: float = REPLAY_SCORE) -> None:
        if not 0.0 < score <= 1.0:
            raise ValueError(f"score must be in (0, 1], got {score}")
        self.answer = as_tokens(answer)
        self.position = 0  # answer tokens the request has accepted, all matching
        self.on_track = True
        units = np.floor(score ** np.arange(1, len(self.answer) + 1) * SCORE_UNIT)
        self._scores = units / SCORE_UNIT  # exact, non-increasing, as every drafted score

    def observe(self, tokens: object) -> None:
        if not self.on_track:
            return
        new = as_tokens(tokens)
        end = self.position + len(new)
        expected = self.answer[self.position : end]
        if len(expected) < len(new) or not np.array_equal(expected, new):
            self.on_track = False  # diverged, or ran past the previous answer's end
            return
        self.position = end

    def draft(self, root: int, max_nodes: int) -> Draft:
        """The next `max_nodes` tokens of the previous answer as a chain under `root`; the
        empty draft once the request has left it or reached its end."""
        budget = as_int(max_nodes, "max_nodes")
        if not self.on_track or budget == 0:
            return Draft.root_only(root)
        chain = self.answer[self.position : self.position + budget]
        n = len(chain)
        return Draft(
            tokens=np.concatenate([[root], chain]).astype(np.int64),
            parent=np.arange(-1, n, dtype=np.int32),
            depth=np.arange(n + 1, dtype=np.int32),
            scores=np.concatenate([[1.0], self._scores[:n]]),
        )


def _key(prompt: object) -> bytes:
    return hashlib.blake2b(as_tokens(prompt).tobytes(), digest_size=16).digest()
