import asyncio
import threading

import pytest

from pipeline.service.scheduler import StepScheduler


def steps(name, n, log, fail_at=None):
    """A request of `n` steps that records which request ran each step."""
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"{name} broke")
        log.append(name)
        yield f"{name}{i}"


async def collect(scheduler, start):
    return [item async for item in scheduler.stream(start)]


@pytest.fixture
def scheduler():
    s = StepScheduler()
    yield s
    s.close()


def test_requests_take_turns_one_step_each(scheduler):
    log = []
    gate = threading.Event()

    def blocked_start():  # holds the worker until every request is admitted
        gate.wait()
        return steps("a", 3, log)

    async def main():
        first = asyncio.create_task(collect(scheduler, blocked_start))
        await asyncio.sleep(0.05)
        others = [
            asyncio.create_task(collect(scheduler, lambda: steps("b", 3, log))),
            asyncio.create_task(collect(scheduler, lambda: steps("c", 1, log))),
        ]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *others)

    a, b, c = asyncio.run(main())
    assert (a, b, c) == (["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0"])
    assert log == ["a", "b", "c", "a", "b", "a", "b"]
    assert scheduler.active == 0


def test_a_short_request_finishes_long_before_a_long_one(scheduler):
    log = []  # written on the worker thread, so it records the order steps ran in
    gate = threading.Event()

    def blocked_long():  # holds the worker until every request is admitted
        gate.wait()
        return steps("long", 400, log)

    async def main():
        tasks = [
            asyncio.create_task(collect(scheduler, blocked_long)),
            asyncio.create_task(collect(scheduler, lambda: steps("short", 2, log))),
            asyncio.create_task(collect(scheduler, lambda: steps("long2", 400, log))),
        ]
        await asyncio.sleep(0)  # every task runs up to its first await: all are submitted
        gate.set()
        return await asyncio.gather(*tasks)

    long, short, long2 = asyncio.run(main())
    assert (len(long), short, len(long2)) == (400, ["short0", "short1"], 400)
    last_short_step = max(i for i, name in enumerate(log) if name == "short")
    assert last_short_step < 6
    assert len(log) == 802


def test_a_failing_request_fails_alone(scheduler):
    log = []

    async def main():
        return await asyncio.gather(
            collect(scheduler, lambda: steps("bad", 5, log, fail_at=2)),
            collect(scheduler, lambda: steps("good", 4, log)),
            return_exceptions=True,
        )

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError)
    assert str(bad) == "bad broke"
    assert good == ["good0", "good1", "good2", "good3"]


def test_leaving_early_closes_the_request_and_stops_its_steps(scheduler):
    closed = threading.Event()
    log = []

    def endless():
        try:
            while True:
                log.append("x")
                yield "x"
        finally:
            closed.set()

    async def main():
        stream = scheduler.stream(endless)
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(main())
    assert closed.wait(5)
    taken = len(log)
    assert scheduler.active == 0
    assert len(log) == taken  # no step ran after the close


def test_closing_the_scheduler_fails_running_requests_and_refuses_new_ones():
    scheduler = StepScheduler()
    gate = threading.Event()

    def slow():
        gate.wait()
        yield "late"

    async def main():
        task = asyncio.create_task(collect(scheduler, slow))
        await asyncio.sleep(0.05)
        closer = asyncio.get_running_loop().run_in_executor(None, scheduler.close)
        await asyncio.sleep(0.05)
        gate.set()
        await closer
        return await asyncio.gather(task, return_exceptions=True)

    (result,) = asyncio.run(main())
    assert isinstance(result, RuntimeError)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(collect(scheduler, lambda: steps("z", 1, [])))


def test_call_runs_on_the_thread_that_runs_every_step(scheduler):
    """The model is loaded where its steps run (one OpenMP pool, see StepScheduler.call)."""
    loaded_on = scheduler.call(threading.get_ident)

    def step_threads():
        for _ in range(3):
            yield threading.get_ident()

    assert asyncio.run(collect(scheduler, step_threads)) == [loaded_on] * 3
    assert loaded_on != threading.get_ident()


def test_call_hands_back_the_error(scheduler):
    def broken():
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        scheduler.call(broken)
    assert scheduler.call(lambda: 42) == 42  # the worker goes on
