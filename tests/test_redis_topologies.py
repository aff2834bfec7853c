"""The store on a Redis Cluster and behind Sentinel: experiments spread over the shards,
each on one slot; bad topologies refused in one line at start-up; replicated durability
(store-wide, or an experiment's own) waits for a replica; a Sentinel failover is followed
by the client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from bandit_serve.config.experiment import ExperimentConfig
from bandit_serve.errors import StoreError
from bandit_serve.store import ExperimentSettings, RedisStore, RewardOutcome
from bandit_serve.store.connection import describe_error
from tests.conftest import delete_experiment_keys
from tests.redis_servers import (
    ClusterProcesses,
    RedisProcess,
    SentinelGroup,
    free_ports,
    running,
    wait_until,
)

A, D = RewardOutcome.APPLIED, RewardOutcome.DUPLICATE


def keys_by_master(cluster: ClusterProcesses, pattern: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for port in cluster.master_ports():
        node = next(n for n in cluster.nodes if n.port == port)
        with contextlib.closing(node.client()) as c:
            out[port] = list(c.scan_iter(match=pattern, count=1000))
    return out


def wait_calls(node: RedisProcess) -> int:
    """How many WAIT commands ``node`` has run."""
    with contextlib.closing(node.client()) as c:
        stats = c.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def replicas_online(node: RedisProcess) -> int:
    """How many replicas ``node`` has in sync (``state=online``: past the initial sync,
    so a WAIT hears from them; ``connected_slaves`` counts them earlier)."""
    with contextlib.closing(node.client()) as c:
        info = c.info("replication")
    return sum(
        1
        for k, v in info.items()
        if k.startswith("slave") and k[5:].isdigit() and v.get("state") == "online"
    )


def acknowledged(node: RedisProcess, key: str) -> bool:
    """A write of ``key`` (expiring after 1 s) on ``node`` reaches a replica within 0.1 s:
    its replica is past the initial sync and streaming (the first WAIT after a sync can
    otherwise time out, until the replica's first ACK, up to 1 s later)."""
    with contextlib.closing(node.client()) as c:
        c.set(key, "1", px=1000)
        return int(c.wait(1, 100)) >= 1


# -- Redis Cluster ---------------------------------------------------------------------------


async def test_experiments_spread_over_the_shards_each_on_one_slot(
    redis_cluster: ClusterProcesses, exp_name: str
) -> None:
    names = [f"{exp_name}-{i}" for i in range(30)]
    store = await RedisStore.open(redis_cluster.url)
    try:
        for name in names:
            exp = ExperimentSettings(name)
            recs = await store.record_decisions(exp, ["a", "b"], [0.5, 0.5])
            assert await store.apply_reward(exp, recs[0].event_id, 1.0) is A
        by_master = keys_by_master(redis_cluster, f"bandit:{{{exp_name}-*")
        holders: dict[str, set[int]] = defaultdict(set)
        slots: dict[str, set[int]] = defaultdict(set)
        for port, keys in by_master.items():
            for key in keys:
                name = key[len("bandit:{") : key.index("}")]
                holders[name].add(port)
                slots[name].add(key_slot(key.encode()))
        assert set(holders) == set(names)
        assert all(len(h) == 1 and len(slots[n]) == 1 for n, h in holders.items())
        used = {next(iter(h)) for h in holders.values()}
        assert used == redis_cluster.master_ports()  # 30 experiments land on all 3 shards
        for name in names:  # and every one reads back whole
            assert (await store.snapshot(name))["a"].rewards == 1
    finally:
        await store.close()
        for name in names:
            delete_experiment_keys(redis_cluster.url, name)


def test_the_cluster_refuses_a_script_that_leaves_its_slot(redis_cluster: ClusterProcesses) -> None:
    """Redis 7 checks that a script touches only keys of its declared slot, so the
    contract suite passing on the cluster shows every store script stays on one slot."""
    key = "bandit:{probe-a}:ctl"
    other = next(
        f"bandit:{{probe-b{i}}}:ctl"
        for i in range(1000)
        if key_slot(f"probe-b{i}".encode()) != key_slot(b"probe-a")
    )
    master = redis_cluster.master_of(key)
    script = "#!lua\nreturn redis.call('EXISTS', KEYS[1]) + redis.call('EXISTS', ARGV[1])"
    with contextlib.closing(master.client()) as c, pytest.raises(redis.ResponseError) as err:
        c.eval(script, 1, key, other)
    line = describe_error(err.value)
    assert "refused a script whose keys span hash slots" in line
    assert "\n" not in line


async def test_start_up_errors_are_one_line_and_leave_nothing_open(
    redis_cluster: ClusterProcesses, redis_url: str
) -> None:
    dead = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    with pytest.raises(StoreError) as err:
        await RedisStore.open(f"redis+cluster://app:s3cret@{dead}")
    text = str(err.value)
    assert text.startswith("no node of the Redis Cluster redis+cluster://app:***@")
    assert "s3cret" not in text and "\n" not in text

    node = redis_cluster.nodes[0]
    with contextlib.closing(node.client()) as c:
        before = len(c.client_list())
        with pytest.raises(StoreError, match=r"is a Redis Cluster node; its URL must be redis\+"):
            await RedisStore.open(node.url)
        wait_until("the refused store's connections close", lambda: len(c.client_list()) == before)

    with pytest.raises(StoreError, match="not a Redis Cluster node"):
        await RedisStore.open(redis_url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0])


