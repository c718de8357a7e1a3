"""One plan for every request: defaults, limits, and the same job from the API, `ask` and
the batch job."""

import pytest
from servehelpers import Passage, StandIn, asgi_client, small_limits_config

from pipeline.jobs.rag_stages import batch_job, index_search
from pipeline.planning import JobRequest, PlanError, plan_job
from pipeline.rag import RagPipeline
from pipeline.service.routes import build_api

QUESTION = "How do I parse JSON?"


class RecordingIndex:
    """Stands in for a FAISS index: passages 0..k-1, and the calls it got."""

    def __init__(self):
        self.calls = []

    def search(self, query, k):
        self.calls.append((query, k))
        if isinstance(query, list):
            return [[Passage(i) for i in range(k)] for _ in query]
        return [Passage(i) for i in range(k)]


def test_defaults_come_from_the_settings():
    config = small_limits_config(**{"retrieval.top_k": 3, "retrieval.seed_k": 6})
    plan = plan_job(JobRequest.question(QUESTION), config)
    assert plan.query == QUESTION
    assert plan.retrieve_k == 6  # the prompt's 3 passages and 3 more to seed the trie
    job = plan.job([Passage(i) for i in range(6)])
    assert (job.top_k, job.max_tokens, job.lookahead) == (3, config.generation.max_tokens, True)
    assert len(job.passages) == 6
    assert plan_job(JobRequest.question(QUESTION, rag=False), config).retrieve_k == 0
    completion = plan_job(JobRequest(prompt="json.dumps"), config)
    assert completion.query == "json.dumps"


def test_a_temperature_too_small_to_divide_by_decodes_greedily():
    """Sampling at 1e-300 divided the logits into inf (a 500); greedy decoding is its limit."""
    config = small_limits_config()
    for temperature, planned in ((1e-300, 0.0), (5e-324, 0.0), (1e-4, 1e-4), (0.7, 0.7)):
        job = plan_job(JobRequest.question(QUESTION, temperature=temperature), config).template
        assert job.temperature == planned


def test_settings_that_turn_lookahead_off_win_over_the_request():
    config = small_limits_config(**{"generation.lookahead": False})
    assert (
        plan_job(JobRequest.question(QUESTION, lookahead=True), config).template.lookahead is False
    )


@pytest.mark.parametrize(
    ("setting", "asked", "planned"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_prefix_reuse_is_on_unless_the_request_or_the_settings_turn_it_off(setting, asked, planned):
    config = small_limits_config(**{"generation.prefix_cache": setting})
    job = plan_job(JobRequest.question(QUESTION, prefix_cache=asked), config).template
    assert job.prefix_cache is planned
    assert batch_job(QUESTION, [], config).prefix_cache is setting  # the batch job: the setting


@pytest.mark.parametrize(
    ("request_", "param", "code", "status"),
    [
        (JobRequest.question(QUESTION, max_tokens=0), "max_tokens", "invalid_value", 400),
        (JobRequest.question(QUESTION, max_tokens=10**6), "max_tokens", "invalid_value", 400),
        (JobRequest.question(QUESTION, top_k=0), "top_k", "invalid_value", 400),
        (
            JobRequest.question(QUESTION, stop=("a", "b", "c", "d", "e")),
            "stop",
            "invalid_value",
            400,
        ),
        # A question is blamed on the `question` field (issue 22), chat messages on `messages`.
        (JobRequest.question("x" * 5000), "question", "input_too_long", 413),
        (
            JobRequest(messages=({"role": "user", "content": "x" * 5000},)),
            "messages",
            "input_too_long",
            413,
        ),
        (JobRequest(prompt="x" * 5000), "prompt", "input_too_long", 413),
        (JobRequest.question(" \n"), "question", "invalid_value", 400),
        (JobRequest.question("\u200b\u200b\u200b"), "question", "invalid_value", 400),
        (JobRequest.question(None), "question", "invalid_value", 400),
        # Not Unicode (a lone surrogate): `ask` and the batch job plan here too.
        (JobRequest.question("a \ud800"), "question", "invalid_value", 400),
        (JobRequest(prompt="\udfff?", rag=False), "prompt", "invalid_value", 400),
        (JobRequest.question(QUESTION, stop=("a", "\ud800")), "stop[1]", "invalid_value", 400),
    ],
)
def test_limits_are_refused_with_the_field_and_the_reason(request_, param, code, status):
    with pytest.raises(PlanError) as refused:
        plan_job(request_, small_limits_config())
    assert (refused.value.param, refused.value.code, refused.value.status) == (param, code, status)


@pytest.mark.parametrize("lookahead", [True, False])
def test_the_api_ask_and_the_batch_job_plan_the_same_job(lookahead):
    """`ask` once ignored `generation.lookahead: false`: every entry point now plans one way."""
    config = small_limits_config(
        **{"generation.lookahead": lookahead, "retrieval.top_k": 2, "retrieval.seed_k": 5}
    )
    backend = StandIn()
    response = asgi_client(build_api(backend, config)).post("/v1/rag", json={"question": QUESTION})
    assert response.status_code == 200
    (api_job,) = backend.jobs

    index = RecordingIndex()
    ask_job = RagPipeline(index, batch=None, config=config).job(QUESTION)
    (passages,) = index_search(index, config)([QUESTION])
    batch = batch_job(QUESTION, passages, config)

    assert index.calls == [(QUESTION, 5), ([QUESTION], 5)]
    for job in (ask_job, batch):
        assert [p.id for p in job.passages] == [p.id for p in api_job.passages]
        assert job.messages == api_job.messages
        assert (job.top_k, job.max_tokens, job.stop) == (api_job.top_k, api_job.max_tokens, ())
        assert job.lookahead is api_job.lookahead is lookahead
        assert (job.temperature, job.top_p, job.seed) == (0.0, 1.0, None)
