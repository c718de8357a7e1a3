"""The Serve config inside the RayService is one Ray accepts, and it builds the CLI's app.

Ray's own schema (ServeDeploySchema) checks the config; Ray's own builder path (import the
`import_path`, call it with `args`, build the application graph) checks that it names the
app the CLI serves and that its deployment overrides name real deployments. Nothing here
starts Ray: binding and building a Serve application graph is pure Python.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest
import yaml
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app
from ray.serve._private.utils import import_attr
from ray.serve.schema import ServeDeploySchema

import pipeline.service.app
from generation.defaults import MAX_BATCH_GPU
from pipeline.commands import cli
from pipeline.config import ENV_PREFIX, Config, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def serve_config(rayservice: dict) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))


def test_serve_listens_where_the_pods_expose_it(serve_config: ServeDeploySchema) -> None:
    assert serve_config.http_options.host == "0.0.0.0"  # reached from outside the pod
    assert serve_config.http_options.port == 8000  # the containers' `serve` port


def test_serve_config_builds_the_app_the_cli_serves(
    serve_config: ServeDeploySchema, small_index_dir: Path, app_environment
) -> None:
    # The builder makes the configured index when it is missing: here, one already built (the
    # default corpus would take a minute to embed).
    app_environment({f"{ENV_PREFIX}RETRIEVAL__INDEX_DIR": str(small_index_dir)})
    (app_config,) = serve_config.applications
    local = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    (local_app,) = local["applications"]
    assert app_config.import_path == local_app["import_path"]  # what `serve run` deploys
    builder = import_attr(app_config.import_path)
    built = build_app(
        call_user_app_builder_with_args_if_necessary(builder, app_config.args),
        name=app_config.name,
    )
    names = {d.name for d in built.deployments}
    # `lookahead-rag serve` deploys pipeline.service.app.build_app of the config: the same graph.
    cli_app = build_app(pipeline.service.app.build_app(load_config()), name=app_config.name)
    assert names == {d.name for d in cli_app.deployments}
    overridden = {d.name for d in app_config.deployments}
    assert overridden <= names, f"overrides for deployments the app lacks: {overridden - names}"
    assert {"Retriever", "Generator"} <= overridden


def test_container_environment_is_the_app_configuration(
    rayservice: dict, rendered: dict[str, list[dict]], app_environment
) -> None:
    """Every variable the pods get configures a real key: a misspelt or old-style name would be
    silently ignored by load_config, so check the names, then that they load."""
    (env_map,) = [
        r
        for r in rendered["service"]
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "lookahead-rag-env"
    ]
    environ = dict(env_map["data"])
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        for var in container["env"]:  # from the Secret: a stand-in value
            environ[var["name"]] = var.get("value", "redis://:pw@lookahead-rag-redis:6379/0")
    assert all(name.startswith(ENV_PREFIX) for name in environ), sorted(environ)
    app_environment(environ)
    config = load_config()
    assert config.retrieval.index_dir == Path("/data/index")
    assert config.model.device == "cuda"
    assert config.ngrams.enabled
    assert config.ngrams.redis_url is not None
    assert config.server.api_key_file == Path("/etc/lookahead-rag/api-keys/keys")


def test_generator_replicas_take_one_gpu_and_scale(serve_config: ServeDeploySchema) -> None:
    (app_config,) = serve_config.applications
    generator = {d.name: d for d in app_config.deployments}["Generator"]
    assert generator.ray_actor_options.num_gpus == 1
    scaling = generator.autoscaling_config
    assert 1 <= scaling["min_replicas"] < scaling["max_replicas"]
    # Scaled out once a GPU batch is full; handed more than batch + queue, so that past them a
    # replica answers 503 + Retry-After instead of Serve queueing without bound.
    config = Config()
    assert scaling["target_ongoing_requests"] == MAX_BATCH_GPU
    capacity = MAX_BATCH_GPU + config.limits.max_queued
    assert generator.max_ongoing_requests > capacity


def _job_args(job: dict) -> argparse.Namespace:
    program, *argv = shlex.split(job["spec"]["entrypoint"])
    assert program == "lookahead-rag"
    return cli.build_parser(argv[0]).parse_args(argv)


def test_job_entrypoints_are_valid_cli_commands(rayjobs: dict[str, dict]) -> None:
    assert set(rayjobs) == {"lookahead-rag-index", "lookahead-rag-batch"}
    for job in rayjobs.values():
        assert callable(_job_args(job)._run)


def _job_containers(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_jobs_join_their_cluster_and_work_on_the_data_volume(
    rayjobs: dict[str, dict], app_environment
) -> None:
    """The driver runs wherever Ray puts it: every container mounts the volume and gets the
    app's environment, in which the driver joins the job's cluster (a local Ray otherwise)."""
    for job in rayjobs.values():
        for container in _job_containers(job):
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data"}
            app_environment(
                {
                    var["name"]: var.get("value", "redis://:pw@lookahead-rag-redis:6379/0")
                    for var in container["env"]
                }
            )
            assert load_config().server.ray_address == "auto"


def test_index_job_embeds_on_actors(rayjobs: dict[str, dict]) -> None:
    args = _job_args(rayjobs["lookahead-rag-index"])
    assert args.distributed
    assert args.actors >= 2
    assert args.out == Path("/data/index")  # the service's retrieval.index_dir


def test_batch_job_resumes_and_gives_its_generators_gpus(rayjobs: dict[str, dict]) -> None:
    job = rayjobs["lookahead-rag-batch"]
    args = _job_args(job)
    assert args.resume
    assert args.questions.parent == args.out.parent == Path("/data/batch")
    (gpu,) = [
        g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"
    ]
    per_worker = float(gpu["rayStartParams"]["num-gpus"])
    assert 0 < args.gpus_per_actor <= per_worker  # an actor fits on one worker
    assert args.actors * args.gpus_per_actor <= per_worker * gpu["maxReplicas"]
    environ = {v["name"] for c in _job_containers(job) for v in c["env"]}
    assert "LOOKAHEAD_RAG__NGRAMS__REDIS_URL" in environ  # n-grams shared with the service
