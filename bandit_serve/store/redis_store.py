"""Redis store: redis-py asyncio client and Lua scripts (``lua/``), one round trip per call.

Keys of experiment ``E`` (the ``{E}`` hash tag keeps them on one Redis Cluster slot)::

    bandit:{E}:ctl                 hash    control state: version, epoch, state, arm statuses, ...
    bandit:{E}:events              stream  the audit log (capped)
    bandit:{E}:e<n>:arms           hash    "<arm>:<stat>" -> running totals of epoch n
    bandit:{E}:e<n>:b:<start>      hash    the same stats for one time bucket (expires)
    bandit:{E}:e<n>:ev:<id>        hash    one decision: arm, propensity, time, deadline, state
    bandit:{E}:e<n>:due            zset    "<id>:<arm>" scored by deadline (ms) until settled
    bandit:{E}:e<n>:since          hash    "<restored arm>/<arm>:<stat>": totals at a restore
    bandit:{E}:e<n>:u:<unit>       hash    a unit's sticky assignment: arm, propensity
    bandit:{E}:e<n>:sh:<token>     hash    a shadow batch counted (expires after 60 s)
    bandit:quota:{key:<k>}         hash    API key k's token bucket (expires when full)
    bandit:quota:{key:<k>}:r:<t>   hash    request t spent a token (expires after 60 s)
    bandit:{signing}               hash    event-id signing keys shared by every replica

Every data script names the epoch it means and refuses another (``STALE_EPOCH``): the
store then learns the current epoch and sends the call again.

Clients, URLs, retries and durability: :mod:`bandit_serve.store.connection`. A retry
(after a connection error or a timeout) may send a script again whose first attempt ran
and whose answer was lost; each script is safe to run twice:

- ``log``: a decision whose event key exists is skipped, so the second run writes nothing
  (the ``expected`` sums ride with the decisions and are skipped with them);
- ``reward``: the second run finds the decision rewarded and answers ``duplicate``,
  counting nothing but the ``dup`` counter (the client may see ``duplicate`` for its own
  first post: it was applied once);
- ``settle``: only members still in the due set are settled; ``withdraw``: only pending
  decisions; ``read``: reads;
- ``shadow`` and ``quota``: each call names a mark key of its own (a random token, kept
  60 s: far longer than a call's retries take); the first run sets it, a re-send finds it
  and counts nothing, spends nothing;
- ``transition``: a compare-and-set on the version; the second run finds the version
  moved and answers "changed by someone else", so the store returns None and the caller
  reads and decides again (an action whose effect is already there decides "no change";
  a ``reset`` would decide to reset again).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib.resources import files
from typing import Any, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from bandit_serve.errors import StoreError
from bandit_serve.store.base import (
    ARM_FIELDS,
    ArmTotals,
    AuditEvent,
    Bucket,
    Clock,
    Control,
    DecisionRecord,
    Durability,
    EventState,
    ExperimentSettings,
    LoggedDecision,
    RewardOutcome,
    SettleReport,
    ShadowCall,
    Snapshot,
    Store,
)
from bandit_serve.store.batching import Coalescer
from bandit_serve.store.connection import (
    RedisClient,
    RedisConnection,
    connect,
    describe_error,
)

__all__ = ["ExperimentKeys", "RedisStore"]

_EVENT_ID = re.compile(r"^[0-9a-f]{32}$")
_STALE = "STALE_EPOCH"
_READ_ONLY = frozenset({"read"})
T = TypeVar("T")
Item = TypeVar("Item")
Out = TypeVar("Out")
_LogItem = tuple[LoggedDecision, dict[str, float] | None]  # the decision, expected counts


def _prelude() -> str:
    """Lua constants generated from the Python definitions they must agree with."""
    floats = ", ".join(f"{f.field} = true" for f in ARM_FIELDS if f.type is float)
    states = ", ".join(f"{st.name.lower()} = '{st.value}'" for st in EventState)
    return f"local FLOAT_STATS = {{{floats}}}\nlocal ST = {{{states}}}\n"


@cache
def _script_source(name: str) -> str:
    lua = files("bandit_serve.store") / "lua"
    # The shebang makes Redis (>= 7) refuse the whole script up front when it is short of
    # memory, instead of failing at a write half way through.
    common = (lua / "common.lua").read_text()
    # A read-only script says so: Redis then runs it even at maxmemory (the experiment's
    # view and its metrics keep answering while writes are refused).
    shebang = "#!lua flags=no-writes\n" if name in _READ_ONLY else "#!lua\n"
    return shebang + _prelude() + common + "\n" + (lua / f"{name}.lua").read_text()


@dataclass(frozen=True)
class ExperimentKeys:
    """The keys of one experiment in one epoch."""

    name: str
    epoch: int

    @property
    def root(self) -> str:
        return f"bandit:{{{self.name}}}"

    @property
    def prefix(self) -> str:
        return f"{self.root}:e{self.epoch}"

    @property
    def ctl(self) -> str:
        return f"{self.root}:ctl"

    @property
    def events(self) -> str:
        return f"{self.root}:events"

    @property
    def totals(self) -> str:
        return f"{self.prefix}:arms"

    @property
    def due(self) -> str:
        return f"{self.prefix}:due"

    @property
    def since(self) -> str:
        return f"{self.prefix}:since"

    def event(self, event_id: str) -> str:
        return f"{self.prefix}:ev:{event_id}"

    def unit(self, unit_id: str) -> str:
        return f"{self.prefix}:u:{unit_id}"

    def bucket(self, start: int) -> str:
        return f"{self.prefix}:b:{start}"


def _ms(t: float) -> int:
    return round(t * 1000)


def _counts(expected: Mapping[str, float]) -> str:
    """Per-arm numbers as the scripts read them: ``arm=x;arm=y``."""
    return ";".join(f"{arm}={x!r}" for arm, x in expected.items())


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _parse_arms(raw: Mapping[str, str]) -> dict[str, ArmTotals]:
    """``{"<arm>:<field>": value}`` (a totals or bucket hash) as totals per arm."""
    by_arm: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        arm, _, stat = name.rpartition(":")
        by_arm.setdefault(arm, {})[stat] = value
    return {arm: ArmTotals.from_fields(fields) for arm, fields in by_arm.items()}


def _parse_since(raw: Mapping[str, str]) -> dict[str, dict[str, ArmTotals]]:
    by_restored: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        restored, _, rest = name.partition("/")
        by_restored.setdefault(restored, {})[rest] = value
    return {r: _parse_arms(fields) for r, fields in by_restored.items()}


class _StaleEpoch(StoreError):
    """A script refused the epoch this store believed current (handled inside)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"the experiment moved to epoch {epoch}")
        self.epoch = epoch


