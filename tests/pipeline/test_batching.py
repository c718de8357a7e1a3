"""Answers decoded together (`pipeline.batching`) are the answers each job gets alone, and the
batch counts what a serving replica shows (the real default model)."""

import pytest

from generation import DecodeStats
from generation.defaults import DEFAULT_MODEL, batch_size, prefix_cache_bytes
from generation.prefix_cache import PrefixCache
from pipeline.answerer import Answerer, answer_stats
from pipeline.batching import AnswerBatch, answer_all, stream
from pipeline.config import GenerationSection, NgramsSection
from pipeline.wire import (
    Answer,
    ContextTooLongError,
    Finished,
    GenerationJob,
    ModelInfo,
    PrefixCacheCounts,
)

SETTINGS = GenerationSection(max_tokens=24)


class Passage:
    def __init__(self, i: int, text: str) -> None:
        self.id, self.title, self.source, self.score, self.text = f"p{i}", f"T{i}", "t", 1.0, text
        self.doc_id, self.start = "json", i


PASSAGES = (
    Passage(0, "json.loads parses a JSON document from a str and returns a Python object."),
    Passage(1, "json.dumps serialises a Python object to a JSON formatted str."),
)


def job(question: str, **fields) -> GenerationJob:
    messages = ({"role": "user", "content": question},)
    return GenerationJob(
        messages=messages, passages=PASSAGES, top_k=2, **{"max_tokens": 24, **fields}
    )


JOBS = [
    job("How do I parse JSON in Python?"),
    job("What does json.dumps return?", lookahead=False),  # k = 0 inside the same batch
    job("Name a function of the json module.", max_tokens=5),  # leaves early
    job("Explain JSON in one sentence.", stop=(".",)),
    # Its own sampling and seed. Exact sampling keeps the distribution, not the sample path: the
    # draws depend on the drafts, so its text is not compared.
    job("What does json.loads return?", temperature=0.8, seed=7),
]
SAMPLED = 4


@pytest.fixture(scope="module")
def answerer(lm):
    return Answerer.from_model(lm, SETTINGS, NgramsSection(enabled=False))


@pytest.fixture(scope="module")
def alone(answerer):
    return [Answer.collect(stream(AnswerBatch(answerer, max_batch=1), j)) for j in JOBS]


def test_every_answer_decoded_together_is_its_answer_alone(answerer, alone):
    batch = AnswerBatch(answerer, max_batch=3)  # five jobs, three rows: two wait, then join
    together = answer_all(batch, JOBS)
    for i, (one, other) in enumerate(zip(together, alone, strict=True)):
        assert one.text == other.text or i == SAMPLED
        assert one.sources == other.sources
        assert one.prompt_tokens == other.prompt_tokens
        if i != SAMPLED:
            assert one.finished.finish_reason == other.finished.finish_reason
            assert one.finished.completion_tokens == other.finished.completion_tokens
    assert together[SAMPLED].text
    assert together[SAMPLED].finished.completion_tokens <= 24
    assert together[2].finished.completion_tokens == 5
    assert not together[1].finished.stats.lookahead
    assert together[1].finished.stats.draft_tokens == 0
    serving = batch.serving()
    assert (serving.running, serving.waiting) == (0, 0)
    assert serving.batch_sizes.count == batch.decoder.stats.steps
    assert serving.batch_sizes.counts[0] < serving.batch_sizes.count  # steps shared by several
    assert serving.queue_seconds.count == len(JOBS)
    assert serving.drafts > 0
    assert serving.draft_tokens >= serving.drafts
    per_position = serving.accepted_per_position
    assert serving.accepted_tokens == sum(per_position)
    assert list(per_position) == sorted(per_position, reverse=True)  # depth 2 needs depth 1


def test_jobs_wait_oldest_first_for_a_row_and_the_replica_figures_say_so(answerer):
    batch = AnswerBatch(answerer, max_batch=2)
    handles = [batch.add(j)[0] for j in JOBS[:3]]
    assert (batch.serving().running, batch.serving().waiting) == (0, 3)
    first = batch.step()
    assert (batch.serving().running, batch.serving().waiting) == (2, 1)
    assert {h for h, _ in first} <= set(handles[:2])
    finished = {}
    while batch.busy:
        for handle, outcome in batch.step():
            if isinstance(outcome[-1], Finished):
                finished[handle] = outcome[-1]
                assert outcome[-1].replica.serving.running < 2 or batch.busy
                assert outcome[-1].replica.model == ModelInfo(DEFAULT_MODEL, "float32", "cpu")
    assert set(finished) == set(handles)


def test_a_job_that_cannot_fit_fails_alone_and_a_cancelled_one_frees_its_row(answerer, alone):
    huge = job("x " * 5000)
    huge = GenerationJob(messages=huge.messages, max_tokens=24)  # no passage to drop: too long
    batch = AnswerBatch(answerer, max_batch=1)
    with pytest.raises(ContextTooLongError):
        batch.add(huge)
    gone, _ = batch.add(JOBS[0])
    kept, _ = batch.add(JOBS[1])
    batch.step()  # `gone` holds the only row, `kept` waits
    assert batch.serving().waiting == 1
    batch.cancel(gone)
    outcomes = batch.step()  # `kept` takes the freed row
    assert {h for h, _ in outcomes} == {kept}
    assert batch.serving().running == 1
    with pytest.raises(ValueError, match="idle batch"):
        answer_all(batch, [JOBS[2]])
    batch.cancel(kept)
    together = answer_all(batch, [huge, JOBS[1]])
    assert isinstance(together[0], ContextTooLongError)
    assert together[1].text == alone[1].text


def test_the_batch_size_setting():
    assert batch_size("auto", "cpu") == 8
    assert batch_size("auto", "cuda:0") == 32
    assert batch_size(3, "cuda:0") == 3


def test_the_prefix_cache_size_setting(answerer):
    assert prefix_cache_bytes("auto", "cpu") == 1 << 30
    assert prefix_cache_bytes("auto", "cuda:0") == 4 << 30
    assert prefix_cache_bytes(1 << 20, "cuda:0") == 1 << 20
    assert answerer.prefix_cache_bytes() == 1 << 30  # on by default, the CPU's size
    sized = Answerer(answerer.generator, GenerationSection(prefix_cache_bytes=5_000_000))
    assert sized.prefix_cache_bytes() == 5_000_000
    off = Answerer(answerer.generator, GenerationSection(prefix_cache=False))
    assert off.prefix_cache_bytes() == 0


def test_the_replica_shows_its_decoders_prefix_cache_and_each_answer_its_cached_tokens(answerer):
    batch = AnswerBatch(answerer, max_batch=1)
    batch.decoder.prefix_cache = None
    assert batch.serving().prefix_cache is None  # no cache: no figures
    cache = PrefixCache(max_bytes=1 << 20)
    cache.stats.queries, cache.stats.hits, cache.stats.evictions = 300, 128, 2
    cache.stats.bytes = 4096
    batch.decoder.prefix_cache = cache
    assert batch.serving().prefix_cache == PrefixCacheCounts(300, 128, 2, 4096)
    stats = DecodeStats(prompt_tokens=300, prefix_tokens=256, steps=2, tokens=3)
    assert answer_stats(stats, lookahead=True).cached_prompt_tokens == 256
