"""What the HTTP tests share: a small-limits config and the table of bad requests, checked both
against the HTTP layer alone and against the real Serve app."""

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline.config import load_config
from pipeline.service.errors import (
    BackendUnavailableError,
    QueueFullError,
    QueueTimeoutError,
    ReplicaDiedError,
)
from pipeline.wire import (
    Admitted,
    AnswerStats,
    ContextTooLongError,
    Delta,
    Finished,
    IndexState,
    Queued,
    Retrieved,
    SourceRef,
    Started,
)

# Small limits keep the oversize cases cheap to send.
MAX_INPUT_CHARS = 2000
MAX_BODY_BYTES = 20_000
MODEL = "lookahead-rag"
GENERATOR_REPLICAS = 2  # in the session's Serve app
MAX_BATCH, MAX_QUEUED = 4, 4  # per Generator replica of the session's Serve app
HELD_TOKENS = 256  # the longest answer a request may ask for (limits.max_tokens)
API_KEY = "sk-test-0123456789"  # the session's Serve app lets this key in
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN_KEY = "admin-test-0123456789"  # the session's Serve app lets this key into /v1/index*
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
WATCH_INTERVAL_S = 0.5  # the session's Serve app: Retrievers check for a new index version
BODY_TIMEOUT_S = 3.0  # the session's Serve app: a body must arrive within this
HEADER_TIMEOUT_S = 2.0  # ... and a request's headers within this
# Asked of the service, of `lookahead-rag ask` in-process and of a batch job: one answer each.
ONE_PATH_QUESTIONS = ("How do I parse a JSON string?", "What does functools.partial do?")

LIMITS = {
    "limits.max_input_chars": MAX_INPUT_CHARS,
    "limits.max_body_bytes": MAX_BODY_BYTES,
    "limits.max_tokens": HELD_TOKENS,
}


def small_limits_config(**overrides):
    """float32 on any machine: the tests compare answers token for token across batches, and
    bfloat16 (what `auto` picks on some) rounds differently in differently shaped passes."""
    return load_config(overrides={"model.dtype": "float32", **LIMITS, **overrides})


@dataclass(frozen=True)
class Bad:
    id: str
    path: str
    status: int
    code: str | None
    param: str | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict = field(default_factory=dict)
    method: str = "POST"

    def send(self, client, **headers):
        kwargs = {"headers": {**self.headers, **headers}}
        if self.content is not None:
            kwargs["content"] = self.content
        elif self.json is not None:
            kwargs["json"] = self.json
        return client.request(self.method, self.path, **kwargs)


JSON = {"content-type": "application/json"}
USER = [{"role": "user", "content": "What does json.dumps do?"}]


def chat(**fields):
    return {"model": MODEL, "messages": USER, **fields}


def completion(**fields):
    return {"model": MODEL, "prompt": "json.dumps", **fields}


