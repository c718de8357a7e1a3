"""The header deadline on a real uvicorn server (what Serve's proxy runs), over raw sockets on
loopback: a header block that stalls, or never starts, gets a 408 and a close; one that arrives
in time is served, on a fresh connection and on a kept-alive one. The Serve app's own test
(tests/pipeline/service/test_app.py) checks that `lookahead-rag serve` installs it in the proxy."""

import json
import socket
import threading
import time

import pytest
import uvicorn

from pipeline import header_deadline
from pipeline.ports import free_port

TIMEOUT_S = 0.5


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port():
    saved = uvicorn.config.HTTP_PROTOCOLS["auto"]
    header_deadline.install(TIMEOUT_S)
    try:
        port = free_port()
        config = uvicorn.Config(_app, host="127.0.0.1", port=port, http="auto", log_level="error")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield port
        server.should_exit = True
        thread.join(10)
    finally:
        uvicorn.config.HTTP_PROTOCOLS["auto"] = saved


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n", b"GE"])
def test_a_header_block_that_stalls_gets_a_408_and_a_close(port, sent):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(sent)
        t0 = time.monotonic()
        reply = _read_all(sock)
        assert time.monotonic() - t0 < 20
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout")
    assert b"connection: close" in head
    error = json.loads(body)["error"]
    assert error == {
        "message": f"the request headers did not arrive within {TIMEOUT_S:g} s",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }


def test_requests_in_time_are_served_and_a_kept_alive_connection_gets_a_new_deadline(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while not reply.endswith(b"ok"):
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200 ")
            time.sleep(2 * TIMEOUT_S)  # idle between requests: keep-alive's business, not ours
        sock.sendall(b"GET / HTTP/1.1\r\n")  # a third request that stalls
        assert _read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_a_local_ray_hands_the_deadline_to_every_worker_and_its_hook_installs_it(monkeypatch):
    from ray.serve._private import replica

    from pipeline import ray_runtime
    from pipeline.config import load_config

    env = ray_runtime._local_runtime_env(load_config(overrides={"limits.header_timeout_s": 7}))
    assert env["env_vars"][header_deadline.ENV] == "7.0"
    assert env["worker_process_setup_hook"] == "pipeline.ray_runtime.setup_worker"
    monkeypatch.setenv(header_deadline.ENV, "7.0")
    monkeypatch.setitem(uvicorn.config.HTTP_PROTOCOLS, "auto", "uvicorn.protocols.http.auto:X")
    monkeypatch.setattr(header_deadline.HeaderDeadlineProtocol, "timeout_s", 10.0)
    monkeypatch.setattr(replica, "add_port_to_grpc_server", replica.add_port_to_grpc_server)
    ray_runtime.setup_worker()  # as each worker of that Ray runs it before its first task
    protocol = uvicorn.config.Config(_app, http="auto")
    protocol.load()
    assert protocol.http_protocol_class is header_deadline.HeaderDeadlineProtocol
    assert header_deadline.HeaderDeadlineProtocol.timeout_s == 7.0
