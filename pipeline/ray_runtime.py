"""Start and stop Ray and the Serve proxy for this process: a local Ray bound to loopback by
default, or an existing cluster (`server.ray_address`).

Ray reads `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` once, when it is first imported, to decide whether
a local node may listen beyond loopback. Anything may import Ray before this module (a test of
the Serve schema, a user's own code), so the setting is set here for the child processes and
applied again to the driver's already-imported constant just before a local Ray starts.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import Config

_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ.setdefault(_LOOPBACK_ONLY, "0")
# Serve and the replicas log to the driver's stdout unless told otherwise; keep the CLI readable.
os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")

import ray  # noqa: E402  (after the environment above)
from ray import serve  # noqa: E402
from ray._private import ray_constants  # noqa: E402


def bind_replica_grpc_to_loopback() -> None:
    """Worker setup hook for a local, loopback-only Ray.

    Serve 2.60 replicas open an inter-deployment gRPC server on `[::]:0` (every interface), with
    no setting to change it (ray-project/ray#64544); by default nothing even uses it (handles
    call replicas through Ray). Bind it to loopback instead, so no port of ours faces the network.
    """
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    replica.add_port_to_grpc_server = lambda server, address: bind(
        server, address.replace("[::]", "127.0.0.1")
    )


def setup_worker() -> None:
    """Worker setup hook of a local Ray: replicas' gRPC on loopback, and the Serve proxy's
    deadline on request headers (`pipeline.header_deadline`, when its setting is in
    the environment)."""
    from pipeline import header_deadline

    bind_replica_grpc_to_loopback()
    header_deadline.install_from_env()


def _local_runtime_env(config: Config) -> dict:
    """Workers import this very source tree (a checkout may shadow an installed copy), then run
    the setup hook; a hook they could not import would make every worker fail to start."""
    from pipeline.header_deadline import ENV

    root = str(Path(__file__).absolute().parent.parent)
    paths = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(paths), ENV: str(config.limits.header_timeout_s)}
    return {"env_vars": env, "worker_process_setup_hook": f"{__name__}.{setup_worker.__name__}"}


def start(config: Config, quiet: bool = False) -> None:
    """Ray (`connect`), then the Serve proxy. `quiet`: replica logs stay in Ray's log files and
    Serve says only what goes wrong."""
    connect(config, quiet)
    server = config.server
    serve.start(http_options={"host": server.host, "port": server.port})


def connect(config: Config, quiet: bool = False) -> None:
    """Connect to `server.ray_address`, or start a local Ray on loopback."""
    server = config.server
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if not ray.is_initialized():
        if server.ray_address:
            ray.init(address=server.ray_address, logging_level=logging.WARNING)
        else:
            _keep_on_loopback()
            ray.init(
                num_cpus=server.ray_num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=not quiet,
                runtime_env=_local_runtime_env(config),
            )


@contextmanager
def connected(config: Config, quiet: bool = False) -> Iterator[None]:
    """Ray for the duration of the block (`connect`); a Ray this process was not using before
    is shut down (or disconnected from) afterwards."""
    was_initialized = ray.is_initialized()
    connect(config, quiet)
    try:
        yield
    finally:
        if not was_initialized:
            ray.shutdown()


def _keep_on_loopback() -> None:
    """Unless the user opted in to a multi-node local cluster, the driver picks 127.0.0.1 as the
    node address, and every Ray process binds there."""
    if os.environ.get(_LOOPBACK_ONLY) == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False


def stop(config: Config) -> None:
    """A local Ray goes down whole (Serve, replicas, every process); on a shared cluster only
    this app is deleted and the driver disconnects."""
    if not ray.is_initialized():
        return
    if config.server.ray_address:
        serve.delete(config.server.app_name)
    else:
        serve.shutdown()
    ray.shutdown()


class DeployError(RuntimeError):
    """An application did not deploy; the message names each failed deployment and why."""


# The last line of a Python traceback that states an exception: "package.module.Error: message".
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def deploy_app(app: serve.Application, name: str, route_prefix: str | None) -> None:
    """`serve.run`, failing with the root cause. Serve's own error says only which deployments
    failed ("Failed to update the deployments ['Retriever']"); the exception that failed a
    replica's constructor is in that deployment's status, at the end of a traceback."""
    try:
        serve.run(app, name=name, route_prefix=route_prefix)
    except RuntimeError as exc:
        raise DeployError(_failures(name) or str(exc)) from None


def _failures(name: str) -> str | None:
    try:
        status = serve.status().applications.get(name)
    except Exception:  # the status is a courtesy: the deploy has failed either way
        return None
    failed = [
        f"the {deployment} deployment failed to start: {root_cause(info.message)}"
        for deployment, info in (status.deployments.items() if status else ())
        if info.status in ("DEPLOY_FAILED", "UNHEALTHY")
    ]
    return f"deploying {name} failed: " + "; ".join(failed) if failed else None


def root_cause(message: str) -> str:
    """`ErrorType: message` of the last exception a traceback text states (the one that was
    raised last), or the text's first line when it states none."""
    text = _ANSI.sub("", message)
    found = _EXCEPTION_LINE.findall(text)
    if not found:
        return text.strip().splitlines()[0] if text.strip() else "no reason given"
    qualified, reason = found[-1]
    return f"{qualified.rsplit('.', 1)[-1]}: {reason}"


def http_url(config: Config) -> str:
    """The base URL of the Serve proxy as this process can reach it."""
    host = config.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{host}:{config.server.port}"


@contextmanager
def running(config: Config, quiet: bool = False) -> Iterator[None]:
    start(config, quiet)
    try:
        yield
    finally:
        stop(config)
