"""Redis URLs, clients and what keeps them working through Redis trouble.

URL forms (query parameters below)::

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]
    rediss://...                                    the same over TLS
    unix://[[USER]:PASSWORD@]/PATH/TO/SOCKET[?db=N]
    redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]     Redis Cluster
    rediss+cluster://...                            the same over TLS
    redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]   Sentinel
    rediss+sentinel://...                           the same over TLS (Sentinels and data nodes)

For Sentinel the hosts are the Sentinels (port 26379 unless given); ``MASTER`` is the
name they monitor; the user, password and ``DB`` of the URL are those of the master
(and its replicas). A Sentinel's own credentials are ``sentinel_username=`` and
``sentinel_password_file=`` (or ``REDIS_SENTINEL_USERNAME`` / ``REDIS_SENTINEL_PASSWORD``).
A cluster URL may name one node or several; any one that answers is enough.

Credentials, so that secrets need not sit in config files: a password in the URL wins,
then ``password_file=PATH`` (the file's first line), then the environment variables
``REDIS_PASSWORD_FILE`` and ``REDIS_PASSWORD``. The user likewise: URL, ``username=``,
``REDIS_USERNAME``. TLS files: ``ssl_ca_certs=``, ``ssl_certfile=``, ``ssl_keyfile=``
(or ``REDIS_SSL_CA_CERTS``, ``REDIS_SSL_CERTFILE``, ``REDIS_SSL_KEYFILE``),
``ssl_cert_reqs=required|optional|none``, ``ssl_check_hostname=true|false``.

Other parameters: ``timeout`` (seconds, socket and connect), ``connect_timeout``,
``health_check_interval`` (seconds; a pooled connection idle for longer is PINGed
before use), ``retries``, ``retry_base``, ``retry_cap`` (the backoff),
``max_connections`` (per node), ``durability=primary|replicated``, ``wait_timeout``
(seconds) and ``wait_replicas`` (see below). An unknown parameter is an error.

:func:`redact` hides every password of a URL; messages and logs only ever show it.

Retries. Connection errors and timeouts are retried with exponential backoff and full
jitter (``retries`` times, sleeping up to ``retry_base * 2**n`` capped at ``retry_cap``):
in redis-py's own :class:`~redis.asyncio.retry.Retry` for a single server and Sentinel
(connection set-up, commands and pipelines), and around every command of a cluster
(which also re-reads the cluster's slot map, so a promoted replica is found). A retry
may re-send a script whose first attempt ran (the answer was lost, not the write);
every script of this store is safe to run twice (see ``RedisStore``). Authentication
and permission errors are never retried.

Durability ``replicated``: after each reward and log script the store sends ``WAIT``
on the same connection (a pipeline of ``EVALSHA`` and ``WAIT`` to the node that owns
the experiment's slot) and answers only when ``wait_replicas`` replicas have the write;
otherwise it raises :class:`~bandit_serve.errors.StoreError` (the write may or may not
survive a failover; a retried reward then answers ``duplicate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from bandit_serve.errors import ConfigError, StoreError
from bandit_serve.store.base import Durability

__all__ = [
    "RedisClient",
    "RedisConnection",
    "RedisTarget",
    "RetryPolicy",
    "connect",
    "describe_error",
    "parse_url",
    "redact",
]

T = TypeVar("T")
Kind = Literal["single", "unix", "cluster", "sentinel"]
RedisClient = aioredis.Redis | RedisCluster

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("unix", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_FLOAT_PARAMS = (
    "timeout",
    "connect_timeout",
    "health_check_interval",
    "retry_base",
    "retry_cap",
    "wait_timeout",
)
_INT_PARAMS = ("db", "retries", "max_connections", "wait_replicas")
_STR_PARAMS = (
    "username",
    "password",
    "password_file",
    "sentinel_username",
    "sentinel_password",
    "sentinel_password_file",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "durability",
)
_KNOWN_PARAMS = frozenset(_FLOAT_PARAMS + _INT_PARAMS + _STR_PARAMS)
_SECRET_PARAM = re.compile(r"password(?!_file)", re.IGNORECASE)


# -- redaction -----------------------------------------------------------------------


def redact(url: str) -> str:
    """The URL with every password replaced by ``***`` (never raises).

    >>> redact("redis://app:s3cret@db:6379/0?password_file=/run/pw")
    'redis://app:***@db:6379/0?password_file=/run/pw'
    >>> redact("redis+sentinel://:pw@s1:26379,s2/main?sentinel_password=x")
    'redis+sentinel://:***@s1:26379,s2/main?sentinel_password=***'
    """
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return "***" if "@" in text else text
    rest, qsep, query = rest.partition("?")
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = (user + ":***" if colon else user) + rest[at:]
    if qsep:
        parts = []
        for part in query.split("&"):
            name, eq, _ = part.partition("=")
            parts.append(f"{name}=***" if eq and _SECRET_PARAM.search(name) else part)
        query = "&".join(parts)
    return f"{scheme}://{rest}{qsep}{query}"


# -- what a URL names ------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt ``n`` (from 1) sleeps a random
    time up to ``min(cap, base * 2**n)``; ``retries`` attempts after the first."""

    retries: int = 3
    base: float = 0.05
    cap: float = 1.0

    def backoff(self) -> ExponentialWithJitterBackoff:
        return ExponentialWithJitterBackoff(cap=self.cap, base=self.base)

    def redis_retry(self) -> Retry:
        """For redis-py's single-server and Sentinel connections."""
        return _Retry(self.backoff(), self.retries)

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        on_error: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> T:
        """``attempt()`` until it succeeds, an error is not retryable, or retries run out.
        ``on_error`` runs after each retryable failure (before the backoff)."""
        backoff = self.backoff()
        failures = 0
        while True:
            try:
                return await attempt()
            except Exception as err:
                if not retryable(err) or failures >= self.retries:
                    raise
                failures += 1
                if on_error is not None:
                    await on_error(err)
                await asyncio.sleep(backoff.compute(failures))


