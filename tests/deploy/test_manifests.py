"""Every manifest under deploy/ is valid and follows the deployment's rules, checked offline.

Core kinds (and the pod templates inside RayService/RayJob, as core PodTemplates) go through
kubernetes-validate --strict; the KubeRay kinds through our own strict schema of the fields
used (kuberay_v1.schema.yaml).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.config import Config

# The oldest Kubernetes KubeRay 1.x supports here, and the newest schemas shipped.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
KUBERAY_KINDS = ("RayService", "RayJob")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
SCHEMA = yaml.safe_load((Path(__file__).parent / "kuberay_v1.schema.yaml").read_text())


def _ray_clusters(obj: dict) -> Iterator[dict]:
    spec = obj.get("spec", {})
    if "rayClusterConfig" in spec:
        yield spec["rayClusterConfig"]
    if "rayClusterSpec" in spec:
        yield spec["rayClusterSpec"]


def _pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """(role, pod template) for every pod the object makes."""
    if obj["kind"] in ("StatefulSet", "Deployment"):
        yield "app", obj["spec"]["template"]
    for cluster in _ray_clusters(obj):
        yield "head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield group["groupName"], group["template"]


def _containers(obj: dict) -> Iterator[dict]:
    for _, template in _pod_templates(obj):
        yield from template["spec"]["containers"]


def _as_pod_template(template: dict, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": name},
        "template": template,
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_pass_strict_validation(all_objects: list[dict], version: str) -> None:
    core = [o for o in all_objects if o["kind"] not in KUBERAY_KINDS]
    assert {o["kind"] for o in core} >= {
        "ConfigMap",
        "PersistentVolumeClaim",
        "StatefulSet",
        "Service",
    }
    for obj in core:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_ray_pod_templates_pass_strict_validation(all_objects: list[dict], version: str) -> None:
    ray_objects = [o for o in all_objects if o["kind"] in KUBERAY_KINDS]
    assert len(ray_objects) == 3  # the service, the index job, the batch job
    for obj in ray_objects:
        for role, template in _pod_templates(obj):
            kubernetes_validate.validate(_as_pod_template(template, role), version, strict=True)


def test_kuberay_objects_match_the_schema(all_objects: list[dict]) -> None:
    for obj in (o for o in all_objects if o["kind"] in KUBERAY_KINDS):
        jsonschema.validate(obj, SCHEMA)


def test_schema_rejects_unknown_and_misplaced_fields(rayservice: dict) -> None:
    broken = yaml.safe_load(yaml.safe_dump(rayservice))
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["numGpus"] = 1
    with pytest.raises(jsonschema.ValidationError, match="numGpus"):
        jsonschema.validate(broken, SCHEMA)


def test_every_container_has_requests_and_limits(all_objects: list[dict]) -> None:
    for obj in all_objects:
        for container in _containers(obj):
            for kind in ("requests", "limits"):
                amounts = container["resources"][kind]
                assert {"cpu", "memory"} <= set(amounts), container["name"]
                assert all(QUANTITY.match(str(v)) for v in amounts.values()), amounts
        for cluster in _ray_clusters(obj):
            assert set(cluster["autoscalerOptions"]["resources"]) == {"requests", "limits"}


def test_pods_run_as_non_root(all_objects: list[dict]) -> None:
    for obj in all_objects:
        for _, template in _pod_templates(obj):
            assert template["spec"]["securityContext"]["runAsNonRoot"] is True
            for container in template["spec"]["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_head_does_no_model_work_and_gpu_groups_agree(all_objects: list[dict]) -> None:
    for obj in (o for o in all_objects if o["kind"] in KUBERAY_KINDS):
        for cluster in _ray_clusters(obj):
            assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
            assert cluster["enableInTreeAutoscaling"] is True
            for group in cluster["workerGroupSpecs"]:
                assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
                (container,) = group["template"]["spec"]["containers"]
                gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
                assert gpus == container["resources"]["requests"].get("nvidia.com/gpu", 0)
                assert str(gpus) == group["rayStartParams"].get("num-gpus", "0")
                assert (gpus > 0) == (group["groupName"] == "gpu")
                assert container["image"].endswith("-cuda" if gpus else "-cpu")


def test_service_workers_are_ready_only_when_the_app_answers(rayservice: dict) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["httpGet"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert probe == {"path": "/healthz", "port": "serve"}
        assert ports["serve"] == 8000


# The Secrets deploy/README.md creates (they hold passwords and keys, so no manifest does).
DOCUMENTED_SECRETS = {
    "lookahead-rag-redis": {"password", "url"},
    "lookahead-rag-api-keys": {"keys"},
}
API_KEY_FILE = "/etc/lookahead-rag/api-keys/keys"


def test_references_resolve_within_the_service(rendered: dict[str, list[dict]]) -> None:
    """Jobs and service refer only to objects the service creates (or the documented
    Secrets), so nothing waits forever on a missing ConfigMap, claim or Secret."""
    created = {(o["kind"], o["metadata"]["name"]) for o in rendered["service"]}
    for obj in (o for objects in rendered.values() for o in objects):
        for _, template in _pod_templates(obj):
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            for volume in volumes.values():
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in created
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in DOCUMENTED_SECRETS
            for container in template["spec"]["containers"]:
                for source in container.get("envFrom", []):
                    assert ("ConfigMap", source["configMapRef"]["name"]) in created
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref is not None:
                        assert ref["key"] in DOCUMENTED_SECRETS[ref["name"]]
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes


def test_every_service_pod_holds_the_api_keys_and_is_probed_without_one(rayservice: dict) -> None:
    """The ingress takes no CPU, so Serve may place it on any pod: each one gets the key file
    (the Secret, mounted; the setting names the file), and its readiness probe needs no key."""
    for role, template in _pod_templates(rayservice):
        spec = template["spec"]
        secrets = {
            v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v
        }
        (container,) = spec["containers"]
        env = {var["name"]: var for var in container["env"]}
        assert env["LOOKAHEAD_RAG__SERVER__API_KEY_FILE"]["value"] == API_KEY_FILE, role
        (mount,) = [m for m in container["volumeMounts"] if m["name"] in secrets]
        assert secrets[mount["name"]] == "lookahead-rag-api-keys"
        assert API_KEY_FILE.startswith(mount["mountPath"] + "/")
        assert mount["readOnly"] is True
        probe = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
        assert probe in (None, *Config().server.open_paths)
