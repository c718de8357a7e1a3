"""The Generator's model thread (`BatchScheduler`) over a hand-built batch: who joins, who
waits, who is refused, who leaves, and that one failure stays one failure."""

import asyncio
import contextlib
import threading
import time

import pytest

from pipeline.service.errors import QueueFullError, QueueTimeoutError
from pipeline.service.scheduler import BatchScheduler
from pipeline.wire import (
    Admitted,
    AnswerStats,
    ContextTooLongError,
    Delta,
    Finished,
    GenerationJob,
    Queued,
    ServingStats,
    Started,
)

ENDLESS = 10**9  # steps: an answer that never ends by itself


def job(name: str, steps: int = 3) -> GenerationJob:
    return GenerationJob(prompt=name, max_tokens=steps)


class FakeBatch:
    """`AnswerBatch`'s surface: a job `name` decodes one Delta per step for `max_tokens` steps,
    at most `max_batch` at a time (the rest wait, oldest first). Names that misbehave:
    "too-long" (refused by `add`), "breaks" (fails at its second step), "crash" (the step itself
    raises). `gate` holds every step until set; `log` records who decoded each step."""

    def __init__(self, max_batch: int = 2) -> None:
        self.max_batch = max_batch
        self.gate = threading.Event()
        self.gate.set()
        self.log: list[tuple[str, ...]] = []
        self.cancelled: list[str] = []
        self.step_thread: int | None = None
        self._jobs: dict[int, list] = {}  # handle -> [job, steps done]
        self._next = 0

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def add(self, job: GenerationJob):
        if job.prompt == "too-long":
            raise ContextTooLongError("the question alone does not fit")
        handle, self._next = self._next, self._next + 1
        self._jobs[handle] = [job, 0]
        return handle, Started(1, ())

    def cancel(self, handle: int) -> None:
        job, _ = self._jobs.pop(handle)
        self.cancelled.append(job.prompt)

    def serving(self) -> ServingStats:
        running = min(len(self._jobs), self.max_batch)
        return ServingStats(running=running, waiting=len(self._jobs) - running)

    def queued(self, handle: int) -> bool:
        return handle not in list(self._jobs)[: self.max_batch]

    def step(self):
        self.gate.wait()
        self.step_thread = threading.get_ident()
        running = list(self._jobs.items())[: self.max_batch]
        if any(job.prompt == "crash" for _, (job, _) in running):
            raise RuntimeError("the step crashed")
        self.log.append(tuple(job.prompt for _, (job, _) in running))
        out = []
        for handle, state in running:
            job, done = state
            state[1] = done = done + 1
            if job.prompt == "breaks" and done == 2:
                del self._jobs[handle]
                out.append((handle, ValueError("breaks broke")))
                continue
            events = [Delta(f"{job.prompt}{done}", 1, 0)]
            if done == job.max_tokens:
                del self._jobs[handle]
                events.append(Finished("length", done, AnswerStats(done, 1.0, 0, 0, 0.0, False)))
            out.append((handle, events))
        return out


def texts(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Delta)]


async def collect(scheduler, job):
    return [event async for event in scheduler.stream(job)]


@pytest.fixture
def batch():
    return FakeBatch()


@contextlib.asynccontextmanager
async def model_thread_held(scheduler):
    """The model thread busy on a task of ours until the block ends (events, not sleeps)."""
    loop = asyncio.get_running_loop()
    inside, release = threading.Event(), threading.Event()

    def hold_the_model_thread():
        inside.set()
        release.wait()

    held = loop.run_in_executor(None, scheduler.thread.run, hold_the_model_thread)
    await loop.run_in_executor(None, inside.wait)
    try:
        yield
    finally:
        release.set()
        await held


@pytest.fixture
def scheduler(batch):
    s = BatchScheduler(max_queued=2, retry_after_s=1.5)
    s.start(lambda: batch)
    yield s
    s.close()


def test_requests_decode_together_and_a_short_one_is_not_held_back(scheduler, batch):
    async def main():
        async with model_thread_held(scheduler):  # every request is in before the first step
            tasks = [
                asyncio.create_task(collect(scheduler, job("long", 6))),
                asyncio.create_task(collect(scheduler, job("short", 2))),
                asyncio.create_task(collect(scheduler, job("later", 2))),  # waits for a row
            ]
            await asyncio.sleep(0)  # each task runs up to its first await: all are submitted
        return await asyncio.gather(*tasks)

    long, short, later = asyncio.run(main())
    assert isinstance(long[0], Admitted)
    assert isinstance(long[1], Started)
    assert isinstance(long[-1], Finished)
    assert not any(isinstance(e, Queued) for e in long + short)  # each had a row at once
    assert [e for e in later if isinstance(e, Queued)] == [Queued(0, float("inf"))]
    assert texts(long) == [f"long{i}" for i in range(1, 7)]
    assert texts(short) == ["short1", "short2"]
    assert texts(later) == ["later1", "later2"]
    assert batch.log[:4] == [
        ("long", "short"),
        ("long", "short"),
        ("long", "later"),  # took the row `short` freed
        ("long", "later"),
    ]
    assert scheduler.admitted == 0


def test_a_full_queue_is_refused_at_once_with_when_to_retry(scheduler, batch):
    batch.gate.clear()

    async def main():
        admitted = [
            asyncio.create_task(collect(scheduler, job(f"r{i}"))) for i in range(4)
        ]  # two rows + two waiting
        await asyncio.sleep(0.05)
        assert scheduler.admitted == 4
        with pytest.raises(QueueFullError) as refused:
            await collect(scheduler, job("one-too-many"))
        batch.gate.set()
        await asyncio.gather(*admitted)
        return refused.value

    refused = asyncio.run(main())
    assert refused.retry_after_s == 1.5
    assert "2 requests decoding and 2 waiting" in str(refused)
    assert scheduler.admitted == 0
    assert texts(asyncio.run(collect(scheduler, job("after", 1)))) == ["after1"]  # room again


