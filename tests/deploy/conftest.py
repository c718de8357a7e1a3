from __future__ import annotations

import pytest
from deploy_tree import DEPLOY, KUSTOMIZATIONS
from kustomize_render import Resource, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Resource]]:
    """Each kustomization under deploy/ rendered, keyed by its path under deploy/."""
    return {name: render(DEPLOY / name) for name in KUSTOMIZATIONS}


@pytest.fixture(scope="session")
def all_objects(rendered: dict[str, list[Resource]]) -> list[Resource]:
    return [obj for objects in rendered.values() for obj in objects]


@pytest.fixture(scope="session")
def rayservice(rendered: dict[str, list[Resource]]) -> Resource:
    (service,) = [r for r in rendered["service"] if r["kind"] == "RayService"]
    return service


@pytest.fixture(scope="session")
def rayjobs(rendered: dict[str, list[Resource]]) -> dict[str, Resource]:
    jobs = [r for name in KUSTOMIZATIONS if name.startswith("jobs/") for r in rendered[name]]
    return {r["metadata"]["name"]: r for r in jobs if r["kind"] == "RayJob"}
