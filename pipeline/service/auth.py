"""Optional API keys: a client sends `Authorization: Bearer KEY`, as the `openai` client does
with its `api_key`, and every path but the open ones (`server.open_paths`) refuses it a 401
without a key the service knows.

Keys come from `server.api_keys` (the config file or `LOOKAHEAD_RAG__SERVER__API_KEYS`, a JSON
list) and from `server.api_key_file`, one key a line, which is read again whenever it changes,
so keys rotate without a restart (a Kubernetes Secret mounted as a volume updates in place).
A key is compared by its SHA-256 digest with `hmac.compare_digest`, against every known key
in turn, so how long a refusal takes tells nothing about the keys.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.config import ServerSection
from pipeline.service.errors import ApiError

logger = logging.getLogger(__name__)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def read_key_file(path: Path) -> list[str]:
    """The keys of a key file: one a line, surrounding whitespace and blank lines ignored."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def keys_required(server: ServerSection) -> bool:
    """Whether callers must carry a key: keys or a key file are configured."""
    return bool(server.api_keys) or server.api_key_file is not None


class ApiKeys:
    """The keys a request may carry: fixed ones, and those of a file as it is now."""

    def __init__(self, keys: Iterable[str], file: Path | None = None) -> None:
        self._fixed = [_digest(key.encode()) for key in keys]
        self._file = file
        self._file_state: tuple[int, int, int] | None = None
        self._from_file: list[bytes] = []
        if file is not None:
            self._reload(file)  # a missing or unreadable file fails here, at start-up

    @classmethod
    def from_config(cls, server: ServerSection) -> ApiKeys | None:
        """The configured keys; None when neither keys nor a key file are set (no auth)."""
        if not keys_required(server):
            return None
        return cls((key.get_secret_value() for key in server.api_keys), server.api_key_file)

    def accepts(self, key: bytes | None) -> bool:
        """True when `key` is one of the keys, compared in constant time against all."""
        given = _digest(key or b"")
        found = False
        for known in self._fixed + self._current_file_keys():
            found |= hmac.compare_digest(given, known)
        return found and key is not None

    def _current_file_keys(self) -> list[bytes]:
        if self._file is not None:
            try:
                if self._state(self._file) != self._file_state:
                    self._reload(self._file)
            except OSError as exc:  # keep the last keys read rather than lock everyone out
                logger.warning("cannot read the API key file %s: %s", self._file, exc)
        return self._from_file

    def _reload(self, file: Path) -> None:
        state = self._state(file)
        self._from_file = [_digest(key.encode()) for key in read_key_file(file)]
        self._file_state = state

    @staticmethod
    def _state(file: Path) -> tuple[int, int, int]:
        info = os.stat(file)
        return info.st_ino, info.st_size, info.st_mtime_ns


def bearer_token(scope: Scope) -> bytes | None:
    """The key of `Authorization: Bearer KEY`, as the bytes the client sent; None without one."""
    value = Headers(scope=scope).get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("latin-1")  # Starlette decodes header bytes as latin-1


def is_open(path: str, open_paths: Iterable[str]) -> bool:
    """Whether `path` is answered without a key: an exact entry or a pattern ("/static/*")."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in open_paths)


class ApiKeyMiddleware:
    """401 in the API's error shape for a request without a known key, unless its path is open.
    `on_refused` sees each refusal (for the error metrics)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys,
        open_paths: Iterable[str],
        on_refused: Callable[[Request, ApiError], None],
    ) -> None:
        self.app, self.keys, self.on_refused = app, keys, on_refused
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"], self.open_paths):
            await self.app(scope, receive, send)
            return
        key = bearer_token(scope)
        if self.keys.accepts(key):
            await self.app(scope, receive, send)
            return
        message = (
            "no API key: send it as 'Authorization: Bearer KEY'"
            if key is None
            else "the API key is not valid"
        )
        error = ApiError(
            401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
        self.on_refused(Request(scope), error)
        await error.response()(scope, receive, send)
