"""A private `redis-server` for tests and benchmarks: loopback only, no persistence, its own
free port, stopped by its PID (never by name: other Redis servers run on these machines)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

import redis

from pipeline.ports import free_port

START_TIMEOUT_S = 10.0


class LocalRedis:
    """`start()`, `stop()` (and `start()` again on the same port: an empty server, as after a
    crash without persistence), `pause()`/`resume()` (a server that stops answering).

    password: required by the server when set (and put in `url`). tls_args: redis-server TLS
    options; with them the server listens with TLS only and `url` is rediss://.
    """

    def __init__(
        self,
        executable: str = "redis-server",
        password: str | None = None,
        tls_args: Sequence[str] = (),
    ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise FileNotFoundError(f"{executable} is not on PATH (install redis-server)")
        self.executable = path
        self.port = free_port()
        self.password = password
        self.tls_args = list(tls_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls_args else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        if self.process is not None:
            raise RuntimeError(f"redis-server already runs (pid {self.process.pid})")
        listen = ["--port", "0", "--tls-port", str(self.port)] if self.tls_args else []
        args = [
            self.executable,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"),
            *(("--requirepass", self.password) if self.password else ()),
            *listen,
            *self.tls_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_until_listening()
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 5 s): a crash, as far as clients can tell."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing is answered (a slow Redis)."""
        self._running().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._running().send_signal(signal.SIGCONT)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process

    def _tls_client_args(self) -> dict[str, str]:
        args = dict(zip(self.tls_args[::2], self.tls_args[1::2], strict=True))
        ca = args.get("--tls-ca-cert-file")
        return {"ssl_ca_certs": ca} if ca else {}

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        process = self._running()
        while True:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                self.process = None
                raise RuntimeError(f"redis-server exited with {process.returncode}: {err}")
            try:
                with redis.Redis.from_url(
                    self.url, socket_timeout=1, **self._tls_client_args()
                ) as client:
                    client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not answer within {START_TIMEOUT_S} s"
                    ) from None
                time.sleep(0.02)
