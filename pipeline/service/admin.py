"""The admin routes: change the corpus of the running service, and see its index.

- `POST /v1/index/changes`: `{"add": [documents], "update": [documents], "delete": [ids]}`;
  202 with the build, queued: the IndexBuilder applies it off the request path as one new index
  version, and every Retriever replica switches to that version between searches.
- `GET /v1/index/builds/{id}`: that build: queued, building, done (with its version) or failed
  (with the reason; the current version serves on).
- `GET /v1/index`: the current version (documents, chunks, embedder), the versions kept and
  pinned, the build in progress and the last failed one, and the version each Retriever replica
  searches (as of its latest search).

They take the admin keys alone (`pipeline.service.auth`): with none configured they refuse
everyone. A body is bounded by `limits.max_body_bytes` like any other; larger corpora go
through `lookahead-rag index` on the index directory, which reaches the service the same way.
They are left out of the OpenAPI schema, which describes the answering API; docs/index-versions.md
describes them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Protocol

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from pipeline.service.errors import ApiError
from pipeline.service.schemas import NonBlank, Text
from retrieval.documents import Changes, Document
from retrieval.errors import ChangeError


class IndexAdmin(Protocol):
    """What the admin routes need (the Serve app: the IndexBuilder deployment's handle)."""

    async def submit(self, changes: Changes) -> Any:
        """Queue a change; its build (`pipeline.index_builder.Build`). Raises `ChangeError`."""
        ...

    async def build(self, build_id: str) -> Any:
        """A build by id, or None."""
        ...

    async def status(self) -> dict[str, Any]:
        """`pipeline.index_builder.IndexBuilder.status`."""
        ...


class DocumentIn(BaseModel):
    """A document as a corpus row gives it."""

    model_config = ConfigDict(strict=True, extra="forbid")
    id: NonBlank = Field(max_length=1000)
    text: NonBlank
    title: Text = ""
    source: Text = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    def document(self) -> Document:
        return Document(self.id, self.text, self.title, self.source or self.id, self.metadata)


class IndexChangeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    add: list[DocumentIn] = Field(default_factory=list)
    update: list[DocumentIn] = Field(default_factory=list)
    delete: list[NonBlank] = Field(default_factory=list)

    def changes(self) -> Changes:
        return Changes(
            add=[d.document() for d in self.add],
            update=[d.document() for d in self.update],
            delete=list(self.delete),
        )


router = APIRouter(include_in_schema=False)


def _admin(request: Request) -> IndexAdmin:
    admin = request.app.state.service.admin
    if admin is None:  # keys configured, but no builder (an app built without one)
        raise ApiError(503, "the index builder is not running", "service_unavailable")
    return admin


def _public(build: Any) -> dict[str, Any]:
    return asdict(build)


@router.get("/v1/index")
async def index_status(request: Request) -> dict[str, Any]:
    status = await _admin(request).status()
    for key in ("building", "last_failed"):
        if status[key] is not None:
            status[key] = _public(status[key])
    status["builds"] = [_public(build) for build in status["builds"]]
    replicas = request.app.state.service.metrics.index.states()
    status["replicas"] = [asdict(state) for state in replicas]
    return status


@router.post("/v1/index/changes", status_code=202)
async def change_index(body: IndexChangeRequest, request: Request) -> dict[str, Any]:
    try:
        build = await _admin(request).submit(body.changes())
    except ChangeError as exc:
        raise ApiError(400, str(exc), code="invalid_change") from exc
    return {"build": _public(build)}


@router.get("/v1/index/builds/{build_id}")
async def build_status(build_id: str, request: Request) -> dict[str, Any]:
    build = await _admin(request).build(build_id)
    if build is None:
        message = f"no build {build_id!r} (the builder remembers its latest)"
        raise ApiError(404, message, code="no_build")
    return {"build": _public(build)}
