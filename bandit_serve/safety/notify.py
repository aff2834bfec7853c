"""Post audit events to an operator's webhook (``notify: {url: ...}``), off the request path.

The replica whose transition wrote an event posts it, as JSON, with bounded retries and
backoff. Delivery is best effort (at most ``retries + 1`` attempts); the audit log in the
store is the record.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from bandit_serve.config import ExperimentConfig
    from bandit_serve.store import AuditEvent

__all__ = ["Notifier"]

log = logging.getLogger("bandit_serve")


class Notifier:
    """Posts events in background tasks; :meth:`close` waits for none of them."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, cfg: ExperimentConfig, events: list[AuditEvent]) -> None:
        if cfg.notify is None or not events:
            return
        payloads = [{"experiment": cfg.name, **e.public()} for e in events]
        task = asyncio.ensure_future(
            self._post(cfg.notify.url, payloads, cfg.notify.retries, cfg.notify.timeout_seconds)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(
        self, url: str, payloads: list[dict[str, Any]], retries: int, timeout_s: float
    ) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient()
        for payload in payloads:
            for attempt in range(retries + 1):
                try:
                    r = await self._client.post(url, json=payload, timeout=timeout_s)
                    if r.status_code < 500:
                        break
                except httpx.HTTPError as err:
                    log.warning("notify %s failed (attempt %d): %s", url, attempt + 1, err)
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
