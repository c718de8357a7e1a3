"""Request and response bodies of the HTTP API: `/v1/rag` and the OpenAI-compatible endpoints.

Requests are strict (a string is never coerced into a number) and check their own shape; every
text must be valid Unicode and the ones that must say something must not be blank
(`pipeline.text`). The limits that come from the config (`max_tokens`, `top_k`, input size) are
checked when the request is planned (`pipeline.planning`), and stated in the OpenAPI schema by
`pipeline.service.openapi`. The OpenAI models ignore fields they do not know, as OpenAI clients
send many optional ones; `/v1/rag` is ours and refuses unknown fields. Responses carry the wire
types (`SourceRef`, `AnswerStats`) as they are.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from pipeline.text import VISIBLE, is_blank, unicode_problem
from pipeline.wire import AnswerStats, SourceRef


def _unicode(value: str) -> str:
    if problem := unicode_problem(value):
        raise ValueError(problem)
    return value


def _not_blank(value: str) -> str:
    if is_blank(value):
        raise ValueError("must not be empty, whitespace or invisible characters only")
    return value


def _integral(value: Any) -> Any:
    """JSON has one kind of number: 16.0 is the integer 16, as JSON Schema's `integer` says
    (strings are still refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]

NON_BLANK_SCHEMA = {"type": "string", "minLength": 1, "pattern": VISIBLE}

Text = Annotated[str, AfterValidator(_unicode)]
NonBlank = Annotated[Text, AfterValidator(_not_blank), WithJsonSchema(NON_BLANK_SCHEMA)]


class GenerationRequest(BaseModel):
    """Fields every generating endpoint takes."""

    model_config = ConfigDict(strict=True, extra="ignore")

    max_tokens: Int | None = None
    # Sampling: temperature 0 is greedy. Lookahead samples from exactly the distribution plain
    # sampling does; a `seed` repeats an answer (same seed, same drafts: see the README).
    temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: Annotated[int, Field(ge=0, le=2**63 - 1), BeforeValidator(_integral)] | None = None
    stream: bool = False
    # Extensions: transformers' repetition penalty (1 = none), retrieval on/off, how many
    # passages go into the prompt (so `top_k` is retrieval's, not sampling's), and plain
    # decoding (lookahead off) for comparisons: the same answers under greedy decoding, the
    # same distribution of answers under sampling; and prefix KV reuse off, for comparisons too
    # (the same answers: the cached KV is the KV a prefill computes).
    # (A penalty near 0 divides the repeated tokens' logits into inf: 0.01 is already extreme.)
    repetition_penalty: float = Field(1.0, ge=0.01, le=10.0, allow_inf_nan=False)
    rag: bool = True
    top_k: Int | None = None
    lookahead: bool = True
    prefix_cache: bool = True

    def answer_tokens(self) -> int | None:
        """The answer length asked for; None: the configured default."""
        return self.max_tokens

    def options(self) -> dict[str, Any]:
        """The `planning.JobRequest` fields every generating endpoint shares."""
        return {
            "top_k": self.top_k,
            "max_tokens": self.answer_tokens(),
            "rag": self.rag,
            "lookahead": self.lookahead,
            "prefix_cache": self.prefix_cache,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }


class RagRequest(GenerationRequest):
    model_config = ConfigDict(strict=True, extra="forbid")

    question: NonBlank


def _text_content(value: Any) -> Any:
    """OpenAI content is a string or a list of parts; only text parts mean anything here."""
    if not isinstance(value, list):
        return value
    if not all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        raise ValueError('only text parts ({"type": "text", "text": "..."}) are supported')
    return "".join(p["text"] for p in value)


_TEXT_PART = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
Content = Annotated[
    Text,
    BeforeValidator(_text_content),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}),
]


def _one_or_many(value: Any) -> Any:
    """`stop` is one string or a list of them; one is checked here, so that its error names
    `stop` itself rather than a branch of a union."""
    if isinstance(value, str):
        return [_not_blank(_unicode(value))]
    if value is None or isinstance(value, list):
        return value
    raise ValueError("must be a string or a list of strings")


Stop = Annotated[
    list[NonBlank] | None,
    BeforeValidator(_one_or_many),
    WithJsonSchema(
        {
            "anyOf": [
                NON_BLANK_SCHEMA,
                {"type": "array", "items": NON_BLANK_SCHEMA},
                {"type": "null"},
            ]
        }
    ),
]


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Content


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False


class _OpenAIRequest(GenerationRequest):
    model: NonBlank
    stop: Stop = None
    n: Annotated[Literal[1], BeforeValidator(_integral)] = 1
    stream_options: StreamOptions | None = None

    @property
    def stop_list(self) -> list[str]:
        return self.stop or []


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = None  # what newer OpenAI clients send for max_tokens

    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise ValueError("the last message must come from the user")
        if is_blank(messages[-1].content):
            raise ValueError("the last user message must not be empty")
        return messages


class CompletionRequest(_OpenAIRequest):
    prompt: NonBlank


# ---- responses ---------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose KV was reused, not computed (OpenAI's name)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class RagResponse(BaseModel):
    id: str
    answer: str
    finish_reason: str
    sources: list[SourceRef]
    usage: Usage
    stats: AnswerStats
    index_version: int | None = None  # the index version the sources came from (None: no RAG)


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatChoiceMessage
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    sources: list[SourceRef]
    lookahead: AnswerStats


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    sources: list[SourceRef]
    lookahead: AnswerStats


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lookahead-rag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return ErrorBody(
        error=ErrorDetail(message=message, type=type_, param=param, code=code)
    ).model_dump()