class RedisStore(Store):
    """:class:`Store` on Redis. Build with :meth:`from_url` (or :meth:`open`, which also
    checks the server at once); ``await close()`` when done.

    Concurrent calls of one experiment are coalesced into batches (one script call
    each) by :class:`~bandit_serve.store.batching.Coalescer`; ``coalesce=False`` sends
    every call on its own.

    ``durability``: ``primary`` answers once the master has run a script; ``replicated``
    answers a reward or a logged decision only once ``WAIT`` confirms a replica has it
    (StoreError otherwise). This is the store-wide default: an experiment whose
    :attr:`ExperimentSettings.durability` is set (the experiment config's
    ``durability:``) uses its own, either way. :meth:`verify` checks for replicas only
    when the store-wide setting is ``replicated``; an experiment of its own
    ``replicated`` on a master without one has its writes refused (StoreError).
    """

    def __init__(
        self,
        client: RedisClient | RedisConnection,
        clock: Clock | None = None,
        *,
        coalesce: bool = True,
        durability: Durability = "primary",
    ) -> None:
        super().__init__(clock)
        self._conn = client if isinstance(client, RedisConnection) else RedisConnection.wrap(client)
        self.client: RedisClient = self._conn.client
        self.coalesce = coalesce
        self.durability: Durability = durability
        self._epochs: dict[str, int] = {}
        self._reward_batchers: dict[ExperimentSettings, Coalescer[tuple[str, float], str]] = {}
        self._log_batchers: dict[ExperimentSettings, Coalescer[_LogItem, str]] = {}
        self._unit_batchers: dict[ExperimentSettings, Coalescer[str, tuple[str, float] | None]] = {}
        self._scripts: dict[str, AsyncScript] = {
            name: self.client.register_script(_script_source(name))
            for name in (
                "log",
                "reward",
                "settle",
                "withdraw",
                "read",
                "transition",
                "shadow",
                "quota",
            )
        }

    @classmethod
    def from_url(
        cls,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        clock: Clock | None = None,
        timeout: float = 5.0,
        max_connections: int | None = None,
        coalesce: bool = True,
        durability: Durability | None = None,
    ) -> RedisStore:
        """A store for ``url`` (any form of :mod:`bandit_serve.store.connection`);
        ConfigError for a malformed URL, and no I/O until the first call. Durability is
        ``replicated`` when the argument or the URL's ``durability=`` asks for it."""
        conn = connect(url, timeout=timeout, max_connections=max_connections)
        asked = (durability, conn.target.durability)
        mode: Durability = "replicated" if "replicated" in asked else "primary"
        return cls(conn, clock, coalesce=coalesce, durability=mode)

    @classmethod
    async def open(
        cls,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        clock: Clock | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - the socket timeout, as in from_url
        max_connections: int | None = None,
        coalesce: bool = True,
        durability: Durability | None = None,
    ) -> RedisStore:
        """:meth:`from_url`, then :meth:`verify`; closed again when the check fails."""
        store = cls.from_url(
            url,
            clock=clock,
            timeout=timeout,
            max_connections=max_connections,
            coalesce=coalesce,
            durability=durability,
        )
        try:
            await store.verify()
        except BaseException:
            await store.close()
            raise
        return store

    async def verify(self) -> None:
        """Start-up check, one clear line (StoreError) when it fails: the server (every
        master of a cluster) answers, is what the URL says (a cluster node only through
        a cluster URL; a Sentinel knows the master), runs the store's scripts on keys of
        one slot, and with ``replicated`` durability has a replica per master."""
        await self._conn.verify(self.durability)
        for name in self._probe_names():
            try:
                await self.read(name)
            except StoreError as err:
                raise StoreError(f"the store's probe script failed: {err}") from None

    def _probe_names(self) -> list[str]:
        """Experiment names whose keys land on every master (one name on a single server)."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return ["__probe__"]
        names: dict[str, str] = {}
        masters = {n.name for n in client.get_primaries()}
        for i in range(100_000):
            name = f"__probe{i}__"
            node = client.get_node_from_key(ExperimentKeys(name, 0).ctl)
            if node is not None and node.name not in names:
                names[node.name] = name
            if len(names) == len(masters):
                break
        return list(names.values())

    async def close(self) -> None:
        await self._conn.aclose()

    # -- plumbing ----------------------------------------------------------------------

    def keys(self, name: str) -> ExperimentKeys:
        """The keys of ``name`` in the epoch this store believes current."""
        return ExperimentKeys(name, self._epochs.get(name, 0))

    async def _call(self, what: str, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except ResponseError as err:
            text = str(err)
            if text.startswith(_STALE):
                raise _StaleEpoch(int(text.split()[1])) from None
            raise StoreError(
                f"Redis refused {what}: {describe_error(err, self._conn.target)}"
            ) from err
        except (RedisError, RedisClusterException) as err:
            raise StoreError(
                f"Redis failed during {what}: {describe_error(err, self._conn.target)}"
            ) from err
        except OSError as err:  # a socket error that redis-py did not wrap
            raise StoreError(f"Redis unreachable during {what}: {err}") from err

    def _durable(self, exp: ExperimentSettings) -> bool:
        """Whether writes of ``exp`` wait for a replica (its own setting, else the store's)."""
        own = exp.durability
        return (own if own is not None else self.durability) == "replicated"

    async def _script(
        self,
        name: str,
        exp_name: str,
        make: Callable[[ExperimentKeys], tuple[list[str], list[Any]]],
        *,
        durable: bool = False,
    ) -> Any:
        """Run a data script for the current epoch; on STALE_EPOCH learn it and run again.
        ``durable``: answer only once a replica has the write (``WAIT``)."""
        for _ in range(5):
            keys, args = make(self.keys(exp_name))
            script = self._scripts[name]
            pending = (
                self._conn.eval_and_wait(script, keys, args, name)
                if durable
                else script(keys, args)
            )
            try:
                return await self._call(name, pending)
            except _StaleEpoch as stale:
                self._epochs[exp_name] = stale.epoch
        raise StoreError(f"the epoch of {exp_name!r} kept changing during {name}; retry")

    def _bucket(self, k: ExperimentKeys, exp: ExperimentSettings, now: float) -> tuple[str, int]:
        start = exp.bucket_start(now)
        expire_at = _ms(start + exp.bucket_seconds + exp.bucket_retention_seconds)
        return k.bucket(start), expire_at

    async def _send(
        self,
        batchers: dict[ExperimentSettings, Coalescer[Item, Out]],
        exp: ExperimentSettings,
        items: list[Item],
        flush: Callable[[ExperimentSettings, list[Item]], Awaitable[list[Out]]],
    ) -> list[Out]:
        """Through the experiment's coalescer (or straight to ``flush`` when off)."""
        if not self.coalesce:
            return await flush(exp, items)
        batcher = batchers.get(exp)
        if batcher is None:
            batcher = batchers[exp] = Coalescer(lambda batch: flush(exp, batch))
        return await batcher.submit(items)

    async def check(self) -> None:
        await self._call("PING", self.client.ping())

    # -- decisions and rewards ---------------------------------------------------------

    async def log_decisions(
        self,
        exp: ExperimentSettings,
        decisions: Sequence[LoggedDecision],
        expected: Mapping[str, float] | None = None,
    ) -> list[DecisionRecord]:
        if not decisions:
            return []
        # the expected counts ride on the first item, so coalesced batches add them once
        items: list[_LogItem] = [
            (d, dict(expected) if (i == 0 and expected) else None) for i, d in enumerate(decisions)
        ]
        packed = await self._send(self._log_batchers, exp, items, self._log_now)
        out = []
        for d, text in zip(decisions, packed, strict=True):
            t, deadline = text.split(" ")
            out.append(DecisionRecord(d.event_id, d.arm, d.propensity, float(t), float(deadline)))
        return out

    async def _log_now(self, exp: ExperimentSettings, items: list[_LogItem]) -> list[str]:
        """Log in one script call; returns "<time> <deadline>" per item."""
        now = self.clock()
        deadline = now + exp.wait_seconds
        expected: dict[str, float] = {}
        for _, e in items:
            for arm, x in (e or {}).items():
                expected[arm] = expected.get(arm, 0.0) + x

        def make(k: ExperimentKeys) -> tuple[list[str], list[Any]]:
            bucket, bucket_expire = self._bucket(k, exp, now)
            args: list[Any] = [
                k.epoch,
                _ms(now),
                _ms(deadline),
                _ms(deadline + exp.retention_seconds),
                bucket_expire,
                _counts(expected),
                exp.on_model_error,
                repr(exp.error_reward),
                _ms(exp.sticky_seconds),
                len(items),
            ]
            unit_keys: dict[str, int] = {}
            for d, _ in items:
                flags = (
                    ("f" if d.failed else "")
                    + ("g" if d.client_gone else "")
                    + ("r" if d.rejected else "")
                )
                bin_ = "" if d.latency_bin is None else str(d.latency_bin)
                ui = 0
                if d.unit is not None:
                    ui = unit_keys.setdefault(k.unit(d.unit), len(unit_keys) + 1)
                args += [
                    d.arm,
                    repr(float(d.propensity)),
                    flags,
                    bin_,
                    ui,
                    d.assign,
                    _counts(d.unit_expected or {}),
                ]
            keys = [k.ctl, k.totals, k.due, bucket, *(k.event(d.event_id) for d, _ in items)]
            return [*keys, *unit_keys], args

        durable = self._durable(exp)
        written = await self._script("log", exp.name, make, durable=durable)
        if durable and int(written) == 0:
            # A retried call whose first run wrote everything: this connection wrote
            # nothing, so its WAIT proved nothing. Rewrite one record's expiry (the same
            # moment) and wait for that: replication is in order, so it covers the rest.
            key = self.keys(exp.name).event(items[0][0].event_id)
            expire_at = _ms(deadline + exp.retention_seconds)
            await self._call("log", self._conn.touch_and_wait(key, expire_at, "log"))
        return [f"{now!r} {deadline!r}"] * len(items)

    async def apply_rewards(
        self, exp: ExperimentSettings, rewards: Sequence[tuple[str, float]]
    ) -> list[RewardOutcome]:
        out: list[RewardOutcome | None] = [None] * len(rewards)
        sent: list[int] = []
        for n, (event_id, reward) in enumerate(rewards):
            if not exp.accepts(float(reward)):
                out[n] = RewardOutcome.INVALID  # the script checks again; this spares a trip
            elif not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
                out[n] = RewardOutcome.UNKNOWN  # never a key: no id we issue looks like it
            else:
                sent.append(n)
        if sent:
            items = [(rewards[n][0], float(rewards[n][1])) for n in sent]
            statuses = await self._send(self._reward_batchers, exp, items, self._reward_now)
            for n, status in zip(sent, statuses, strict=True):
                out[n] = RewardOutcome(status)
        return [o for o in out if o is not None]

    async def _reward_now(
        self, exp: ExperimentSettings, items: list[tuple[str, float]]
    ) -> list[str]:
        """Apply in one script call."""
        now = self.clock()

        def make(k: ExperimentKeys) -> tuple[list[str], list[Any]]:
            bucket, bucket_expire = self._bucket(k, exp, now)
            keys = [k.ctl, k.totals, k.due, bucket, *(k.event(e) for e, _ in items)]
            args: list[Any] = [k.epoch, _ms(now), repr(exp.low), repr(exp.high), bucket_expire]
            return keys, args + [repr(r) for _, r in items]

        durable = self._durable(exp)
        return cast(list[str], await self._script("reward", exp.name, make, durable=durable))

    async def withdraw_decisions(self, exp: ExperimentSettings, event_ids: Sequence[str]) -> int:
        ids = [e for e in event_ids if _EVENT_ID.match(e)]
        if not ids:
            return 0
        now = self.clock()

        def make(k: ExperimentKeys) -> tuple[list[str], list[Any]]:
            bucket, bucket_expire = self._bucket(k, exp, now)
            keys = [k.ctl, k.totals, k.due, bucket, *(k.event(e) for e in ids)]
            return keys, [k.epoch, _ms(now), bucket_expire]

        return int(await self._script("withdraw", exp.name, make))

    async def settle_expired(self, exp: ExperimentSettings, limit: int = 1000) -> SettleReport:
        report = SettleReport()
        for _ in range(1000):  # bounded: at most 1000 * limit decisions per call
            now = self.clock()
            k = self.keys(exp.name)
            members = cast(
                list[str],
                await self._call(
                    "settle_expired",
                    self.client.zrangebyscore(k.due, "-inf", f"({_ms(now)}", 0, limit),
                ),
            )
            if not members:
                break

            def make(
                k: ExperimentKeys, members: list[str] = members, now: float = now
            ) -> tuple[list[str], list[Any]]:
                bucket, bucket_expire = self._bucket(k, exp, now)
                keys = [k.ctl, k.totals, k.due, bucket]
                keys += [k.event(m.partition(":")[0]) for m in members]
                args: list[Any] = [
                    k.epoch,
                    _ms(now),
                    exp.on_expiry,
                    repr(exp.default_reward),
                    bucket_expire,
                    *members,
                ]
                return keys, args

            defaulted, dropped = await self._script("settle", exp.name, make)
            report += SettleReport(int(defaulted), int(dropped))
            if len(members) < limit:
                break
        return report

    # -- reading -----------------------------------------------------------------------

    async def read(self, experiment: str) -> Snapshot:
        for _ in range(5):
            k = self.keys(experiment)
            parts = await self._call(
                "read", self._scripts["read"]([k.ctl, k.totals, k.since], [k.epoch])
            )
            control = Control(_pairs(parts[0]))
            if len(parts) == 1:  # the epoch moved on
                self._epochs[experiment] = control.epoch
                continue
            return Snapshot(control, _parse_arms(_pairs(parts[1])), _parse_since(_pairs(parts[2])))
        raise StoreError(f"the epoch of {experiment!r} kept changing; retry")

    async def buckets(self, exp: ExperimentSettings, start: float, end: float) -> list[Bucket]:
        k = self.keys(exp.name)
        first, last = exp.bucket_start(start), exp.bucket_start(end)
        starts = list(range(first, last + 1, exp.bucket_seconds))
        if len(starts) > 100_000:
            raise ValueError(f"{len(starts)} buckets requested; ask for a shorter range.")

        async def fetch() -> list[dict[str, str]]:
            async with self.client.pipeline(transaction=False) as pipe:
                for s in starts:
                    pipe.hgetall(k.bucket(s))
                return list(await pipe.execute())

        raws = await self._call("buckets", self._conn.retrying(fetch, k.ctl))
        return [Bucket(s, _parse_arms(raw)) for s, raw in zip(starts, raws, strict=True) if raw]

    # -- assignment, shadow, quotas, signing --------------------------------------------

    async def assignments(
        self, exp: ExperimentSettings, units: Sequence[str]
    ) -> dict[str, tuple[str, float]]:
        if not units:
            return {}
        # concurrent reads are coalesced like writes: one round trip for many requests
        found = await self._send(self._unit_batchers, exp, list(units), self._assignments_now)
        return {u: a for u, a in zip(units, found, strict=True) if a is not None}

    async def _assignments_now(
        self, exp: ExperimentSettings, units: list[str]
    ) -> list[tuple[str, float] | None]:
        """One read for all ``units``: (arm, propensity) each, None when unassigned."""
        k = self.keys(exp.name)

        async def fetch() -> list[list[Any]]:
            if len(units) == 1:  # one command: cheaper than a pipeline in redis-py
                return [await self.client.hmget(k.unit(units[0]), "arm", "p")]
            async with self.client.pipeline(transaction=False) as pipe:
                for u in units:
                    pipe.hmget(k.unit(u), "arm", "p")
                return list(await pipe.execute())

        rows = await self._call("assignments", fetch())
        return [None if arm is None or p is None else (arm, float(p)) for arm, p in rows]

    async def log_shadow(self, exp: ExperimentSettings, calls: Sequence[ShadowCall]) -> None:
        if not calls:
            return
        now = self.clock()
        mark = secrets.token_hex(8)  # a re-send of this batch finds it and counts nothing

        def make(k: ExperimentKeys) -> tuple[list[str], list[Any]]:
            bucket, bucket_expire = self._bucket(k, exp, now)
            args: list[Any] = [k.epoch, bucket_expire]
            for c in calls:
                args += [
                    f"shadow/{c.arm}",
                    "f" if c.failed else "",
                    c.latency_bin,
                    "" if c.equal is None else int(c.equal),
                    "" if c.abs_diff is None else repr(float(c.abs_diff)),
                ]
            return [k.ctl, k.totals, bucket, f"{k.prefix}:sh:{mark}"], args

        await self._script("shadow", exp.name, make)

    async def take_token(self, bucket: str, rate: float, burst: int) -> float | None:
        key = f"bandit:quota:{{{bucket}}}"
        mark = f"{key}:r:{secrets.token_hex(8)}"  # a re-send of this request spends nothing
        wait = await self._call(
            "quota", self._scripts["quota"]([key, mark], [_ms(self.clock()), repr(rate), burst])
        )
        return None if int(wait) == 0 else int(wait) / 1000

    async def signing_keys(self, candidate: str) -> dict[str, str]:
        key = "bandit:{signing}"
        await self._call("signing keys", self.client.hsetnx(key, "k1", candidate))
        raw = await self._call("signing keys", self.client.hgetall(key))
        return dict(cast(dict[str, str], raw))

    # -- control -----------------------------------------------------------------------

    async def transition(
        self,
        exp: ExperimentSettings,
        expected_version: int,
        new: Control,
        events: Sequence[AuditEvent] = (),
        *,
        mark_restore: str | None = None,
        new_epoch: bool = False,
    ) -> list[AuditEvent] | None:
        k = self.keys(exp.name)
        now = self.clock()
        fields = [x for kv in new.fields.items() for x in kv]
        args: list[Any] = [
            expected_version,
            exp.events_max,
            repr(now),
            mark_restore or "",
            "1" if new_epoch else "0",
            _ms(exp.retention_seconds + exp.wait_seconds),
            len(new.fields),
            *fields,
        ]
        for e in events:
            args += [e.kind, e.actor, e.reason, e.arm or "", json.dumps(dict(e.details))]
        keys = [k.ctl, k.events, k.totals, k.since, k.due]
        # A stale epoch here would name old keys; the version check catches it (an epoch
        # change is a version change), and the caller decides again after reading.
        out = await self._call("transition", self._scripts["transition"](keys, args))
        if int(out[0]) != 1:
            return None
        if new_epoch:
            self._epochs[exp.name] = k.epoch + 1
        return [replace(e, id=i, time=now) for e, i in zip(events, out[1:], strict=True)]

    async def events(
        self, experiment: str, since: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        k = self.keys(experiment)
        start = "-" if since is None else f"({since}"
        raw = cast(
            list[tuple[str, dict[str, str]]],
            await self._call("events", self.client.xrange(k.events, start, "+", count=limit)),
        )
        out = []
        for event_id, f in raw:
            out.append(
                AuditEvent(
                    kind=f["kind"],
                    actor=f["actor"],
                    reason=f["reason"],
                    arm=f["arm"] or None,
                    details=json.loads(f["details"]),
                    id=event_id,
                    time=float(f["time"]),
                )
            )
        return out