BAD_REQUESTS = [
    Bad("malformed-json", "/v1/rag", 400, "invalid_json", content=b'{"question": ', headers=JSON),
    Bad("json-not-an-object", "/v1/rag", 400, "invalid_body", json=["question"]),
    Bad("no-content-type", "/v1/rag", 400, "invalid_body", content=b'{"question": "json?"}'),
    Bad("empty-body", "/v1/rag", 400, "invalid_body", content=b"", headers=JSON),
    Bad("missing-question", "/v1/rag", 400, "missing", "question", json={"top_k": 2}),
    Bad("empty-question", "/v1/rag", 400, "invalid_value", "question", json={"question": ""}),
    Bad("blank-question", "/v1/rag", 400, "invalid_value", "question", json={"question": " \n"}),
    Bad("question-not-a-string", "/v1/rag", 400, "invalid_value", "question", json={"question": 5}),
    Bad(
        "max-tokens-as-string",
        "/v1/rag",
        400,
        "invalid_value",
        "max_tokens",
        json={"question": "q", "max_tokens": "5"},
    ),
    Bad(
        "stream-not-a-bool",
        "/v1/rag",
        400,
        "invalid_value",
        "stream",
        json={"question": "q", "stream": "yes"},
    ),
    Bad(
        "max-tokens-zero",
        "/v1/rag",
        400,
        "invalid_value",
        "max_tokens",
        json={"question": "q", "max_tokens": 0},
    ),
    Bad(
        "max-tokens-too-large",
        "/v1/rag",
        400,
        "invalid_value",
        "max_tokens",
        json={"question": "q", "max_tokens": 100_000},
    ),
    Bad("top-k-zero", "/v1/rag", 400, "invalid_value", "top_k", json={"question": "q", "top_k": 0}),
    Bad("unknown-field", "/v1/rag", 400, "unknown_field", "qestion", json={"qestion": "q"}),
    Bad(
        "question-too-long",
        "/v1/rag",
        413,
        "input_too_long",
        "question",  # issue 22: the field /v1/rag has, not the chat messages it becomes
        json={"question": "x" * (MAX_INPUT_CHARS + 1)},
    ),
    Bad(
        "body-too-large",
        "/v1/rag",
        413,
        "request_too_large",
        json={"question": "q", "pad": "x" * MAX_BODY_BYTES},
    ),
    Bad(
        "chat-missing-model",
        "/v1/chat/completions",
        400,
        "missing",
        "model",
        json={"messages": USER},
    ),
    Bad(
        "chat-unknown-model",
        "/v1/chat/completions",
        404,
        "model_not_found",
        "model",
        json=chat(model="gpt-4o"),
    ),
    Bad(
        "chat-no-messages",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "messages",
        json=chat(messages=[]),
    ),
    Bad(
        "chat-ends-with-assistant",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "messages",
        json=chat(messages=[{"role": "assistant", "content": "hi"}]),
    ),
    Bad(
        "chat-bad-role",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "messages[0].role",
        json=chat(messages=[{"role": "wizard", "content": "hi"}]),
    ),
    Bad(
        "chat-content-not-text",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "messages[0].content",
        json=chat(messages=[{"role": "user", "content": 42}]),
    ),
    Bad(
        "chat-max-tokens-too-large",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "max_tokens",
        json=chat(max_tokens=10_000),
    ),
    Bad(
        "chat-max-completion-tokens-zero",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "max_tokens",
        json=chat(max_completion_tokens=0),
    ),
    Bad("chat-n-2", "/v1/chat/completions", 400, "invalid_value", "n", json=chat(n=2)),
    Bad(
        "chat-too-many-stops",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "stop",
        json=chat(stop=["a", "b", "c", "d", "e"]),
    ),
    Bad(
        "chat-temperature-too-high",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "temperature",
        json=chat(temperature=2.5),
    ),
    Bad(
        "chat-temperature-negative",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "temperature",
        json=chat(temperature=-0.1),
    ),
    Bad(
        "chat-top-p-zero",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "top_p",
        json=chat(temperature=0.7, top_p=0),
    ),
    Bad(
        "chat-seed-as-string",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "seed",
        json=chat(temperature=0.7, seed="7"),
    ),
    Bad(
        "rag-top-p-above-one",
        "/v1/rag",
        400,
        "invalid_value",
        "top_p",
        json={"question": "q", "top_p": 1.5},
    ),
    Bad(
        "rag-repetition-penalty-tiny",
        "/v1/rag",
        400,
        "invalid_value",
        "repetition_penalty",
        json={"question": "q", "repetition_penalty": 1e-300},
    ),
    Bad(
        "rag-temperature-nan",
        "/v1/rag",
        400,
        "invalid_value",
        "temperature",
        content=b'{"question": "q", "temperature": NaN}',
        headers=JSON,
    ),
    Bad(
        "completion-seed-negative",
        "/v1/completions",
        400,
        "invalid_value",
        "seed",
        json=completion(temperature=1.0, seed=-1),
    ),
    Bad(
        "completion-repetition-penalty-zero",
        "/v1/completions",
        400,
        "invalid_value",
        "repetition_penalty",
        json=completion(repetition_penalty=0),
    ),
    Bad(
        "chat-input-too-long",
        "/v1/chat/completions",
        413,
        "input_too_long",
        "messages",
        json=chat(messages=[{"role": "user", "content": "y" * (MAX_INPUT_CHARS + 1)}]),
    ),
    Bad(
        "completion-missing-prompt",
        "/v1/completions",
        400,
        "missing",
        "prompt",
        json={"model": MODEL},
    ),
    Bad(
        "completion-empty-prompt",
        "/v1/completions",
        400,
        "invalid_value",
        "prompt",
        json=completion(prompt=""),
    ),
    Bad(
        "completion-unknown-model",
        "/v1/completions",
        404,
        "model_not_found",
        "model",
        json=completion(model="davinci"),
    ),
    Bad("unknown-route", "/v2/answer", 404, "not_found", json={"question": "q"}),
    Bad("wrong-method", "/v1/rag", 405, "method_not_allowed", method="GET"),
    # Text: a lone surrogate is valid JSON but no Unicode character (the tokenizer raised
    # TypeError on it: a 500); invisible characters alone ask nothing.
    *(
        Bad(f"surrogate-{name}", path, 400, "invalid_value", param, content=body, headers=JSON)
        for name, path, param, body in [
            ("question", "/v1/rag", "question", rb'{"question": "a \ud800"}'),
            (
                "question-streamed",
                "/v1/rag",
                "question",
                rb'{"question": "\udc00", "stream": true}',
            ),
            (
                "chat",
                "/v1/chat/completions",
                "messages[0].content",
                b'{"model": "%s", "stream": true, "messages": [{"role": "user", "content": '
                b'"caf\\ud83d"}]}' % MODEL.encode(),
            ),
            (
                "completion-no-rag",
                "/v1/completions",
                "prompt",
                b'{"model": "%s", "rag": false, "prompt": "\\ud800x"}' % MODEL.encode(),
            ),
            (
                "stop",
                "/v1/completions",
                "stop[1]",
                b'{"model": "%s", "prompt": "p", "stop": ["a", "\\ud800"]}' % MODEL.encode(),
            ),
            (
                "model",
                "/v1/chat/completions",
                "model",
                rb'{"model": "\ud800", "messages": [{"role": "user", "content": "hi"}]}',
            ),
        ]
    ),
    Bad(
        "surrogate-in-a-field-name",
        "/v1/rag",
        400,
        "invalid_value",
        content=rb'{"q\ud800": "q"}',
        headers=JSON,
    ),
    Bad(
        "zero-width-question",
        "/v1/rag",
        400,
        "invalid_value",
        "question",
        json={"question": "\u200b\u200b\u200b"},
    ),
    Bad(
        "stop-empty",
        "/v1/chat/completions",
        400,
        "invalid_value",
        "stop",
        json=chat(stop=""),
    ),
    Bad("stop-a-number", "/v1/completions", 400, "invalid_value", "stop", json=completion(stop=5)),
    Bad(
        "body-not-utf8",
        "/v1/rag",
        400,
        "invalid_json",
        content=b'{"question": "caf\xe9"}',
        headers=JSON,
    ),
]


