"""Redis URLs: every form, credentials from the URL, a file or the environment, redaction,
malformed URLs in one line, the retry policy; TLS, unix sockets and passwords against
real servers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    ConnectionError,
    NoPermissionError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
)

from bandit_serve.errors import ConfigError, StoreError
from bandit_serve.store import ExperimentSettings, RedisStore, RewardOutcome
from bandit_serve.store.connection import RetryPolicy, parse_url, redact, retryable
from tests.redis_servers import RedisProcess, free_ports

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    ("url", "kind", "tls", "hosts", "db", "master"),
    [
        ("redis://h", "single", False, [("h", 6379)], 0, None),
        ("redis://h:7000/3", "single", False, [("h", 7000)], 3, None),
        ("rediss://h:6380?db=2", "single", True, [("h", 6380)], 2, None),
        ("redis://[::1]:7000/0", "single", False, [("::1", 7000)], 0, None),
        (
            "redis+cluster://a:7000,b:7001,c",
            "cluster",
            False,
            [("a", 7000), ("b", 7001), ("c", 6379)],
            0,
            None,
        ),
        ("rediss+cluster://a:7000", "cluster", True, [("a", 7000)], 0, None),
        (
            "redis+sentinel://s1,s2:26380/mymaster",
            "sentinel",
            False,
            [("s1", 26379), ("s2", 26380)],
            0,
            "mymaster",
        ),
        ("rediss+sentinel://s1/main/4", "sentinel", True, [("s1", 26379)], 4, "main"),
    ],
)
def test_url_forms(
    url: str, kind: str, tls: bool, hosts: list[tuple[str, int]], db: int, master: str | None
) -> None:
    t = parse_url(url, NO_ENV)
    assert (t.kind, t.tls, list(t.hosts), t.db, t.master) == (kind, tls, hosts, db, master)
    assert t.password is None and t.durability is None


def test_unix_url_and_options() -> None:
    t = parse_url(
        "unix:///run/redis.sock?db=1&timeout=2.5&retries=7&retry_cap=2&health_check_interval=9"
        "&max_connections=50&durability=replicated&wait_timeout=0.25&wait_replicas=2",
        NO_ENV,
    )
    assert (t.kind, t.path, t.db, t.timeout, t.health_check_interval) == (
        "unix",
        "/run/redis.sock",
        1,
        2.5,
        9.0,
    )
    assert t.retry == RetryPolicy(retries=7, base=0.05, cap=2.0)
    assert (t.max_connections, t.durability, t.wait_timeout, t.wait_replicas) == (
        50,
        "replicated",
        0.25,
        2,
    )


def test_credentials_come_from_the_url_then_a_file_then_the_environment(tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\nsecond line ignored\n")
    env = {"REDIS_PASSWORD": "from-env", "REDIS_USERNAME": "env-user"}
    t = parse_url("redis://u:p%40ss@h/0", env)
    assert (t.username, t.password) == ("u", "p@ss")  # percent-decoded
    t = parse_url(f"redis://h/0?password_file={pw_file}", env)
    assert (t.username, t.password) == ("env-user", "from-file")
    t = parse_url("redis://h/0", {**env, "REDIS_PASSWORD_FILE": str(pw_file)})
    assert t.password == "from-file"  # the file wins over the variable
    assert parse_url("redis://h/0", env).password == "from-env"
    assert parse_url("redis://h/0?username=q", env).username == "q"
    t = parse_url(
        f"redis+sentinel://:master-pw@s1/m?sentinel_username=su&sentinel_password_file={pw_file}",
        NO_ENV,
    )
    assert (t.password, t.sentinel_username, t.sentinel_password) == (
        "master-pw",
        "su",
        "from-file",
    )
    t = parse_url("redis+sentinel://s1/m", {"REDIS_SENTINEL_PASSWORD": "sp"})
    assert (t.password, t.sentinel_password) == (None, "sp")


def test_tls_files_from_query_or_environment() -> None:
    env = {"REDIS_SSL_CA_CERTS": "/env/ca.pem"}
    t = parse_url("rediss://h?ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_check_hostname=no", env)
    assert dict(t.ssl) == {
        "ssl_ca_certs": "/env/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
        "ssl_check_hostname": False,
    }
    assert parse_url("redis://h", env).ssl == {}  # no TLS, no TLS files


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:6379", "not a URL"),
        ("http://h", "unknown scheme 'http'"),
        ("redis://h:port/0", "port 'port' of 'h' is not a number"),
        ("redis://h:99999", "out of range"),
        ("redis://:6379", "names no host"),
        ("redis://a,b", "several hosts need redis+cluster://"),
        ("redis://h/zero", "database 'zero' is not a number"),
        ("redis://h/1?db=2", "database 1 in the path but db=2"),
        ("redis+cluster://a:1/3", "only database 0"),
        ("redis+cluster://a:1,,b:2", "empty entry"),
        ("redis+sentinel://s1:26379", "names the master"),
        ("unix://relative.sock", "absolute socket path"),
        ("redis://h?colour=blue", "unknown query parameter 'colour'"),
        ("redis://h?retries=3&retries=4", "given twice"),
        ("redis://h?timeout=soon", "timeout='soon' is not a number"),
        ("redis://h?durability=eventual", "use primary or replicated"),
        ("redis://h?ssl_ca_certs=/ca.pem", "need a TLS scheme"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe'"),
        ("redis://h?sentinel_username=x", "belong to redis+sentinel://"),
        ("redis://u:secret@h?password_file=/x", "the password is given twice"),
        ("redis://h?password_file=/does/not/exist", "cannot be read"),
    ],
)
def test_a_malformed_url_is_one_line_naming_it_without_its_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_url(url, NO_ENV)
    text = str(err.value)
    assert problem in text and "\n" not in text
    assert "secret" not in text
    assert text.startswith(f"Redis URL {redact(url)!r}: ")
    with pytest.raises(ConfigError):
        RedisStore.from_url(url)  # nothing is built


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        parse_url(f"redis://h?password_file={tmp_path / 'pw'}", NO_ENV)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pa:ss@h:1/0", "redis://user:***@h:1/0"),
        ("redis://:p%40ss@h", "redis://:***@h"),
        ("redis://user@h", "redis://user@h"),
        ("redis://h?password=x&db=1", "redis://h?password=***&db=1"),
        (
            "redis+sentinel://a:b@s1,s2/m?sentinel_password=x",
            "redis+sentinel://a:***@s1,s2/m?sentinel_password=***",
        ),
        ("redis://h?password_file=/run/pw", "redis://h?password_file=/run/pw"),
        ("redis://a:p@ss@h", "redis://a:***@h"),  # an unquoted @ in the password
        ("not a url with:pw@host", "***"),
    ],
)
def test_redact_hides_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_target_repr_never_shows_passwords() -> None:
    t = parse_url("redis+sentinel://u:pw1@s/m?sentinel_password=pw2", NO_ENV)
    assert "pw1" not in repr(t) and "pw2" not in repr(t) and "pw1" not in t.redacted


def test_retryable_errors() -> None:
    transient: tuple[Exception, ...] = (
        ConnectionError("x"),
        TimeoutError("x"),
        ClusterDownError("x"),
    )
    for err in transient:
        assert retryable(err)
    wrapped = ConnectionError("auth")
    wrapped.__cause__ = AuthenticationError("WRONGPASS")  # how redis-py reports it on a socket
    final: tuple[Exception, ...] = (
        wrapped,
        AuthenticationError("WRONGPASS"),
        NoPermissionError("NOPERM"),
        ResponseError("STALE_EPOCH 3"),
        ValueError("x"),
    )
    for err in final:
        assert not retryable(err)
    cannot_connect = RedisClusterException("Redis Cluster cannot be connected")
    cannot_connect.__cause__ = ConnectionError("refused")
    assert retryable(cannot_connect)
    assert not retryable(RedisClusterException("Cluster mode is not enabled on this node"))


async def test_retry_policy_backs_off_and_gives_up() -> None:
    policy = RetryPolicy(retries=3, base=0.001, cap=0.002)
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    assert await policy.call(flaky) == "ok" and len(calls) == 3
    calls.clear()

    async def down() -> str:
        calls.append(1)
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        await policy.call(down)
    assert len(calls) == 4  # the first try and 3 retries
    calls.clear()

    async def refused() -> str:
        calls.append(1)
        raise AuthenticationError("WRONGPASS")

    with pytest.raises(AuthenticationError):
        await policy.call(refused)
    assert len(calls) == 1


# -- real servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl)."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=bandit-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=bandit-serve")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.crt", "-days", "2")  # fmt: skip
    return d


@pytest.fixture(params=["no", "yes"], ids=["server-cert", "mutual-tls"])
def tls_redis(
    request: pytest.FixtureRequest, tmp_path: Path, certs: Path
) -> Iterator[tuple[RedisProcess, int]]:
    """A server with a password, a plain port (for the helper) and a TLS port; with
    ``mutual-tls`` it also requires a client certificate signed by the CA."""
    plain, tls_port = free_ports(2)
    server = RedisProcess(
        tmp_path,
        port=plain,
        args=[
            "--tls-port", str(tls_port), "--tls-cert-file", str(certs / "server.crt"),
            "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", request.param,
            "--requirepass", "tls-pw",
        ],
        password="tls-pw",
    )  # fmt: skip
    server.start()
    yield server, tls_port
    server.stop()


async def round_trip(url: str, name: str) -> None:
    exp = ExperimentSettings(name)
    store = await RedisStore.open(url)
    try:
        rec = await store.record_decision(exp, "a", 1.0)
        assert await store.apply_reward(exp, rec.event_id, 1.0) is RewardOutcome.APPLIED
        assert (await store.snapshot(name))["a"].rewards == 1
    finally:
        await store.close()


async def test_rediss_with_a_ca_from_the_url_or_the_environment(
    tls_redis: tuple[RedisProcess, int],
    certs: Path,
    exp_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, port = tls_redis
    mutual = server.args[server.args.index("--tls-auth-clients") + 1] == "yes"
    client_cert = f"&ssl_certfile={certs}/client.crt&ssl_keyfile={certs}/client.key"
    url = f"rediss://:tls-pw@127.0.0.1:{port}/0?ssl_ca_certs={certs}/ca.crt"
    if mutual:
        with pytest.raises(StoreError) as refused:  # no client certificate
            await RedisStore.open(url)
        assert "\n" not in str(refused.value) and "tls-pw" not in str(refused.value)
        url += client_cert
    await round_trip(url, exp_name)
    monkeypatch.setenv("REDIS_SSL_CA_CERTS", str(certs / "ca.crt"))
    if mutual:
        monkeypatch.setenv("REDIS_SSL_CERTFILE", str(certs / "client.crt"))
        monkeypatch.setenv("REDIS_SSL_KEYFILE", str(certs / "client.key"))
    monkeypatch.setenv("REDIS_PASSWORD", "tls-pw")
    await round_trip(f"rediss://127.0.0.1:{port}/0", exp_name + "-env")
    monkeypatch.delenv("REDIS_SSL_CA_CERTS")
    with pytest.raises(StoreError, match="certificate verify failed") as err:
        await RedisStore.open(f"rediss://127.0.0.1:{port}/0")  # an unknown CA
    assert "\n" not in str(err.value) and "tls-pw" not in str(err.value)


async def test_unix_socket_with_a_password_file(tmp_path: Path, exp_name: str) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisProcess(
        tmp_path, args=["--unixsocket", str(sock), "--requirepass", "sock-pw"], password="sock-pw"
    )
    server.start()
    try:
        (tmp_path / "pw").write_text("sock-pw\n")
        await round_trip(f"unix://{sock}?db=2&password_file={tmp_path / 'pw'}", exp_name)
        with pytest.raises(StoreError, match="refused the credentials") as err:
            await RedisStore.open(f"unix://:nope@{sock}")
        assert "nope" not in str(err.value)
    finally:
        server.stop()
