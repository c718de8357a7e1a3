"""The web page at `/`: ask a question, watch the answer stream in over `/v1/rag`'s events, see
its sources and which spans lookahead accepted in one forward pass.

Plain HTML, CSS and JavaScript shipped in the package (`static/`, package data), read once and
served from memory: no build step, and nothing fetched from anywhere else at run time, which the
Content-Security-Policy tells the browser too. The page is public (it holds no data); an API key,
when the service wants one, is typed into the page and sent by it on its own requests.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException

STATIC_PREFIX = "/static/"
MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",  # revalidate, so an upgraded service serves its own page
}
_STATIC = files(__package__) / "static"
_FILES = {name: (_STATIC / name).read_bytes() for name in MEDIA_TYPES}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> Response:
    return Response(_FILES[name], media_type=MEDIA_TYPES[name], headers=HEADERS)


@router.get("/")
async def index() -> Response:
    return _file("index.html")


@router.get(STATIC_PREFIX + "{name}")
async def static(name: str) -> Response:
    if name not in _FILES:
        raise HTTPException(404, "Not Found")
    return _file(name)
