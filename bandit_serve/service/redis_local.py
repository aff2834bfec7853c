"""Start a local redis-server when the configured local URL has nobody answering."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from bandit_serve.errors import BanditServeError

__all__ = ["LocalRedis", "ensure_redis"]

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


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


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return True
    except redis.RedisError:
        return False


def ensure_redis(url: str, data_dir: Path) -> LocalRedis | None:
    """Return None when ``url`` answers (or is not local); else start redis-server there.

    Raises BanditServeError when redis-server is not installed or does not come up.
    """
    if _answers(url):
        return None
    parsed = urlparse(url)
    if parsed.scheme != "redis" or (parsed.hostname or "127.0.0.1") not in LOCAL_HOSTS:
        raise BanditServeError(f"Redis at {url} does not answer, and it is not local to start.")
    exe = shutil.which("redis-server")
    if exe is None:
        raise BanditServeError(
            f"Nothing answers at {url} and redis-server is not installed. Install it "
            "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) "
            "or point --redis-url / REDIS_URL at a running server."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    port = parsed.port or 6379
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--save",
            "",
            "--dir",
            str(data_dir),
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if _answers(url):
            return LocalRedis(proc, url, data_dir)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise BanditServeError(f"redis-server did not come up on port {port}; see {data_dir}/redis.log")