async def test_a_cluster_node_behind_a_plain_url_is_named_when_it_redirects(
    redis_cluster: ClusterProcesses, exp_name: str
) -> None:
    """Without the start-up check, the first command for a slot of another node says what
    is wrong and what to use instead."""
    node = redis_cluster.nodes[0]
    name = next(
        f"{exp_name}-{i}"
        for i in range(1000)
        if redis_cluster.master_of(f"bandit:{{{exp_name}-{i}}}:ctl").port != node.port
    )
    store = RedisStore.from_url(node.url)
    try:
        with pytest.raises(StoreError) as err:
            await store.record_decision(ExperimentSettings(name), "a", 1.0)
    finally:
        await store.close()
    text = str(err.value)
    assert "is a Redis Cluster node and redirected a command (MOVED" in text
    assert "use redis+cluster://" in text and "\n" not in text


async def test_replicated_durability_waits_for_a_replica_and_still_answers(
    redis_cluster: ClusterProcesses, exp_name: str
) -> None:
    exp = ExperimentSettings(exp_name)
    master = redis_cluster.master_of(f"bandit:{{{exp_name}}}:ctl")
    (replica,) = redis_cluster.replicas_of(master)
    # a cluster just started may still be syncing its replicas (WAIT would time out)
    masters = [n for n in redis_cluster.nodes if n.port in redis_cluster.master_ports()]
    wait_until("every replica is in sync", lambda: all(replicas_online(m) for m in masters))
    wait_until("the replica acknowledges", lambda: acknowledged(master, f"bandit:{{{exp_name}}}:s"))
    fast = await RedisStore.open(redis_cluster.url)
    safe = await RedisStore.open(f"{redis_cluster.url}?durability=replicated&wait_timeout=0.3")
    assert safe.durability == "replicated"
    try:
        waits = wait_calls(master)
        (a,) = await fast.record_decisions(exp, ["a"], [1.0])
        assert await fast.apply_reward(exp, a.event_id, 1.0) is A
        assert wait_calls(master) == waits  # primary durability sends no WAIT
        b, c = await safe.record_decisions(exp, ["a", "b"], [0.5, 0.5])
        assert await safe.apply_rewards(exp, [(b.event_id, 1.0), (a.event_id, 1.0)]) == [A, D]
        assert wait_calls(master) == waits + 2  # one after the log, one after the rewards
        with contextlib.closing(master.client()) as direct:
            direct.script_flush()  # the durable path loads its script again (NOSCRIPT)
        (d,) = await safe.record_decisions(exp, ["a"], [1.0])
        assert await safe.apply_reward(exp, d.event_id, 0.0) is A

        assert replica.proc is not None
        replica.proc.send_signal(19)  # SIGSTOP: the replica stops acknowledging
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"only 0 of 1 replicas confirmed it") as err:
                await safe.apply_reward(exp, c.event_id, 0.5)
            assert time.monotonic() - started >= 0.3
            assert "\n" not in str(err.value)
        finally:
            replica.proc.send_signal(18)  # SIGCONT
        # the master did apply it; the retry answers duplicate once the replica has it
        assert await safe.apply_reward(exp, c.event_id, 0.5) is D
        snap = await safe.snapshot(exp_name)
        assert (snap["a"].rewards, snap["b"].rewards, snap["b"].reward_sum) == (3, 1, 0.5)
    finally:
        await fast.close()
        await safe.close()
        delete_experiment_keys(redis_cluster.url, exp_name)


