"""deployments/redis-acl.conf: the store works as its restricted user, on one server and
on a Redis Cluster, and everything else is refused."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from bandit_serve.errors import StoreError
from bandit_serve.store import (
    AuditEvent,
    Control,
    ExperimentSettings,
    LoggedDecision,
    RedisStore,
    RewardOutcome,
    ShadowCall,
    new_event_id,
)
from tests.conftest import ManualClock, delete_experiment_keys
from tests.redis_servers import ClusterProcesses, RedisProcess

ACL_FILE = Path(__file__).resolve().parents[1] / "deployments" / "redis-acl.conf"
PASSWORDS = {"admin": "admin-pw", "bandit": "b@ndit:pw/1", "replication": "r", "sentinel": "s"}
A, D, U = RewardOutcome.APPLIED, RewardOutcome.DUPLICATE, RewardOutcome.UNKNOWN


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def filled_acl() -> str:
    """The shipped file with its password placeholders filled in."""
    out = []
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith("user ") and "#REPLACE_WITH_SHA256" in line:
            name = line.split()[1]
            line = line.replace("#REPLACE_WITH_SHA256", "#" + _sha(PASSWORDS[name]))
        out.append(line)
    return "\n".join(out) + "\n"


def bandit_rules() -> list[str]:
    line = next(ln for ln in filled_acl().splitlines() if ln.startswith("user bandit "))
    return line.split()[2:]


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    acl = tmp_path / "redis-acl.conf"
    acl.write_text(filled_acl())
    server = RedisProcess(
        tmp_path, args=["--include", str(acl)], username="admin", password=PASSWORDS["admin"]
    )
    server.start()
    yield server
    server.stop()


def bandit_url(address: str, scheme: str = "redis") -> str:
    return f"{scheme}://bandit:{quote(PASSWORDS['bandit'], safe='')}@{address}"


async def exercise(store: RedisStore, exp: ExperimentSettings, clock: ManualClock) -> None:
    """Every store call, as the contract suite makes them."""
    ok, failed, gone = (
        LoggedDecision(new_event_id(), "a", 0.5, latency_bin=40),
        LoggedDecision(new_event_id(), "a", 0.5, failed=True, latency_bin=90),
        LoggedDecision(new_event_id(), "b", 0.5, client_gone=True, latency_bin=41),
    )
    await store.log_decisions(exp, [ok, failed, gone], {"a": 1.0, "b": 0.5})
    recs = await store.record_decisions(exp, ["a", "b", "b"], [0.5, 0.5, 0.5])
    outcomes = await store.apply_rewards(
        exp, [(ok.event_id, 1.0), (ok.event_id, 1.0), ("f" * 32, 1.0), (recs[0].event_id, 0.5)]
    )
    assert outcomes == [A, D, U, A]
    assert await store.withdraw_decisions(exp, [recs[1].event_id]) == 1
    clock.advance(exp.wait_seconds + 1)
    assert (await store.settle_expired(exp)).defaulted == 1
    snap = await store.read(exp.name)
    assert (snap.totals["a"].pulls, snap.totals["a"].rewards, snap.totals["b"].pending) == (3, 3, 0)
    assert await store.buckets(exp, clock.now - 3600, clock.now)
    stored = await store.transition(
        exp, 0, Control({"state": "paused"}), [AuditEvent("pause", "test")], mark_restore="a"
    )
    assert stored is not None
    assert [e.kind for e in await store.events(exp.name)] == ["pause"]
    assert await store.transition(exp, 1, Control({}), new_epoch=True) is not None
    assert (await store.snapshot(exp.name)) == {}
    sticky = LoggedDecision(new_event_id(), "a", 0.5, unit="u1", assign=1, unit_expected={"a": 1})
    await store.log_decisions(exp, [sticky])
    assert await store.assignments(exp, ["u1", "u2"]) == {"u1": ("a", 0.5)}
    await store.log_shadow(exp, [ShadowCall("v3", False, 40, True, 0.0)])
    assert await store.take_token("acl-test", 10.0, 2) is None
    assert "k1" in await store.signing_keys("a-secret-of-sixteen")
    await store.check()


def test_the_shipped_file_fails_closed_until_its_passwords_are_filled_in(
    tmp_path: Path,
) -> None:
    server = RedisProcess(tmp_path, args=["--include", str(ACL_FILE)])
    with pytest.raises(RuntimeError, match=r"(?s)exited with 1:.*REPLACE_WITH_SHA256"):
        server.start()
    server.stop()


async def test_the_store_runs_as_the_restricted_user_and_nothing_else_is_allowed(
    acl_redis: RedisProcess, clock: ManualClock, exp_name: str
) -> None:
    exp = ExperimentSettings(exp_name, wait_seconds=60)
    store = await RedisStore.open(bandit_url(acl_redis.address), clock=clock)
    try:
        await exercise(store, exp, clock)
        with contextlib.closing(acl_redis.client()) as admin:
            admin.script_flush()  # the store loads its scripts again (SCRIPT LOAD)
        assert await store.record_decision(exp, "a", 1.0)
    finally:
        await store.close()
    with contextlib.closing(
        acl_redis.client(username="bandit", password=PASSWORDS["bandit"])
    ) as bandit:
        for command in (
            ("FLUSHALL",),
            ("KEYS", "*"),
            ("SCAN", "0"),
            ("CONFIG", "GET", "maxmemory"),
            ("EVAL", "return 1", "0"),
            ("SCRIPT", "FLUSH"),
            ("SET", "bandit:{x}:y", "1"),  # a write outside the scripts
            ("HGETALL", "other:key"),  # a key outside bandit:*
            ("ACL", "LIST"),
            ("CLIENT", "LIST"),
            ("SUBSCRIBE", "ch"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                bandit.execute_command(*command)


async def test_credentials_from_env_and_file_and_a_missing_permission_is_one_line(
    acl_redis: RedisProcess,
    clock: ManualClock,
    exp_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORDS["bandit"] + "\n")
    monkeypatch.setenv("REDIS_USERNAME", "bandit")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret))
    exp = ExperimentSettings(exp_name)
    store = await RedisStore.open(f"redis://{acl_redis.address}/0", clock=clock)
    try:
        assert (await store.record_decision(exp, "a", 1.0)).arm == "a"
    finally:
        await store.close()
    monkeypatch.delenv("REDIS_PASSWORD_FILE")
    with contextlib.closing(acl_redis.client()) as admin:
        admin.acl_setuser("limited", enabled=True, passwords=["+lim-pw"], keys=["bandit:*"])
        admin.execute_command("ACL", "SETUSER", "limited", "+ping", "+info")
    with pytest.raises(StoreError) as err:
        await RedisStore.open(f"redis://limited:lim-pw@{acl_redis.address}/0")
    text = str(err.value)
    assert "\n" not in text and "lim-pw" not in text
    assert "may not run a command the store needs" in text and "redis-acl.conf" in text
    with pytest.raises(StoreError, match="refused the credentials") as err:
        await RedisStore.open(f"redis://bandit:wrong-pw@{acl_redis.address}/0")
    assert "wrong-pw" not in str(err.value)


@pytest.fixture
def cluster_with_acl_user(redis_cluster: ClusterProcesses) -> Iterator[ClusterProcesses]:
    """The session cluster with the file's bandit user added to every node."""
    for node in redis_cluster.nodes:
        with contextlib.closing(node.client()) as c:
            c.execute_command("ACL", "SETUSER", "bandit", "reset", *bandit_rules())
    yield redis_cluster
    for node in redis_cluster.nodes:
        with contextlib.closing(node.client()) as c:
            c.execute_command("ACL", "DELUSER", "bandit")


@pytest.fixture
async def acl_cluster_store(
    cluster_with_acl_user: ClusterProcesses, clock: ManualClock, exp_name: str
) -> AsyncIterator[RedisStore]:
    hosts = ",".join(n.address for n in cluster_with_acl_user.nodes)
    store = await RedisStore.open(bandit_url(hosts, "redis+cluster"), clock=clock)
    yield store
    await store.close()
    delete_experiment_keys(cluster_with_acl_user.url, exp_name)


async def test_the_restricted_user_is_enough_on_a_redis_cluster(
    acl_cluster_store: RedisStore, clock: ManualClock, exp_name: str
) -> None:
    await exercise(acl_cluster_store, ExperimentSettings(exp_name, wait_seconds=60), clock)
