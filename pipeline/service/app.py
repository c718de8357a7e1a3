"""The Ray Serve application: an HTTP ingress (the FastAPI app of `pipeline.service.routes`)
composed with a Retriever and a Generator deployment through `DeploymentHandle`s.

- Retriever: embeds queries in batches (`serve.batch`: concurrent requests share one encoder
  call) and searches the FAISS index.
- Generator: holds the model; its `BatchScheduler` decodes every admitted request in one
  continuous batch (one forward pass per step for all), queues the rest up to
  `limits.max_queued` (each for `limits.max_queue_wait_s` at most) and refuses beyond that with
  503 + Retry-After.
- Ingress: validation, retrieval -> generation, JSON or SSE, metrics.

Heavy imports (torch, faiss) happen inside the Retriever and Generator only, so the ingress
replica stays light. `serve run configs/serve.yaml` builds the same app through `app_builder`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from pipeline.config import Config, load_config
from pipeline.service.errors import BackendUnavailableError, ReplicaDiedError
from pipeline.service.routes import build_api
from pipeline.service.scheduler import BatchScheduler
from pipeline.wire import Event, GenerationJob

_DIED = (RayActorError, ActorUnavailableError)  # the replica that ran the request
_DOWN = (BackPressureError, DeploymentUnavailableError)  # no replica could take it
HEALTH_TIMEOUT_S = 5.0


@serve.deployment
class Retriever:
    def __init__(self, config: Config) -> None:
        from pipeline.resources import open_index

        self.index = open_index(config)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed(self, queries: list[str]) -> list[Any]:
        return list(self.index.embed_queries(queries))

    async def search(self, query: str, k: int) -> list[Any]:
        vector = await self._embed(query)
        return self.index.search_vectors(vector[None, :], k)[0]

    def check(self) -> bool:
        return True


@serve.deployment
class Generator:
    def __init__(self, config: Config) -> None:
        from pipeline.batching import load_batch

        limits = config.limits
        self.scheduler = BatchScheduler(
            limits.max_queued, limits.retry_after_s, limits.max_queue_wait_s
        )
        # On the thread that will run every step (see BatchScheduler.call).
        self.batch = self.scheduler.start(partial(load_batch, config))

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        async for event in self.scheduler.stream(job):
            yield event

    def check(self) -> bool:
        return True

    def __del__(self) -> None:
        self.scheduler.close()
        self.batch.answerer.close()


@contextmanager
def _reachable(part: str) -> Iterator[None]:
    """Ray's ways of saying a replica is gone or full -> 503 (`ReplicaDiedError` when the one
    running the request died: it may run again elsewhere); the request's own error -> itself."""
    try:
        yield
    except _DIED as exc:
        raise ReplicaDiedError(f"the {part} is unavailable: {type(exc).__name__}") from exc
    except _DOWN as exc:
        raise BackendUnavailableError(f"the {part} is unavailable: {type(exc).__name__}") from exc
    except RayTaskError as exc:
        # Raised inside the replica (a prompt that cannot fit, a bug): re-raise the original,
        # which the API's error handlers know how to report.
        raise exc.cause from None


class ServeBackend:
    """`pipeline.service.routes.Backend` over deployment handles."""

    def __init__(self, retriever: DeploymentHandle, generator: DeploymentHandle) -> None:
        self.retriever = retriever
        self.generator = generator.options(stream=True)
        self.generator_check = generator.check

    async def retrieve(self, query: str, k: int) -> Sequence[Any]:
        with _reachable("retriever"):
            return await self.retriever.search.remote(query, k)

    async def generate(self, job: GenerationJob) -> AsyncIterator[Event]:
        stream = self.generator.generate.remote(job)
        try:
            with _reachable("generator"):
                async for event in stream:
                    yield event
        finally:
            stream.cancel()  # the client left early: stop decoding for nobody

    async def check(self) -> None:
        with _reachable("backend"):
            try:
                await asyncio.wait_for(self._ping(), HEALTH_TIMEOUT_S)
            except asyncio.TimeoutError as exc:
                raise BackendUnavailableError(
                    f"a backend did not answer its health check within {HEALTH_TIMEOUT_S} s"
                ) from exc

    async def _ping(self) -> None:
        await self.retriever.check.remote()
        await self.generator_check.remote()


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(
        self, config: Config, retriever: DeploymentHandle, generator: DeploymentHandle
    ) -> None:
        self.config = config
        self.backend = ServeBackend(retriever, generator)

    def __serve_build_asgi_app__(self):
        # The Serve proxy already puts x-request-id on every response.
        return build_api(self.backend, self.config, echo_request_id=False)


def build_app(config: Config) -> serve.Application:
    deployments = config.deployments
    retriever = Retriever.options(**deployments.retriever.options()).bind(config)
    generator = Generator.options(**deployments.generator.options()).bind(config)
    ingress = Ingress.options(**deployments.ingress.options())
    return ingress.bind(config, retriever, generator)


def deploy(config: Config) -> str:
    """Deploy the app on the running Serve instance; the base URL it answers on."""
    from pipeline.ray_runtime import deploy_app, http_url

    deploy_app(build_app(config), name=config.server.app_name, route_prefix="/")
    return http_url(config)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For Serve config files: `args: {config: path.yaml, overrides: {"retrieval.top_k": 2}}`.
    Builds the configured index first if it is missing (as `lookahead-rag serve` does)."""
    from pipeline.resources import ensure_index

    config = load_config(args.get("config"), overrides=args.get("overrides"))
    ensure_index(config)
    return build_app(config)