def check_error(response, bad: Bad) -> None:
    assert response.status_code == bad.status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == bad.code
    assert error["param"] == bad.param
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    if bad.status == 405:
        assert response.headers["allow"] == "POST"


def sse_payloads(text: str) -> list:
    """`data:` payloads of a server-sent event stream, in order; "[DONE]" stays a string."""
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


class Passage:
    def __init__(self, i):
        self.id, self.title, self.source, self.score = f"p{i}", f"T{i}", "stdlib", 1 / (i + 1)
        self.doc_id, self.start = f"d{i}", 0
        self.text = f"passage {i}"


class StandIn:
    """Replays a fixed answer as a Generator replica sends it (`Admitted` first); `fail` makes
    a part raise at a chosen point: "retrieve", "start", "midway", "check", "bug" (a plain
    exception), "died-at-start" / "died-midway" (the replica dies, on the first job only),
    "hang" (never finishes after two steps), "full" (the Generator's wait queue is full),
    "too-long" (the prompt cannot fit), "never-admitted" (no replica takes it), "queued" (waits
    for a batch row behind 2 others, then decodes), "slow-start" (admitted, not started for
    `SLOW_START_S`), "queue-timeout" (never gets a row)."""

    SLOW_START_S = 0.6

    def __init__(self):
        self.jobs = []
        self.fail = None

    async def retrieve(self, query, k):
        if self.fail == "retrieve":
            raise BackendUnavailableError("the retriever is unavailable: ActorDiedError")
        return Retrieved(tuple(Passage(i) for i in range(k)), IndexState("stand-in", 3, 9, 12))

    async def generate(self, job):
        self.jobs.append(job)
        first = len(self.jobs) == 1
        if self.fail == "start":
            raise BackendUnavailableError("the generator is unavailable: BackPressureError")
        if self.fail == "bug":
            raise RuntimeError("a bug")
        if self.fail == "full":
            raise QueueFullError("the generator is at capacity; retry in 2.5 s", 2.5)
        if self.fail == "died-at-start" and first:
            raise ReplicaDiedError("the generator is unavailable: ActorDiedError")
        if self.fail == "never-admitted":
            await asyncio.Event().wait()
        yield Admitted()
        if self.fail == "too-long":
            raise ContextTooLongError("the request alone does not fit the context budget")
        if self.fail == "slow-start":
            await asyncio.sleep(self.SLOW_START_S)
        passages = job.passages[:2]
        yield Started(
            7, tuple(SourceRef(p.id, p.title, p.source, p.score, p.text) for p in passages)
        )
        if self.fail in ("queued", "queue-timeout"):
            yield Queued(2, 0.5)
            await asyncio.sleep(0.3)
        if self.fail == "queue-timeout":
            raise QueueTimeoutError("no batch row came free within 0.5 s; retry in 2 s", 2.0)
        yield Delta("Use", 1, 0)
        yield Delta("", 1, 0)  # a step whose text is held back
        if self.fail == "midway":
            raise BackendUnavailableError("the generator is unavailable: ActorDiedError")
        if self.fail == "died-midway" and first:
            raise ReplicaDiedError("the generator is unavailable: ActorDiedError")
        if self.fail == "hang":
            await asyncio.Event().wait()
        yield Delta(" json.loads.", 3, 2)
        cached = 4 if job.prefix_cache else 0  # prompt tokens a prefix cache would serve
        yield Finished("stop", 5, AnswerStats(3, 5 / 3, 12, 2, 0.25, job.lookahead, cached))

    async def check(self):
        if self.fail == "check":
            raise BackendUnavailableError("the retriever is unavailable: ActorDiedError")


