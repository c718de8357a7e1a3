"""One plan for every request: the settings and what a caller asks for -> a checked job.

The HTTP API, `lookahead-rag ask` and the batch job all plan here, so the defaults (passages in
the prompt, answer length, whether lookahead runs) and the limits apply one way everywhere.
Planning comes before retrieval: it says what to look up and how many passages to fetch, and
`Plan.job(passages)` makes the `GenerationJob` once they are found.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipeline.config import Config
from pipeline.text import is_blank, unicode_problem
from pipeline.wire import GenerationJob

# Sampling at a temperature this close to 0 is greedy decoding in all but name (its limit), and
# dividing the logits by it overflows them to inf: such a request decodes greedily.
MIN_TEMPERATURE = 1e-4


class PlanError(ValueError):
    """A request the settings refuse; `param` and `code` name the field and the reason."""

    def __init__(self, message: str, param: str | None, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


@dataclass(frozen=True)
class JobRequest:
    """What a caller asks for: a chat (`messages`) or a completion (`prompt`); None takes the
    configured default."""

    messages: tuple[dict[str, str], ...] = ()
    prompt: str | None = None
    top_k: int | None = None  # passages in the prompt
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    rag: bool = True  # False: no retrieval at all
    lookahead: bool = True  # False: plain decoding (also when the settings turn it off)
    prefix_cache: bool = True  # False: no prefix KV reuse (also when the settings turn it off)
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    from_question: bool = False  # made by `question`: errors name the `question` field

    @classmethod
    def question(cls, question: str, **options: Any) -> JobRequest:
        """One user question, as `/v1/rag`, `ask` and the batch job put it."""
        return cls(messages=({"role": "user", "content": question},), from_question=True, **options)

    @property
    def text_param(self) -> str:
        """The request field that holds its text, as the caller named it."""
        if self.from_question:
            return "question"
        return "prompt" if self.prompt is not None else "messages"

    @property
    def query(self) -> str:
        """What retrieval looks up: the prompt, or the last user message."""
        if self.prompt is not None:
            return self.prompt
        return self.messages[-1]["content"] if self.messages else ""

    def texts(self) -> Iterator[tuple[str, Any]]:
        """(field, text) for every text of the request: the prompt, messages and stops."""
        if self.prompt is not None:
            yield "prompt", self.prompt
        for i, message in enumerate(self.messages):
            field = "question" if self.from_question else f"messages[{i}].content"
            yield field, message["content"]
        for i, stop in enumerate(self.stop):
            yield f"stop[{i}]", stop


@dataclass(frozen=True)
class Plan:
    """A checked request: what to retrieve, and the job it becomes with the passages found."""

    query: str
    retrieve_k: int  # passages to fetch: those for the prompt and more to seed the trie; 0: none
    template: GenerationJob  # everything but the passages

    def job(self, passages: Sequence[Any] = ()) -> GenerationJob:
        return replace(self.template, passages=tuple(passages))


def plan_job(request: JobRequest, config: Config) -> Plan:
    """Apply the settings' defaults and limits to `request`; raises `PlanError`."""
    limits = config.limits
    if not isinstance(request.query, str) or is_blank(request.query):
        raise PlanError("the question must not be empty", request.text_param, "invalid_value")
    for param, text in request.texts():
        if isinstance(text, str) and (problem := unicode_problem(text)):
            raise PlanError(f"{param} is {problem}", param, "invalid_value")
    chars = len(request.prompt or "") + sum(len(m["content"]) for m in request.messages)
    if chars > limits.max_input_chars:
        raise PlanError(
            f"the input is {chars} characters; the limit is {limits.max_input_chars}",
            request.text_param,
            "input_too_long",
            status=413,
        )
    max_tokens = config.generation.max_tokens if request.max_tokens is None else request.max_tokens
    _check_range("max_tokens", max_tokens, 1, limits.max_tokens)
    top_k = config.retrieval.top_k if request.top_k is None else request.top_k
    _check_range("top_k", top_k, 1, limits.max_top_k)
    if len(request.stop) > limits.max_stop:
        raise PlanError(f"at most {limits.max_stop} stop sequences", "stop", "invalid_value")
    template = GenerationJob(
        messages=request.messages,
        prompt=request.prompt,
        top_k=top_k,
        max_tokens=max_tokens,
        stop=tuple(request.stop),
        lookahead=request.lookahead and config.generation.lookahead,
        prefix_cache=request.prefix_cache and config.generation.prefix_cache,
        temperature=request.temperature if request.temperature >= MIN_TEMPERATURE else 0.0,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
        seed=request.seed,
    )
    retrieve_k = max(top_k, config.retrieval.seed_k) if request.rag else 0
    return Plan(request.query, retrieve_k, template)


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise PlanError(f"{name} must be between {lo} and {hi}, got {value}", name, "invalid_value")
