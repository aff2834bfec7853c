"""Start a local redis-server when the configured local URL has nobody answering.

Only a plain ``redis://`` URL naming this machine, without credentials, whose port
refuses the connection gets a redis-server of its own; every other URL (a cluster, a
Sentinel, TLS, a unix socket, another host, a server that answers, even with a refusal)
is left to the store's own start-up check (``RedisStore.open``), which says in one line
what is wrong. :func:`advise` adds what to do to such a line.
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from bandit_serve.errors import BanditServeError
from bandit_serve.service.options import LOOPBACK
from bandit_serve.store.connection import RedisTarget, parse_url, redact

__all__ = ["LocalRedis", "advise", "ensure_redis"]

CHECK_URL = "check --redis-url, REDIS_URL or the config's redis_url"
CHECK_PASSWORD = (
    "check the password (in the URL, ?password_file=, REDIS_PASSWORD_FILE or REDIS_PASSWORD) "
    "and the user (in the URL, ?username= or REDIS_USERNAME)"
)
CHECK_SENTINEL_PASSWORD = (
    "check the Sentinels' credentials (?sentinel_username=, ?sentinel_password_file=, "
    "REDIS_SENTINEL_USERNAME or REDIS_SENTINEL_PASSWORD)"
)


class LocalRedis:
    """A redis-server this process started (append-only file on); ``stop()`` ends it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, data_dir: Path) -> None:
        self.proc = proc
        self.url = url
        self.data_dir = data_dir

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _refused(host: str, port: int) -> bool:
    """Whether ``host:port`` refuses a TCP connection (nothing listens there). A timeout
    or any other failure is not a refusal: that is for the store's check to report."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError as err:
        return err.errno == errno.ECONNREFUSED


def _startable(target: RedisTarget) -> tuple[str, int] | None:
    """(host, port) when ``target`` is a plain URL of this machine, else None."""
    if target.kind != "single" or target.tls:
        return None
    host, port = target.hosts[0]
    return (host, port) if host in LOOPBACK else None


def ensure_redis(url: str, data_dir: Path) -> LocalRedis | None:
    """Start redis-server for ``url`` when it is a plain local URL whose port refuses the
    connection; else None (the store's start-up check speaks for every other URL).

    Raises BanditServeError (one line, the URL redacted) when the URL is malformed, names
    credentials that a server started here would not know, redis-server is not installed,
    or it does not come up.
    """
    target = parse_url(url)  # ConfigError, one line, for a malformed URL
    where = _startable(target)
    if where is None or not _refused(*where):
        return None
    host, port = where
    shown = redact(url)
    if target.password is not None or target.username is not None:
        raise BanditServeError(
            f"nothing answers at {shown} (connection refused), and bandit-serve starts a "
            "redis-server only for a local URL without credentials: start the Redis the "
            f"credentials belong to, or {CHECK_URL}"
        )
    exe = shutil.which("redis-server")
    if exe is None:
        raise BanditServeError(
            f"Nothing answers at {shown} and redis-server is not installed. Install it "
            "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) "
            "or point --redis-url / REDIS_URL at a running server."
        )
    log = data_dir / "redis.log"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "::1" if host == "::1" else "127.0.0.1",
                "--appendonly",
                "yes",
                "--save",
                "",
                "--dir",
                str(data_dir),
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as err:
        raise BanditServeError(
            f"cannot start redis-server for {shown} in {data_dir}: {err.strerror or err}"
        ) from None
    client = redis.Redis(host=host, port=port, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        for _ in range(100):
            try:
                client.ping()
                return LocalRedis(proc, url, data_dir)
            except redis.RedisError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        client.close()
    proc.kill()
    proc.wait()
    raise BanditServeError(
        f"redis-server did not come up on port {port}{_last_line(log)}; see {log}"
    )


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" ({lines[-1].strip()[:200]})" if lines else ""


def advise(message: str) -> str:
    """A start-up line of the store (``RedisStore.open``) with what to do added, where the
    line itself does not say: refused credentials, nothing answering, no replica."""
    hint = _hint(message)
    if hint is None:
        return message
    return f"{message.rstrip().removesuffix('.')}; {hint}"  # redis-py's texts end in "."


def _hint(message: str) -> str | None:
    if "refused the credentials" in message:
        return CHECK_SENTINEL_PASSWORD if message.startswith("no Sentinel of") else CHECK_PASSWORD
    unreachable = (
        message.startswith(("no node of the Redis Cluster", "no Sentinel of"))
        or "connecting to" in message
        or "Connection refused" in message
        or "Timeout" in message
        or "timed out" in message
    )
    if unreachable:
        return f"is Redis running there? {CHECK_URL}"
    if message.startswith("durability: replicated needs"):
        return "give every master a replica (replicaof), or drop durability=replicated"
    return None
