"""`lookahead-rag serve`: the RAG service on Ray Serve until Ctrl-C or SIGTERM.

Checks what the replicas will need before starting anything (the index, built first only at
its default location; the API key file), so that a bad one fails in seconds with its own
message; then starts (or joins) Ray, deploys the app and prints where it listens. A replica
that still fails to start is reported by its root cause. `serve run configs/serve.yaml`
deploys the same app without this command.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from pipeline.config import add_config_arguments, config_from_args
from pipeline.resources import ensure_index
from pipeline.service.auth import ApiKeys
from retrieval import RetrievalError

HELP = "run the RAG service (Ray Serve, HTTP API)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--host", help="bind address of the HTTP proxy (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000)")
    parser.add_argument("--ray-address", help='join this Ray cluster ("auto", "ray://...")')


def run(args: argparse.Namespace) -> int:
    config = config_from_args(
        args, server__host=args.host, server__port=args.port, server__ray_address=args.ray_address
    )
    try:
        ensure_index(config)
        ApiKeys.from_config(config.server)  # reads the key file, as the ingress will
    except (RetrievalError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from pipeline import ray_runtime
    from pipeline.service.app import deploy

    with ray_runtime.running(config):
        try:
            url = deploy(config)
        except ray_runtime.DeployError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"lookahead-rag serving {config.model.served_name!r} at {url} (Ctrl-C stops)")
        print(f"  try: lookahead-rag ask --url {url} 'How do I parse JSON?'", flush=True)
        _wait_for_stop()
        print("shutting down", flush=True)
    return 0


def _wait_for_stop() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
