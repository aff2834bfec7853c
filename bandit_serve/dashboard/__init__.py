"""The dashboard page, served by the router at ``GET /dashboard``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

__all__ = ["mount"]

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>bandit-serve</title></head>
<body><h1>bandit-serve</h1><p>Experiments: <a href="/v1/experiments">/v1/experiments</a></p>
</body></html>"""


def mount(api: FastAPI) -> None:
    """Add the dashboard's routes to the API app."""

    @api.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> str:
        return _PAGE
