"""The Ray Serve application: an HTTP ingress (the FastAPI app of `pipeline.service.routes`)
composed with a Retriever and a Generator deployment through `DeploymentHandle`s.

- Retriever: embeds queries in batches (`serve.batch`: concurrent requests share one encoder
  call) and searches the current version of the FAISS index, switching to a new version between
  searches (`retrieval.live`).
- Generator: holds the model; its `BatchScheduler` decodes every admitted request in one
  continuous batch (one forward pass per step for all), queues the rest up to
  `limits.max_queued` (each for `limits.max_queue_wait_s` at most) and refuses beyond that with
  503 + Retry-After.
- IndexBuilder (only with admin keys): applies the admin route's corpus changes one at a time,
  off the request path, each as a new index version (`pipeline.index_builder`).
- Ingress: validation, retrieval -> generation, JSON or SSE, metrics, the admin routes.

Heavy imports (torch, faiss) happen inside the Retriever and Generator only, so the ingress
replica stays light. `serve run configs/serve.yaml` builds the same app through `app_builder`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from pipeline.config import Config, load_config
from pipeline.service.auth import ApiKeys
from pipeline.service.errors import BackendUnavailableError, ReplicaDiedError
from pipeline.service.routes import build_api
from pipeline.service.scheduler import BatchScheduler
from pipeline.wire import Event, GenerationJob, IndexState, Retrieved, replica_name
from retrieval.documents import Changes

if TYPE_CHECKING:
    from pipeline.index_builder import Build

_DIED = (RayActorError, ActorUnavailableError)  # the replica that ran the request
_DOWN = (BackPressureError, DeploymentUnavailableError)  # no replica could take it
HEALTH_TIMEOUT_S = 5.0


@serve.deployment
class Retriever:
    def __init__(self, config: Config) -> None:
        from pipeline.resources import open_live_index

        self.live = open_live_index(config).watch(config.retrieval.watch_interval_s)
        self.name = replica_name()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed(self, queries: list[str]) -> list[Any]:
        # Every version has the same embedder (a version with another is refused).
        return list(self.live.snapshot().index.embed_queries(queries))

    async def search(self, query: str, k: int) -> Retrieved:
        """The passages of one index version, whichever is current as the search starts."""
        loaded = self.live.snapshot()
        vector = await self._embed(query)
        passages = loaded.index.search_vectors(vector[None, :], k)[0]
        state = IndexState(self.name, loaded.version, loaded.documents, len(loaded.index))
        return Retrieved(tuple(passages), state)

    def check(self) -> bool:
        return True

    def __del__(self) -> None:
        self.live.close()


@serve.deployment
class IndexBuilder:
    """Builds index versions for the admin route, one at a time, on its own thread
    (`pipeline.index_builder`): a request only queues its change."""

    def __init__(self, config: Config) -> None:
        from pipeline.index_builder import IndexBuilder as Builder
        from pipeline.resources import index_dir

        self.builder = Builder(index_dir(config), config.retrieval.keep_versions)

    def submit(self, changes: Changes) -> Build:
        return self.builder.submit(changes)

    def build(self, build_id: str) -> Build | None:
        return self.builder.build(build_id)

    def status(self) -> dict[str, Any]:
        return self.builder.status()

    def __del__(self) -> None:
        self.builder.close()


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

    async def retrieve(self, query: str, k: int) -> Retrieved:
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


class ServeIndexAdmin:
    """`pipeline.service.admin.IndexAdmin` over the IndexBuilder deployment's handle."""

    def __init__(self, builder: DeploymentHandle) -> None:
        self.builder = builder

    async def submit(self, changes: Changes) -> Build:
        with _reachable("index builder"):
            return await self.builder.submit.remote(changes)

    async def build(self, build_id: str) -> Build | None:
        with _reachable("index builder"):
            return await self.builder.build.remote(build_id)

    async def status(self) -> dict[str, Any]:
        with _reachable("index builder"):
            return await self.builder.status.remote()


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(
        self,
        config: Config,
        retriever: DeploymentHandle,
        generator: DeploymentHandle,
        builder: DeploymentHandle | None = None,
    ) -> None:
        self.config = config
        self.backend = ServeBackend(retriever, generator)
        self.admin = None if builder is None else ServeIndexAdmin(builder)

    def __serve_build_asgi_app__(self):
        # The Serve proxy already puts x-request-id on every response.
        return build_api(self.backend, self.config, echo_request_id=False, admin=self.admin)


def build_app(config: Config) -> serve.Application:
    """The app; the IndexBuilder only where admin keys are configured (else the admin routes
    refuse everyone, and nothing would call it)."""
    deployments = config.deployments
    retriever = Retriever.options(**deployments.retriever.options()).bind(config)
    generator = Generator.options(**deployments.generator.options()).bind(config)
    builder = None
    if ApiKeys.admin_from_config(config.server) is not None:
        builder = IndexBuilder.options(**deployments.index_builder.options()).bind(config)
    ingress = Ingress.options(**deployments.ingress.options())
    return ingress.bind(config, retriever, generator, builder)


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