def asgi_client(app, raise_app_exceptions=True):
    """A synchronous client of an ASGI app in this process (httpx's ASGI transport is async;
    the tests read better synchronously)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)

    class Sync:
        def request(self, method, path, **kwargs):
            async def go():
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    return await c.request(method, path, **kwargs)

            return asyncio.run(go())

        def post(self, path, **kwargs):
            return self.request("POST", path, **kwargs)

        def get(self, path, **kwargs):
            return self.request("GET", path, **kwargs)

    return Sync()


def generator_replicas() -> dict:
    """The session Serve app's Generator replicas: actor name -> actor handle."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "Generator" in a["name"] and a["name"].startswith("SERVE_REPLICA::")
    ]
    return {name: ray.get_actor(name, namespace="serve") for name in names}


def wait_for_generators(serve_app, timeout_s: float = 240) -> None:
    """Until Serve has all the app's Generator replicas running again (after a test killed
    some), so that later tests find the app as they expect."""
    from ray import serve

    _, config = serve_app
    deadline = time.monotonic() + timeout_s
    while True:
        deployment = serve.status().applications[config.server.app_name].deployments["Generator"]
        running = deployment.replica_states.get("RUNNING", 0)
        if running == GENERATOR_REPLICAS and len(generator_replicas()) == GENERATOR_REPLICAS:
            return
        assert time.monotonic() < deadline, f"the Generators did not come back: {deployment}"
        time.sleep(1)
