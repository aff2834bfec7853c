"""Signed event ids: only an id this service issued can carry a reward.

An event id handed to a client is ``<id>.<issued>.<kid>.<mac>``: the decision's random
128-bit id (32 hex digits, its key in the store), the issue time (seconds, base 36), the
signing key's id, and ``mac`` = the first 128 bits of HMAC-SHA256 over
``"<experiment>\\n<id>\\n<issued>"`` with that key, URL-safe base64. A reward whose id
does not verify (forged, of another experiment, tampered) is answered ``unknown`` before
the store is touched.

Keys: ``"kid1:secret1,kid2:secret2"`` from the environment variable the config's
``auth.signing_keys_env`` names — the first key signs, all verify (rotation: add the new
key first, keep the old one until its ids have expired) — or, without it, one key made
at random once and kept in the store for every replica.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass

from bandit_serve.errors import ConfigError

__all__ = ["Signer", "parse_keys"]

_ID = re.compile(r"^([0-9a-f]{32})\.([0-9a-z]{1,12})\.([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]{22})$")


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def parse_keys(text: str, source: str) -> list[tuple[str, bytes]]:
    """``"kid1:secret1,kid2:secret2"`` as ``[(kid, secret)]``; one clear error otherwise."""
    keys = []
    for part in (p.strip() for p in text.split(",")):
        kid, sep, secret = part.partition(":")
        if not sep or not re.match(r"^[A-Za-z0-9_-]{1,32}$", kid) or len(secret) < 16:
            raise ConfigError(
                f"{source}: expected kid:secret pairs separated by commas, each secret at "
                "least 16 characters (the value is not shown)"
            )
        keys.append((kid, secret.encode()))
    if not keys:
        raise ConfigError(f"{source}: no signing keys")
    return keys


@dataclass(frozen=True)
class Signer:
    """Issues and verifies signed event ids; the first key signs."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_env(cls, variable: str) -> Signer:
        text = os.environ.get(variable)
        if not text:
            raise ConfigError(
                f"auth.signing_keys_env: the environment variable {variable} is empty"
            )
        return cls(tuple(parse_keys(text, f"environment variable {variable}")))

    @staticmethod
    def random_secret() -> str:
        return secrets.token_urlsafe(32)

    def _mac(self, secret: bytes, experiment: str, event: str, issued: str) -> str:
        digest = hmac.new(secret, f"{experiment}\n{event}\n{issued}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()[:16]).decode().rstrip("=")

    def sign(self, experiment: str, event: str, now: float | None = None) -> str:
        kid, secret = self.keys[0]
        issued = _b36(int(time.time() if now is None else now))
        return f"{event}.{issued}.{kid}.{self._mac(secret, experiment, event, issued)}"

    def verify(self, experiment: str, token: str) -> str | None:
        """The store's id of a valid token of ``experiment``, else None."""
        found = _ID.match(token) if isinstance(token, str) else None
        if found is None:
            return None
        event, issued, kid, mac = found.groups()
        for k, secret in self.keys:
            if k == kid:
                want = self._mac(secret, experiment, event, issued)
                return event if hmac.compare_digest(want, mac) else None
        return None
