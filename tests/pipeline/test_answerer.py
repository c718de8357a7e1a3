"""Generator replicas share popular n-grams through one Redis (the real default model)."""

from dataclasses import replace

import pytest
import torch

from pipeline import batching
from pipeline.answerer import Answerer
from pipeline.config import GenerationSection, NgramsSection, load_config
from pipeline.wire import Answer, GenerationJob

PASSAGE = (
    "The Hanseatic League was a commercial and defensive confederation of merchant guilds and "
    "market towns in Central and Northern Europe. Growing from a few North German towns in the "
    "late 12th century, the league came to dominate Baltic maritime trade for three centuries "
    "along the coasts of Northern Europe. Its main cities were Lübeck, Hamburg and Bremen."
)
SETTINGS = GenerationSection(draft_size=8, max_tokens=32)


@pytest.fixture
def one_torch_thread():
    """Two threads on two busy cores spin against each other (see tests/generation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ask(answerer: Answerer, question: str) -> tuple[str, float]:
    job = GenerationJob(messages=({"role": "user", "content": f"{PASSAGE}\n\n{question}"},))
    answer = Answer.collect(batching.stream(batching.AnswerBatch(answerer, 1), job))
    return answer.text, answer.finished.completion_tokens / answer.finished.stats.steps


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_replica_b_accepts_more_tokens_per_step_thanks_to_replica_a(lm, redis_server):
    shared = NgramsSection(redis_url=redis_server.url)
    a = Answerer.from_model(lm, SETTINGS, shared)
    b = Answerer.from_model(lm, SETTINGS, shared)
    b_alone = Answerer.from_model(lm, SETTINGS, NgramsSection())  # an empty in-process store
    try:
        ask(a, "Which cities were the main cities of the Hanseatic League?")
        a.ngrams.sync_now()  # A flushes (the background thread would, within seconds)
        b.ngrams.sync_now()  # B pulls
        question = "Name the main cities of the Hanseatic League."
        text, tokens_per_step = ask(b, question)
        alone_text, alone_tokens_per_step = ask(b_alone, question)
        assert text == alone_text  # lossless either way
        assert tokens_per_step > alone_tokens_per_step
        assert Answerer.from_model(lm, SETTINGS, NgramsSection(enabled=False)).ngrams is None
    finally:
        for answerer in (a, b, b_alone):
            answerer.close()


def test_the_redis_url_is_a_secret(app_environment):
    app_environment({"LOOKAHEAD_RAG__NGRAMS__REDIS_URL": "rediss://:s3cret@redis.internal:6380/0"})
    config = load_config()
    assert config.ngrams.redis_url.get_secret_value().startswith("rediss://:s3cret@")
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config.model_dump())


@pytest.mark.parametrize("chat", [True, False])
def test_a_model_without_a_chat_template_is_prompted_as_a_completion_that_stops(tokenizer, chat):
    from genhelpers import tiny_model
    from transformers import AutoTokenizer

    from generation import LoadedModel

    own = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    if not chat:
        own.chat_template = None
    model = tiny_model("llama", vocab=len(own), eos=own.eos_token_id)
    answerer = Answerer.from_model(LoadedModel(model, own, "tiny"), SETTINGS)
    job = GenerationJob(messages=({"role": "user", "content": "Who ran?"},), stop=("END",))
    prepared = answerer.prepare(job)
    text = own.decode(prepared.token_ids)
    if chat:
        assert prepared.config.stop == ("END",)
        assert "<|im_start|>user\nWho ran?" in text
    else:
        assert prepared.config.stop == ("END", "\nQuestion:", "\n\n")
        assert text == "Question: Who ran?\nAnswer:"


def test_a_prompt_asked_again_decodes_its_last_greedy_answer_in_a_few_passes(tokenizer):
    from genhelpers import tiny_model
    from transformers import AutoTokenizer

    from generation import LoadedModel

    own = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    lm = LoadedModel(tiny_model("llama", vocab=len(own)), own, "tiny")  # never stops early
    answerer = Answerer.from_model(lm, GenerationSection(draft_size=8))
    question = {"role": "user", "content": f"{PASSAGE}\n\nWho traded?"}
    job = GenerationJob(messages=(question,), max_tokens=27)

    batch = batching.AnswerBatch(answerer, 2)

    def collect(job: GenerationJob) -> Answer:
        return Answer.collect(batching.stream(batch, job))

    first = collect(job)
    assert first.finished.completion_tokens == 27
    prepared = answerer.prepare(job)
    replayed = prepared.drafter.replay.answer
    assert len(replayed) == 27
    assert own.decode(replayed) == first.text
    again = collect(job)
    assert again.text == first.text  # lossless: the model verified every replayed token
    assert again.finished.stats.steps == 3  # 8 drafted + 1 bonus token a pass

    # A wrong memory costs rows, never the answer; sampled answers are not remembered.
    answerer.answers.remember(prepared.token_ids, [7] * 27)
    assert collect(job).text == first.text
    sampled = replace(job, messages=({"role": "user", "content": "Who ran?"},), temperature=0.7)
    collect(sampled)
    assert answerer.answers.recall(answerer.prepare(sampled).token_ids) is None
    uncached = replace(job, prefix_cache=False)  # keeps out of every cache: no replay either
    assert answerer.prepare(uncached).drafter.replay is None
    answerer.answers.remember(prepared.token_ids, [7] * 27)
    assert collect(uncached).text == first.text
    assert answerer.answers.recall(prepared.token_ids).tolist() == [7] * 27  # nor leaves one
    assert batch.serving().answer_replays == 2  # `again` and the wrong memory
    off = Answerer.from_model(lm, GenerationSection(draft_size=8, replay_answers=False))
    assert off.answers is None
    assert off.prepare(job).drafter.replay is None