# -- An experiment's own durability ------------------------------------------------------------


def configured(name: str, durability: str | None) -> ExperimentSettings:
    """The store settings of an experiment config, ``durability:`` given or left out."""
    raw: dict[str, object] = {
        "name": name,
        "arms": [{"name": "a", "model": "pkg.mod:f"}, {"name": "b", "model": "pkg.mod:g"}],
        "policy": {"kind": "thompson"},
        "reward": {"kind": "bernoulli"},
    }
    if durability is not None:
        raw["durability"] = durability
    return ExperimentConfig.model_validate(raw).store_settings()


async def test_an_experiments_own_durability_overrides_the_stores(
    tmp_path: Path, exp_name: str
) -> None:
    """On one store over a master without a replica, only the experiment configured
    ``durability: replicated`` has its writes refused; once a replica is attached they
    go through. ``durability: primary`` on a store-wide replicated store never waits."""
    safe = configured(f"{exp_name}-safe", "replicated")
    plain = configured(f"{exp_name}-plain", None)
    assert (safe.durability, plain.durability) == ("replicated", None)
    master = RedisProcess(tmp_path, name="master")
    replica = RedisProcess(
        tmp_path, name="replica", args=["--replicaof", "127.0.0.1", str(master.port)]
    )
    with running(master):
        store = await RedisStore.open(f"{master.url}?wait_timeout=0.2")
        wide = RedisStore.from_url(f"{master.url}?durability=replicated&wait_timeout=0.2")
        assert (store.durability, wide.durability) == ("primary", "replicated")
        try:
            waits = wait_calls(master)
            (p,) = await store.record_decisions(plain, ["a"], [1.0])
            assert await store.apply_reward(plain, p.event_id, 1.0) is A
            assert wait_calls(master) == waits  # the store's primary: no WAIT
            with pytest.raises(StoreError, match=r"only 0 of 1 replicas confirmed it") as err:
                await store.record_decisions(safe, ["a"], [1.0])
            assert "\n" not in str(err.value)
            # a decision logged without waiting; its reward is refused all the same
            (s,) = await store.record_decisions(replace(safe, durability=None), ["b"], [1.0])
            with pytest.raises(StoreError, match=r"only 0 of 1 replicas confirmed it"):
                await store.apply_reward(safe, s.event_id, 1.0)
            assert wait_calls(master) == waits + 2

            # store-wide replicated: an experiment of its own primary answers, one without
            # a setting of its own is refused
            own_primary = replace(plain, durability="primary")
            waits = wait_calls(master)
            (q,) = await wide.record_decisions(own_primary, ["a"], [1.0])
            assert await wide.apply_reward(own_primary, q.event_id, 0.0) is A
            assert wait_calls(master) == waits
            with pytest.raises(StoreError, match=r"only 0 of 1 replicas confirmed it"):
                await wide.record_decisions(plain, ["b"], [1.0])

            with running(replica):
                wait_until("the replica acknowledges", lambda: acknowledged(master, "sync"))
                waits = wait_calls(master)
                (r,) = await store.record_decisions(safe, ["a"], [1.0])
                assert await store.apply_reward(safe, r.event_id, 1.0) is A
                # the refused reward was applied on the master after all
                assert await store.apply_reward(safe, s.event_id, 1.0) is D
                assert wait_calls(master) == waits + 3
            snap = await store.snapshot(safe.name)
            assert (snap["a"].pulls, snap["a"].rewards, snap["b"].rewards) == (2, 1, 1)
            snap = await store.snapshot(plain.name)
            assert (snap["a"].pulls, snap["a"].rewards, snap["b"].pulls) == (2, 2, 1)
        finally:
            await store.close()
            await wide.close()


