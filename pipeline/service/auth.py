"""Optional API keys: a client sends `Authorization: Bearer KEY`, as the `openai` client does
with its `api_key`, and every path but the open ones (`server.open_paths`) refuses it a 401
without a key the service knows.

The admin routes (`/v1/index*`, changing the corpus) take their own keys, `server.admin_keys`
and `server.admin_key_file`, and no answering key; with none configured they refuse everyone.

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

    @classmethod
    def admin_from_config(cls, server: ServerSection) -> ApiKeys | None:
        """The admin routes' keys; None when none are configured (the routes refuse all)."""
        if not server.admin_keys and server.admin_key_file is None:
            return None
        return cls((key.get_secret_value() for key in server.admin_keys), server.admin_key_file)

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


# The admin routes (`pipeline.service.admin`): admin keys only.
ADMIN_PATHS = ("/v1/index", "/v1/index/*")


def is_open(path: str, open_paths: Iterable[str]) -> bool:
    """Whether `path` is answered without a key: an exact entry or a pattern ("/static/*")."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in open_paths)


class ApiKeyMiddleware:
    """401 in the API's error shape for a request without a known key, unless its path is open
    (`keys` None: every answering path is open). The admin paths take the admin keys alone, and
    refuse everyone with a 403 when there are none. `on_refused` sees each refusal (for the
    error metrics)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys | None,
        open_paths: Iterable[str],
        on_refused: Callable[[Request, ApiError], None],
        admin_keys: ApiKeys | None = None,
    ) -> None:
        self.app, self.keys, self.on_refused = app, keys, on_refused
        self.open_paths = tuple(open_paths)
        self.admin_keys = admin_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = None
        if scope["type"] == "http":
            if is_open(scope["path"], ADMIN_PATHS):
                error = self._admin_refusal(scope)
            elif self.keys is not None and not is_open(scope["path"], self.open_paths):
                error = _refusal(self.keys, bearer_token(scope), "API key", "invalid_api_key")
        if error is None:
            await self.app(scope, receive, send)
            return
        self.on_refused(Request(scope), error)
        await error.response()(scope, receive, send)

    def _admin_refusal(self, scope: Scope) -> ApiError | None:
        if self.admin_keys is None:
            return ApiError(
                403,
                "the admin routes are off: no admin key is configured (server.admin_keys or "
                "server.admin_key_file)",
                type_="permission_error",
                code="admin_disabled",
            )
        return _refusal(self.admin_keys, bearer_token(scope), "admin key", "invalid_admin_key")


def _refusal(keys: ApiKeys, key: bytes | None, what: str, code: str) -> ApiError | None:
    if keys.accepts(key):
        return None
    message = (
        f"no {what}: send it as 'Authorization: Bearer KEY'"
        if key is None
        else f"the {what} is not valid"
    )
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})
