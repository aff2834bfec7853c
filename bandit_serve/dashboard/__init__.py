"""The live dashboard, served by the router at ``GET /dashboard``.

The page is static: ``index.html``, ``static/dashboard.css`` and ``static/dashboard.js``
(package data), plus the charting library, plotly.js, served from the installed ``plotly``
Python package (``plotly/package_data/plotly.min.js``; nothing of it is copied into this
repository). The script polls the public HTTP API every few seconds, so the page holds no
server-side state and works behind any number of router replicas.

Neither the page nor its files need an API key. When an API route answers 401, the page
asks once for a key with the ``read`` scope, keeps it in the tab's ``sessionStorage`` and
sends it as ``Authorization: Bearer <key>`` on every API request (never in a URL).

Routes (left out of the OpenAPI schema)::

    GET /dashboard                      the page
    GET /dashboard/static/{name}        dashboard.js, dashboard.css, plotly.min.js
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

__all__ = ["CHART_LIBRARY", "mount"]

CHART_LIBRARY = "plotly.min.js"
_OWN_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page runs only its own scripts from this origin; plotly.js sets inline styles.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate (ETag) on every load: upgrades show at once
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


def _make_asset(body: bytes, media_type: str) -> _Asset:
    digest = hashlib.sha256(body).hexdigest()[:32]
    return _Asset(body, gzip.compress(body, 6, mtime=0), media_type, f'"{digest}"')


def chart_library_path() -> Path | None:
    """plotly.min.js inside the installed ``plotly`` package (found without importing it),
    or None when plotly is not installed."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "package_data" / CHART_LIBRARY
        if path.is_file():
            return path
    return None


@cache
def _asset(name: str) -> _Asset | None:
    """One of the page's files, read and compressed once per process."""
    if name == "index.html":
        text = (resources.files(__name__) / "index.html").read_bytes()
        return _make_asset(text, "text/html; charset=utf-8")
    if name in _OWN_FILES:
        body = (resources.files(__name__) / "static" / name).read_bytes()
        return _make_asset(body, _OWN_FILES[name])
    if name == CHART_LIBRARY:
        path = chart_library_path()
        return None if path is None else _make_asset(path.read_bytes(), "text/javascript")
    return None


async def _respond(request: Request, name: str, extra: dict[str, str] | None = None) -> Response:
    asset = await asyncio.to_thread(_asset, name)  # the first read compresses: off the loop
    if asset is None:
        detail = (
            "the charting library is missing: install the plotly package"
            if name == CHART_LIBRARY
            else "no such dashboard file"
        )
        return Response(detail, status_code=404, media_type="text/plain")
    gzipped = "gzip" in request.headers.get("accept-encoding", "")
    etag = f'{asset.etag[:-1]}-gzip"' if gzipped else asset.etag  # one tag per encoding
    headers = {**_COMMON_HEADERS, "ETag": etag, "Vary": "Accept-Encoding", **(extra or {})}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def mount(api: FastAPI) -> None:
    """Add the dashboard's routes to the API app (no key needed for them)."""

    @api.get("/dashboard", include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        return await _respond(request, "index.html", {"Content-Security-Policy": _CSP})

    @api.get("/dashboard/static/{name}", include_in_schema=False)
    async def dashboard_file(request: Request, name: str) -> Response:
        if name not in _OWN_FILES and name != CHART_LIBRARY:
            return Response("no such dashboard file", status_code=404, media_type="text/plain")
        return await _respond(request, name)