# -- Sentinel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A master with a password, one replica and three Sentinels (quorum 2)."""
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel"), password="data-pw")
    with group:
        yield group


def sentinel_url(group: SentinelGroup, **params: str) -> str:
    hosts = ",".join(s.address for s in group.sentinels)
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"redis+sentinel://:data-pw@{hosts}/{group.master_name}" + (f"?{query}" if query else "")


async def test_a_sentinel_that_names_no_such_master_is_one_line(sentinels: SentinelGroup) -> None:
    hosts = ",".join(s.address for s in sentinels.sentinels)
    with pytest.raises(StoreError) as err:
        await RedisStore.open(f"redis+sentinel://:data-pw@{hosts}/nosuch")
    text = str(err.value)
    assert f"no Sentinel at {hosts} knows a master named 'nosuch' (they monitor: mymaster)" in text
    assert "data-pw" not in text
    dead = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    with pytest.raises(StoreError, match="no Sentinel of redis"):
        await RedisStore.open(f"redis+sentinel://{dead}/mymaster")


async def test_sentinel_round_trip_and_the_client_follows_a_failover(
    sentinels: SentinelGroup, exp_name: str, tmp_path: Path
) -> None:
    exp = ExperimentSettings(exp_name)
    store = await RedisStore.open(sentinel_url(sentinels, durability="replicated"))
    try:
        recs = await store.record_decisions(exp, ["a", "b"] * 5, [0.5] * 10)
        outcomes = await store.apply_rewards(exp, [(r.event_id, 1.0) for r in recs[:6]])
        assert outcomes == [A] * 6  # acknowledged only once the replica had them
        old = sentinels.master()
        old.kill()  # SIGKILL: the master is gone
        failures = 0
        deadline = time.monotonic() + 30
        while True:  # reads go through as soon as the Sentinels name the new master
            try:
                snap = await store.snapshot(exp_name)
                break
            except StoreError:
                failures += 1
                assert time.monotonic() < deadline, "the client never reached a new master"
                await asyncio.sleep(0.1)
        new = sentinels.master()
        assert new.port != old.port
        assert (snap["a"].rewards + snap["b"].rewards, snap["a"].pulls) == (6, 5)  # none lost
        with contextlib.closing(new.client()) as c:
            assert c.exists(f"bandit:{{{exp_name}}}:e0:arms")  # it talks to the new master
        # the new master has no replica yet: replicated writes say so and change nothing
        with pytest.raises(StoreError, match="replicas confirmed it"):
            await store.apply_reward(exp, recs[6].event_id, 1.0)
        # back as a replica of the new master (the Sentinels would reconfigure it too, after
        # about 10 s; an operator restarting it says so at once)
        old.args += ["--replicaof", "127.0.0.1", str(new.port)]
        old.start()
        wait_until(
            "the old master rejoins as a replica",
            lambda: replicas_online(new) >= 1,
            timeout=30,
        )
        outcomes = await store.apply_rewards(exp, [(r.event_id, 1.0) for r in recs[6:]])
        assert outcomes == [D, A, A, A]  # the refused one was applied on the master after all
        snap = await store.snapshot(exp_name)
        assert snap["a"].rewards + snap["b"].rewards == 10
        assert failures >= 1  # the failover was seen, then followed
    finally:
        await store.close()
