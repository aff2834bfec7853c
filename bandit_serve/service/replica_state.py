"""The service of this router replica process.

Ray pickles the ingress class by value, so a module-level global of ``serve_app``
would be a different copy in the class's methods and in the HTTP routes; this module is
imported by reference in both, so they share ``service``.
"""

from __future__ import annotations

from bandit_serve.service.core import BanditService

service: BanditService | None = None


def get() -> BanditService:
    if service is None:
        raise RuntimeError("the router replica has not been configured yet")
    service.start()  # idempotent: starts the refresh and settle loops on first use
    return service