def retryable(err: BaseException) -> bool:
    """A connection error, timeout or cluster reconfiguration: try again later. Never a
    refused password or permission, never an error Redis answered for a command."""
    if _refused_credentials(err):
        return False
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    if isinstance(err, ClusterDownError | TryAgainError | SlotNotCoveredError | _Again):
        return True
    if isinstance(err, RedisClusterException):  # "cannot be connected": look at why
        cause = err.__cause__
        return cause is not None and retryable(cause)
    return False


def _refused_credentials(err: BaseException) -> bool:
    """A refused password or permission (redis-py wraps it in a ConnectionError for unix
    sockets)."""
    auth = AuthenticationError | AuthorizationError
    return isinstance(err, auth) or (
        isinstance(err, ConnectionError) and isinstance(err.__cause__, auth)
    )


class _Retry(Retry):
    """redis-py's Retry that never retries a refused password or permission."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def ok(err: Exception) -> bool:
            return retryable(err) and (is_retryable is None or is_retryable(err))

        return await super().call_with_retry(do, fail, ok, with_failure_count)


class _Again(StoreError):
    """Try again (the script was loaded, or the slot moved); retryable, and the message if
    the retries run out."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names, parsed and with its credentials resolved."""

    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    path: str | None = None
    db: int = 0
    master: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    connect_timeout: float | None = None
    health_check_interval: float = 2.0
    retry: RetryPolicy = RetryPolicy()
    max_connections: int | None = None
    durability: Durability | None = None
    wait_timeout: float = 1.0
    wait_replicas: int = 1
    redacted: str = ""

    @property
    def where(self) -> str:
        """The nodes, for messages (no credentials)."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        return ",".join(f"{h}:{p}" for h, p in self.hosts)


def _fail(url: str, problem: str) -> ConfigError:
    return ConfigError(f"Redis URL {redact(url)!r}: {problem}.")


def _read_secret(url: str, path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\r\n")
    except OSError as err:
        raise _fail(url, f"{what} {path!r} cannot be read ({err.strerror or err})") from None
    if not first:
        raise _fail(url, f"{what} {path!r} is empty")
    return first


def _hosts(url: str, text: str, default_port: int) -> tuple[tuple[str, int], ...]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise _fail(url, "a host list has an empty entry")
        if item.startswith("["):  # [IPv6]:port
            host, _, tail = item[1:].partition("]")
            port_text = tail[1:] if tail.startswith(":") else ""
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise _fail(url, f"{item!r} names no host")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise _fail(url, f"port {port_text!r} of {host!r} is not a number") from None
        if not 0 < port < 65536:
            raise _fail(url, f"port {port} of {host!r} is out of range")
        out.append((unquote(host), port))
    return tuple(out)


def _bool(url: str, name: str, value: str) -> bool:
    low = value.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise _fail(url, f"{name}={value!r} is not true or false")


def parse_url(url: str, environ: Mapping[str, str] | None = None) -> RedisTarget:
    """Parse a Redis URL (module docstring) and resolve its credentials; ConfigError,
    naming the (redacted) URL, when it is malformed."""
    env = os.environ if environ is None else environ
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://([^?#]*)(?:\?([^#]*))?", url.strip())
    if m is None:
        raise _fail(url, "not a URL (expected SCHEME://...)")
    scheme, rest, query = m.group(1).lower(), m.group(2), m.group(3) or ""
    if scheme not in _SCHEMES:
        raise _fail(url, f"unknown scheme {scheme!r}; use one of {', '.join(_SCHEMES)}")
    kind, tls = _SCHEMES[scheme]

    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _KNOWN_PARAMS:
            raise _fail(url, f"unknown query parameter {name!r}")
        if name in params:
            raise _fail(url, f"query parameter {name!r} is given twice")
        params[name] = value
    floats: dict[str, float] = {}
    ints: dict[str, int] = {}
    for name in _FLOAT_PARAMS:
        if name in params:
            try:
                floats[name] = float(params[name])
            except ValueError:
                raise _fail(url, f"{name}={params[name]!r} is not a number") from None
            if not floats[name] >= 0:
                raise _fail(url, f"{name} must not be negative")
    for name in _INT_PARAMS:
        if name in params:
            try:
                ints[name] = int(params[name])
            except ValueError:
                raise _fail(url, f"{name}={params[name]!r} is not a whole number") from None
            if ints[name] < 0:
                raise _fail(url, f"{name} must not be negative")

    # userinfo and the rest
    at = rest.rfind("@")
    userinfo, rest = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    url_user, colon, url_password = userinfo.partition(":")
    user = unquote(url_user) or None
    password = unquote(url_password) if colon and url_password else None

    hosts: tuple[tuple[str, int], ...] = ()
    path: str | None = None
    master: str | None = None
    db = ints.get("db")
    if kind == "unix":
        if not rest.startswith("/"):
            raise _fail(url, "a unix URL names an absolute socket path: unix:///path/to/redis.sock")
        path = unquote(rest)
    else:
        authority, slash, tail = rest.partition("/")
        if not authority:
            raise _fail(url, "no host given")
        hosts = _hosts(url, authority, 26379 if kind == "sentinel" else 6379)
        segments = [s for s in tail.split("/") if s] if slash else []
        if kind == "sentinel":
            if not segments:
                raise _fail(
                    url, "a Sentinel URL names the master: redis+sentinel://HOST:PORT[,...]/MASTER"
                )
            master = unquote(segments[0])
            segments = segments[1:]
        elif kind == "single" and len(hosts) > 1:
            raise _fail(url, "several hosts need redis+cluster:// or redis+sentinel://")
        if segments:
            if len(segments) > 1:
                raise _fail(url, f"unexpected path {'/' + tail!r}")
            try:
                path_db = int(segments[0])
            except ValueError:
                raise _fail(url, f"database {segments[0]!r} is not a number") from None
            if db is not None and db != path_db:
                raise _fail(url, f"database {path_db} in the path but db={db} in the query")
            db = path_db
    if kind == "cluster" and db:
        raise _fail(url, "a Redis Cluster has only database 0")

    # credentials: URL, then query, then environment
    if password is not None and ("password" in params or "password_file" in params):
        raise _fail(url, "the password is given twice (in the URL and as a query parameter)")
    if "password" in params and "password_file" in params:
        raise _fail(url, "give password or password_file, not both")
    if password is None:
        if "password_file" in params:
            password = _read_secret(url, params["password_file"], "password_file")
        elif "password" in params:
            password = params["password"]
        elif env.get("REDIS_PASSWORD_FILE"):
            password = _read_secret(url, env["REDIS_PASSWORD_FILE"], "REDIS_PASSWORD_FILE")
        elif env.get("REDIS_PASSWORD"):
            password = env["REDIS_PASSWORD"]
    user = user or params.get("username") or env.get("REDIS_USERNAME") or None
    s_user = params.get("sentinel_username") or env.get("REDIS_SENTINEL_USERNAME") or None
    if "sentinel_password_file" in params:
        s_password: str | None = _read_secret(
            url, params["sentinel_password_file"], "sentinel_password_file"
        )
    else:
        s_password = params.get("sentinel_password") or env.get("REDIS_SENTINEL_PASSWORD")
    if kind != "sentinel" and ("sentinel_username" in params or "sentinel_password_file" in params):
        raise _fail(url, "sentinel_* parameters belong to redis+sentinel:// URLs")

    ssl: dict[str, Any] = {}
    for name, env_name in (
        ("ssl_ca_certs", "REDIS_SSL_CA_CERTS"),
        ("ssl_certfile", "REDIS_SSL_CERTFILE"),
        ("ssl_keyfile", "REDIS_SSL_KEYFILE"),
    ):
        value = params.get(name) or (env.get(env_name) if tls else None)
        if value:
            ssl[name] = value
    if "ssl_cert_reqs" in params:
        reqs = params["ssl_cert_reqs"].lower()
        if reqs not in ("required", "optional", "none"):
            raise _fail(url, f"ssl_cert_reqs={reqs!r}; use required, optional or none")
        ssl["ssl_cert_reqs"] = reqs
    if "ssl_check_hostname" in params:
        ssl["ssl_check_hostname"] = _bool(url, "ssl_check_hostname", params["ssl_check_hostname"])
    if ssl and not tls:
        raise _fail(url, f"ssl_* parameters need a TLS scheme (rediss...), not {scheme!r}")

    durability = params.get("durability")
    if durability is not None and durability not in ("primary", "replicated"):
        raise _fail(url, f"durability={durability!r}; use primary or replicated")

    return RedisTarget(
        kind=kind,
        tls=tls,
        hosts=hosts,
        path=path,
        db=db or 0,
        master=master,
        username=user,
        password=password,
        sentinel_username=s_user,
        sentinel_password=s_password or None,
        ssl=ssl,
        timeout=floats.get("timeout"),
        connect_timeout=floats.get("connect_timeout"),
        health_check_interval=floats.get("health_check_interval", 2.0),
        retry=RetryPolicy(
            retries=ints.get("retries", RetryPolicy.retries),
            base=floats.get("retry_base", RetryPolicy.base),
            cap=floats.get("retry_cap", RetryPolicy.cap),
        ),
        max_connections=ints.get("max_connections"),
        durability=cast(Durability | None, durability),
        wait_timeout=floats.get("wait_timeout", 1.0),
        wait_replicas=ints.get("wait_replicas", 1),
        redacted=redact(url),
    )


# -- errors in one line ------------------------------------------------------------------


def describe_error(err: BaseException, target: RedisTarget | None = None) -> str:
    """One line for an error of redis-py: what happened and, where it helps, what to do."""
    text = " ".join(str(err).split()) or type(err).__name__
    where = f" at {target.where}" if target is not None else ""
    cluster_url = (
        f"; use redis+cluster://{target.where}" if target and target.kind != "cluster" else ""
    )
    if isinstance(err, NoPermissionError) or text.startswith("NOPERM"):
        return (
            f"the Redis user{where} may not run a command the store needs ({text}); "
            "deployments/redis-acl.conf lists them"
        )
    if _refused_credentials(err) or "WRONGPASS" in text:
        return f"Redis{where} refused the credentials ({text})"
    if isinstance(err, AskError) or text.startswith(("MOVED", "ASK ")):
        if isinstance(err, AskError):  # redis-py keeps only "<slot> <host:port>"
            text = f"{'MOVED' if isinstance(err, MovedError) else 'ASK'} {text}"
        return (
            f"Redis{where} is a Redis Cluster node and redirected a command ({text}){cluster_url}"
        )
    if "CROSSSLOT" in text or "do not hash to the same slot" in text or "non local key" in text:
        return (
            f"Redis{where} refused a script whose keys span hash slots ({text}); every key of "
            "an experiment carries its {experiment} hash tag, so this is a proxy or server "
            "that routes scripts by another rule: connect to the nodes with redis+cluster://"
        )
    if isinstance(err, ReadOnlyError) or text.startswith("READONLY"):
        return (
            f"Redis{where} is a read-only replica ({text}); point the URL at the master, "
            "or use redis+sentinel:// so the client follows it"
        )
    if text.startswith("OOM"):
        return f"Redis{where} is out of memory (maxmemory) and refused the write ({text})"
    if isinstance(err, MasterNotFoundError):
        return f"no Sentinel{where} names a healthy master ({text})"
    return text


# -- clients ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _torn_down_is_a_connection_error() -> Iterator[None]:
    """redis-py's cluster client answers CLUSTERDOWN by closing every connection of every
    node, in use or not (``RedisCluster.aclose``); a command of another task then finds its
    connection's writer gone and raises AttributeError. It is a connection error (nothing
    or a part was sent): retry it."""
    try:
        yield
    except AttributeError as err:
        raise ConnectionError(f"the connection was closed during the command ({err})") from err


class _ResilientCluster(RedisCluster):
    """RedisCluster whose commands are retried with backoff (redis-py's cluster client
    retries without sleeping, which a failover of several seconds outlasts), each retry
    after re-reading the slot map when a node failed."""

    policy: RetryPolicy = RetryPolicy()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async def attempt() -> Any:
            with _torn_down_is_a_connection_error():
                return await RedisCluster.execute_command(self, *args, **kwargs)

        return await self.policy.call(attempt)

    async def refresh_slot(self, key: str) -> None:
        """Make the next command for ``key``'s slot go where the slot map says now: one
        unretried keyed command, which marks the map for reloading when its node fails
        and patches it on a MOVED answer."""
        with contextlib.suppress(RedisError, RedisClusterException):
            await RedisCluster.execute_command(self, "EXISTS", key)


@dataclass
class RedisConnection:
    """A client for a :class:`RedisTarget`, and what closing, checking and waiting for
    replicas take. Build with :func:`connect` (no I/O happens until the first command)."""

    client: RedisClient
    target: RedisTarget
    sentinel: Sentinel | None = None

    @classmethod
    def wrap(cls, client: RedisClient) -> RedisConnection:
        """For a client built elsewhere (default retry policy, no URL)."""
        kind: Kind = "cluster" if isinstance(client, RedisCluster) else "single"
        return cls(client, RedisTarget(kind=kind, tls=False, redacted="(a client built by hand)"))

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        finally:
            if self.sentinel is not None:
                await self.sentinel.aclose()

    # -- retries outside redis-py --------------------------------------------------------

    async def retrying(self, attempt: Callable[[], Awaitable[T]], key: str) -> T:
        """Run a pipeline of commands for ``key``'s slot. A single server's pipeline is
        retried inside redis-py; a cluster's is retried here, with backoff, after the
        slot map is refreshed."""
        client = self.client
        if not isinstance(client, _ResilientCluster):
            return await attempt()

        async def guarded() -> T:
            with _torn_down_is_a_connection_error():
                return await attempt()

        async def refresh(_: BaseException) -> None:
            await client.refresh_slot(key)

        return await self.target.retry.call(guarded, refresh)

    # -- durability ------------------------------------------------------------------------

    async def eval_and_wait(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], what: str
    ) -> Any:
        """Run ``script`` and ``WAIT`` for replicas on the same connection; its result
        once ``wait_replicas`` replicas have the write, else StoreError."""

        def commands(sha: str) -> list[tuple[Any, ...]]:
            return [("EVALSHA", sha, len(keys), *keys, *args)]

        async def load() -> None:
            script.sha = await self.client.script_load(script.script)

        results = await self._pipeline_and_wait(keys[0], lambda: commands(script.sha), load, what)
        return results[0]

    async def touch_and_wait(self, key: str, expire_at_ms: int, what: str) -> None:
        """Rewrite ``key``'s expiry (the same moment) and WAIT: a write on this
        connection after which WAIT covers every earlier write of the slot's master, for
        a retried call whose script found everything written already."""
        await self._pipeline_and_wait(key, lambda: [("PEXPIREAT", key, expire_at_ms)], None, what)

    async def _pipeline_and_wait(
        self,
        key: str,
        commands: Callable[[], list[tuple[Any, ...]]],
        load: Callable[[], Awaitable[None]] | None,
        what: str,
    ) -> list[Any]:
        t = self.target
        need, wait_ms = t.wait_replicas, max(1, round(t.wait_timeout * 1000))

        async def attempt() -> list[Any]:
            with _torn_down_is_a_connection_error():
                return await once()

        async def once() -> list[Any]:
            client = self.client
            if isinstance(client, RedisCluster):
                await client.initialize()
                node = client.get_node_from_key(key)
                cpipe = client.pipeline()
                for cmd in commands():
                    cpipe.execute_command(*cmd, target_nodes=node)
                cpipe.execute_command("WAIT", need, wait_ms, target_nodes=node)
                out = await cpipe.execute(raise_on_error=False, allow_redirections=False)
            else:
                pipe = client.pipeline(transaction=False)
                for cmd in commands():
                    pipe.execute_command(*cmd)
                pipe.execute_command("WAIT", need, wait_ms)
                out = await pipe.execute(raise_on_error=False)
            *results, acked = out
            for r in results:
                if isinstance(r, NoScriptError) and load is not None:
                    await load()
                    raise _Again(f"Redis had to load the script of {what} again; retry")
                if isinstance(r, AskError):  # MOVED or ASK: the slot is elsewhere now
                    raise _Again(f"the slot of {what} moved ({describe_error(r)}); retry")
                if isinstance(r, BaseException):
                    raise r
            if isinstance(acked, BaseException):
                raise acked
            if int(acked) < need:
                raise StoreError(
                    f"Redis ran {what}, but only {int(acked)} of {need} replicas confirmed it "
                    f"within {t.wait_timeout:g} s (durability: replicated); it may be lost in a "
                    "failover: retry it (a retried reward answers duplicate once it is safe)"
                )
            return results

        client = self.client

        async def refresh(_: BaseException) -> None:
            if isinstance(client, _ResilientCluster):
                await client.refresh_slot(key)

        return await t.retry.call(attempt, refresh)

    # -- start-up checks -------------------------------------------------------------------

    async def verify(self, durability: Durability = "primary") -> list[str]:
        """Check that the target answers and is what the URL says; one clear line
        (StoreError) when not. Returns the address of every master (for probes)."""
        t = self.target
        client = self.client
        try:
            if isinstance(client, RedisCluster):
                masters = await self._verify_cluster(client)
            else:
                if self.sentinel is not None:
                    await self._verify_sentinel(self.sentinel)
                await client.ping()
                info = await client.info("cluster")
                if int(info.get("cluster_enabled", 0)):
                    raise StoreError(
                        f"Redis at {t.where} is a Redis Cluster node; its URL must be "
                        f"redis{'s' if t.tls else ''}+cluster://{t.where}"
                    )
                masters = [t.where]
            if durability == "replicated":
                await self._verify_replicas()
        except StoreError:
            raise
        except (RedisError, RedisClusterException, OSError) as err:
            raise StoreError(
                f"Redis at {t.redacted} cannot be used: {describe_error(err, t)}"
            ) from None
        return masters

    async def _verify_cluster(self, client: RedisCluster) -> list[str]:
        t = self.target
        try:
            await RedisCluster.initialize(client)
        except RedisClusterException as err:
            text = describe_error(err.__cause__ or err, t)
            if "not enabled" in str(err):
                raise StoreError(
                    f"Redis at {t.where} is not a Redis Cluster node (cluster mode is off); "
                    f"use redis{'s' if t.tls else ''}://{t.hosts[0][0]}:{t.hosts[0][1]}"
                ) from None
            if "cannot be connected" in str(err):
                raise StoreError(
                    f"no node of the Redis Cluster {t.redacted} answered (tried {t.where}): {text}"
                ) from None
            raise StoreError(f"the Redis Cluster {t.redacted} is not usable: {text}") from None
        return [node.name for node in client.get_primaries()]

    async def _verify_sentinel(self, sentinel: Sentinel) -> None:
        t = self.target
        assert t.master is not None
        known: set[str] = set()
        reached = 0
        errors = []
        for s in sentinel.sentinels:
            try:
                masters = await s.sentinel_masters()
            except (RedisError, OSError) as err:
                errors.append(describe_error(err))
                continue
            reached += 1
            known.update(str(name) for name in masters)
        if not reached:
            raise StoreError(
                f"no Sentinel of {t.redacted} answered (tried {t.where}): {'; '.join(errors)}"
            )
        if t.master not in known:
            names = ", ".join(sorted(known)) or "none"
            raise StoreError(
                f"no Sentinel at {t.where} knows a master named {t.master!r} "
                f"(they monitor: {names})"
            )

    async def _verify_replicas(self) -> None:
        """Every master has ``wait_replicas`` replicas online (INFO replication)."""
        t = self.target
        client = self.client
        if isinstance(client, RedisCluster):
            pairs = []
            for node in client.get_primaries():
                info = await client.execute_command("INFO", "replication", target_nodes=node)
                pairs.append((node.name, _online_replicas(info)))
        else:
            pairs = [(t.where, _online_replicas(await client.info("replication")))]
        short = [f"{name} has {n}" for name, n in pairs if n < t.wait_replicas]
        if short:
            raise StoreError(
                f"durability: replicated needs {t.wait_replicas} replica(s) of every master "
                f"of {t.redacted}, and {', '.join(short)}"
            )


def _online_replicas(info: Mapping[str, Any]) -> int:
    return sum(
        1
        for k, v in info.items()
        if k.startswith("slave") and k[5:].isdigit() and v.get("state") == "online"
    )


def connect(
    url: str,
    *,
    timeout: float = 5.0,
    max_connections: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> RedisConnection:
    """A client for ``url`` (ConfigError when the URL is malformed; no I/O yet).

    ``timeout`` and ``max_connections`` apply unless the URL sets them.
    """
    t = parse_url(url, environ)
    socket_timeout = t.timeout if t.timeout is not None else timeout
    connect_timeout = t.connect_timeout if t.connect_timeout is not None else socket_timeout
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": t.health_check_interval,
        "username": t.username,
        "password": t.password,
    }
    pool_max = t.max_connections if t.max_connections is not None else max_connections
    tls: dict[str, Any] = {"ssl": True, **t.ssl} if t.tls else {}
    limit: dict[str, Any] = {"max_connections": pool_max} if pool_max is not None else {}

    if t.kind == "cluster":
        cluster = _ResilientCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in t.hosts],
            retry=Retry(NoBackoff(), 0),  # the retries (with backoff) are ours
            **limit,
            **common,
            **tls,
        )
        cluster.policy = t.retry
        return RedisConnection(cluster, t)
    if t.kind == "sentinel":
        assert t.master is not None
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(t.hosts),
            sentinel_kwargs={
                "socket_timeout": connect_timeout,
                "socket_connect_timeout": connect_timeout,
                "username": t.sentinel_username,
                "password": t.sentinel_password,
                # one try per Sentinel: the master connection's retry asks them again
                "retry": Retry(NoBackoff(), 0),
                "decode_responses": True,
                **tls,
            },
        )
        client = sentinel.master_for(
            t.master,
            redis_class=aioredis.Redis,
            db=t.db,
            retry=t.retry.redis_retry(),
            max_connections=pool_max,
            **common,
            **tls,
        )
        return RedisConnection(client, t, sentinel)
    where: dict[str, Any] = (
        {"unix_socket_path": t.path}
        if t.kind == "unix"
        else {"host": t.hosts[0][0], "port": t.hosts[0][1], **tls}
    )
    single = aioredis.Redis(
        db=t.db,
        retry=t.retry.redis_retry(),
        max_connections=pool_max,
        **where,
        **common,
    )
    return RedisConnection(single, t)
