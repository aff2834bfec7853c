"""Redis store: redis-py asyncio client and Lua scripts (``lua/``), one round trip per call.

Keys of experiment ``E`` (the ``{E}`` hash tag keeps them on one Redis Cluster slot)::

    bandit:{E}:arms          hash  "<arm>:<stat>" -> running totals
    bandit:{E}:b:<start>     hash  the same stats for one time bucket (expires)
    bandit:{E}:ev:<id>       hash  one decision: arm, propensity, time, deadline, state
    bandit:{E}:due           zset  "<id>:<arm>" scored by deadline (ms) until settled
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from bandit_serve.errors import StoreError
from bandit_serve.store.base import (
    ARM_FIELDS,
    ArmTotals,
    Bucket,
    Clock,
    DecisionRecord,
    EventState,
    ExperimentSettings,
    RewardOutcome,
    SettleReport,
    Store,
    new_event_id,
)
from bandit_serve.store.batching import Coalescer

__all__ = ["RedisStore", "experiment_keys"]

_EVENT_ID = re.compile(r"^[0-9a-f]{32}$")
T = TypeVar("T")
Item = TypeVar("Item")
_RecordItem = tuple[str, float, dict[str, float] | None]  # arm, propensity, expected counts


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
    return "#!lua\n" + _prelude() + common + "\n" + (lua / f"{name}.lua").read_text()


def experiment_keys(name: str) -> tuple[str, str, str]:
    """``(prefix, totals key, due key)`` of an experiment."""
    prefix = f"bandit:{{{name}}}"
    return prefix, f"{prefix}:arms", f"{prefix}:due"


def _ms(t: float) -> int:
    return round(t * 1000)


def _parse_arms(raw: dict[str, str]) -> dict[str, ArmTotals]:
    """``{"<arm>:<field>": value}`` (a totals or bucket hash) as totals per arm."""
    by_arm: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        arm, _, field = name.rpartition(":")
        by_arm.setdefault(arm, {})[field] = value
    return {arm: ArmTotals.from_fields(fields) for arm, fields in by_arm.items()}


class RedisStore(Store):
    """:class:`Store` on Redis. Build with :meth:`from_url`; ``await close()`` when done.

    Concurrent calls of one experiment are coalesced into batches (one script call
    each) by :class:`~bandit_serve.store.batching.Coalescer`; ``coalesce=False`` sends
    every call on its own.
    """

    def __init__(
        self, client: aioredis.Redis, clock: Clock | None = None, *, coalesce: bool = True
    ) -> None:
        super().__init__(clock)
        self.client = client
        self.coalesce = coalesce
        self._reward_batchers: dict[ExperimentSettings, Coalescer[tuple[str, float], str]] = {}
        self._record_batchers: dict[ExperimentSettings, Coalescer[_RecordItem, str]] = {}
        self._record: AsyncScript = client.register_script(_script_source("record"))
        self._reward: AsyncScript = client.register_script(_script_source("reward"))
        self._settle: AsyncScript = client.register_script(_script_source("settle"))
        self._cancel: AsyncScript = client.register_script(_script_source("cancel"))

    @classmethod
    def from_url(
        cls,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        clock: Clock | None = None,
        timeout: float = 5.0,
        max_connections: int | None = None,
        coalesce: bool = True,
    ) -> RedisStore:
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=max_connections,
        )
        return cls(client, clock, coalesce=coalesce)

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, what: str, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except RedisError as err:
            raise StoreError(f"Redis failed during {what}: {err}") from err
        except OSError as err:  # a socket error that redis-py did not wrap
            raise StoreError(f"Redis unreachable during {what}: {err}") from err

    def _bucket_key(self, exp: ExperimentSettings, now: float) -> tuple[str, int]:
        prefix, _, _ = experiment_keys(exp.name)
        start = exp.bucket_start(now)
        expire_at = _ms(start + exp.bucket_seconds + exp.bucket_retention_seconds)
        return f"{prefix}:b:{start}", expire_at

    async def _send(
        self,
        batchers: dict[ExperimentSettings, Coalescer[Item, str]],
        exp: ExperimentSettings,
        items: list[Item],
        flush: Callable[[ExperimentSettings, list[Item]], Awaitable[list[str]]],
    ) -> list[str]:
        """Through the experiment's coalescer (or straight to ``flush`` when off)."""
        if not self.coalesce:
            return await flush(exp, items)
        batcher = batchers.get(exp)
        if batcher is None:
            batcher = batchers[exp] = Coalescer(lambda batch: flush(exp, batch))
        return await batcher.submit(items)

    async def check(self) -> None:
        await self._call("PING", self.client.ping())

    # -- Store -----------------------------------------------------------------------

    async def record_decisions(
        self,
        exp: ExperimentSettings,
        arms: Sequence[str],
        propensities: Sequence[float],
        expected: Mapping[str, float] | None = None,
    ) -> list[DecisionRecord]:
        if len(arms) != len(propensities):
            raise ValueError("arms and propensities must have the same length")
        if not arms:
            return []
        # the expected counts ride on the first item, so coalesced batches add them once
        items: list[_RecordItem] = [
            (a, float(p), dict(expected) if (i == 0 and expected) else None)
            for i, (a, p) in enumerate(zip(arms, propensities, strict=True))
        ]
        packed = await self._send(self._record_batchers, exp, items, self._record_now)
        out = []
        for (arm, p, _), text in zip(items, packed, strict=True):
            event_id, t, deadline = text.split(" ")
            out.append(DecisionRecord(event_id, arm, p, float(t), float(deadline)))
        return out

    async def _record_now(self, exp: ExperimentSettings, items: list[_RecordItem]) -> list[str]:
        """Record in one script call; returns "<event_id> <time> <deadline>" per item."""
        now = self.clock()
        deadline = now + exp.wait_seconds
        prefix, totals, due = experiment_keys(exp.name)
        bucket, bucket_expire = self._bucket_key(exp, now)
        ids = [new_event_id() for _ in items]
        expected: dict[str, float] = {}
        for _, _, e in items:
            for arm, x in (e or {}).items():
                expected[arm] = expected.get(arm, 0.0) + x
        args: list[Any] = [
            _ms(now),
            _ms(deadline),
            _ms(deadline + exp.retention_seconds),
            bucket_expire,
            ";".join(f"{arm}={x!r}" for arm, x in expected.items()),
        ]
        for arm, p, _ in items:
            args += [arm, repr(p)]
        keys = [totals, due, bucket, *(f"{prefix}:ev:{i}" for i in ids)]
        await self._call("record_decisions", self._record(keys, args))
        return [f"{i} {now!r} {deadline!r}" for i in ids]

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
        prefix, totals, due = experiment_keys(exp.name)
        bucket, bucket_expire = self._bucket_key(exp, now)
        keys = [totals, due, bucket, *(f"{prefix}:ev:{e}" for e, _ in items)]
        args: list[Any] = [_ms(now), repr(exp.low), repr(exp.high), bucket_expire]
        args += [repr(r) for _, r in items]
        return cast(list[str], await self._call("apply_rewards", self._reward(keys, args)))

    async def cancel_decisions(self, exp: ExperimentSettings, event_ids: Sequence[str]) -> int:
        ids = [e for e in event_ids if _EVENT_ID.match(e)]
        if not ids:
            return 0
        now = self.clock()
        prefix, totals, due = experiment_keys(exp.name)
        bucket, bucket_expire = self._bucket_key(exp, now)
        keys = [totals, due, bucket, *(f"{prefix}:ev:{e}" for e in ids)]
        return int(
            await self._call("cancel_decisions", self._cancel(keys, [_ms(now), bucket_expire]))
        )

    async def settle_expired(self, exp: ExperimentSettings, limit: int = 1000) -> SettleReport:
        prefix, totals, due = experiment_keys(exp.name)
        report = SettleReport()
        for _ in range(1000):  # bounded: at most 1000 * limit decisions per call
            now = self.clock()
            members = cast(
                list[str],
                await self._call(
                    "settle_expired",
                    self.client.zrangebyscore(due, "-inf", f"({_ms(now)}", 0, limit),
                ),
            )
            if not members:
                break
            bucket, bucket_expire = self._bucket_key(exp, now)
            keys = [totals, due, bucket]
            keys += [f"{prefix}:ev:{m.partition(':')[0]}" for m in members]
            args: list[Any] = [
                _ms(now),
                exp.on_expiry,
                repr(exp.default_reward),
                bucket_expire,
                *members,
            ]
            defaulted, dropped = await self._call("settle_expired", self._settle(keys, args))
            report += SettleReport(int(defaulted), int(dropped))
            if len(members) < limit:
                break
        return report

    async def snapshot(self, experiment: str) -> dict[str, ArmTotals]:
        _, totals, _ = experiment_keys(experiment)
        raw = await self._call("snapshot", self.client.hgetall(totals))
        return _parse_arms(cast(dict[str, str], raw))

    async def buckets(self, exp: ExperimentSettings, start: float, end: float) -> list[Bucket]:
        prefix, _, _ = experiment_keys(exp.name)
        first, last = exp.bucket_start(start), exp.bucket_start(end)
        starts = list(range(first, last + 1, exp.bucket_seconds))
        if len(starts) > 100_000:
            raise ValueError(f"{len(starts)} buckets requested; ask for a shorter range.")

        async def fetch() -> list[dict[str, str]]:
            async with self.client.pipeline(transaction=False) as pipe:
                for s in starts:
                    pipe.hgetall(f"{prefix}:b:{s}")
                return list(await pipe.execute())

        raws = await self._call("buckets", fetch())
        return [Bucket(s, _parse_arms(raw)) for s, raw in zip(starts, raws, strict=True) if raw]