def test_a_client_that_leaves_frees_its_row_at_the_next_step(scheduler, batch):
    async def main():
        stream = scheduler.stream(job("endless", ENDLESS))
        async for event in stream:
            if isinstance(event, Delta):
                break
        await stream.aclose()
        deadline = time.monotonic() + 30
        while scheduler.admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert scheduler.admitted == 0
    assert batch.cancelled == ["endless"]
    assert not batch.busy
    assert len(batch.log) < ENDLESS


def test_a_failing_request_fails_alone(scheduler):
    async def main():
        return await asyncio.gather(
            collect(scheduler, job("breaks", 5)),
            collect(scheduler, job("too-long")),
            collect(scheduler, job("good", 4)),
            return_exceptions=True,
        )

    broken, too_long, good = asyncio.run(main())
    assert isinstance(broken, ValueError)
    assert str(broken) == "breaks broke"
    assert isinstance(too_long, ContextTooLongError)
    assert texts(good) == ["good1", "good2", "good3", "good4"]
    assert scheduler.admitted == 0


def test_a_step_that_crashes_fails_the_running_requests_and_the_replica_goes_on(scheduler, batch):
    batch.gate.clear()

    async def main():
        tasks = asyncio.gather(
            collect(scheduler, job("bystander")),
            collect(scheduler, job("crash")),
            return_exceptions=True,
        )
        await asyncio.sleep(0.05)
        batch.gate.set()
        return await tasks

    bystander, crashed = asyncio.run(main())
    assert isinstance(crashed, RuntimeError)
    assert isinstance(bystander, RuntimeError)
    assert sorted(batch.cancelled) == ["bystander", "crash"]
    assert texts(asyncio.run(collect(scheduler, job("next", 2)))) == ["next1", "next2"]


def test_closing_fails_running_requests_and_refuses_new_ones(batch):
    scheduler = BatchScheduler(max_queued=2, retry_after_s=1.0)
    scheduler.start(lambda: batch)
    batch.gate.clear()

    async def main():
        task = asyncio.create_task(collect(scheduler, job("slow", 2)))
        await asyncio.sleep(0.05)
        closer = asyncio.get_running_loop().run_in_executor(None, scheduler.close)
        await asyncio.sleep(0.05)
        batch.gate.set()
        await closer
        return await asyncio.gather(task, return_exceptions=True)

    (result,) = asyncio.run(main())
    assert isinstance(result, RuntimeError)
    assert "closed" in str(result)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(collect(scheduler, job("z", 1)))


def test_the_model_is_loaded_on_the_thread_that_runs_every_step(scheduler, batch):
    """One OpenMP pool: see pipeline.model_thread."""
    loaded_on = scheduler.thread.run(threading.get_ident)
    asyncio.run(collect(scheduler, job("a", 2)))
    assert batch.step_thread == loaded_on != threading.get_ident()


def test_the_model_thread_hands_back_the_error(scheduler):
    def broken():
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        scheduler.thread.run(broken)
    assert scheduler.thread.run(lambda: 42) == 42  # the thread goes on


def test_streaming_before_start_is_a_clear_error():
    scheduler = BatchScheduler(max_queued=1, retry_after_s=1.0)
    try:
        with pytest.raises(RuntimeError, match="start"):
            asyncio.run(collect(scheduler, job("early")))
    finally:
        scheduler.close()


def test_a_request_hears_it_was_admitted_while_the_model_thread_is_busy(scheduler):
    async def main():
        async with model_thread_held(scheduler):
            stream = scheduler.stream(job("a", 1))
            first = await asyncio.wait_for(anext(stream), 5)  # the model thread is still held
        return first, [event async for event in stream]

    first, rest = asyncio.run(main())
    assert first == Admitted()
    assert isinstance(rest[0], Started)
    assert texts(rest) == ["a1"]


def test_a_request_that_waits_too_long_for_a_row_leaves_the_queue_with_a_503(batch):
    """Two rows, held by endless answers: the third request is told it is queued (0 ahead),
    then leaves with QueueTimeoutError after max_wait_s; the running ones go on."""
    scheduler = BatchScheduler(max_queued=2, retry_after_s=2.0, max_wait_s=0.3)
    scheduler.start(lambda: batch)

    async def main():
        running = [scheduler.stream(job(f"endless{i}", ENDLESS)) for i in range(2)]
        for stream in running:  # each has its row: it decodes
            async for event in stream:
                if isinstance(event, Delta):
                    break
        waited = []

        async def wait_in_the_queue():
            async for event in scheduler.stream(job("waits")):
                waited.append(event)

        with pytest.raises(QueueTimeoutError) as timed_out:
            await wait_in_the_queue()
        for stream in running:
            assert isinstance(await anext(stream), Delta)  # not cut off by the timeout
            await stream.aclose()
        return waited, timed_out.value

    try:
        waited, error = asyncio.run(main())
    finally:
        scheduler.close()
    assert [type(e) for e in waited] == [Admitted, Started, Queued]
    assert waited[2] == Queued(0, 0.3)
    assert error.retry_after_s == 2.0
    assert "limits.max_queue_wait_s (0.3 s" in str(error)
    assert "waits" in batch.cancelled
    assert not any("waits" in step for step in batch.log)  # it never decoded
