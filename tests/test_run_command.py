"""`bandit-serve run` as a user runs it: starts its own Redis and Ray, serves, and on
SIGTERM leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from bandit_serve.store.connection import redact
from tests.conftest import free_port, run_cli, start_run
from tests.redis_servers import RedisProcess, running, wait_until

ROOT = Path(__file__).resolve().parents[1]


ONE = (
    "experiments:\n"
    "  - name: one\n"
    "    arms:\n"
    "      - {name: a, model: 'tests.fixtures.models:echo_a'}\n"
    "      - {name: b, model: 'tests.fixtures.models:echo_b'}\n"
    "    policy: {kind: epsilon_greedy, epsilon: 0.5}\n"
    "    reward: {kind: bernoulli}\n"
)


def _session(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, psutil.Error, PermissionError):
            continue
    return out


def _start(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None, config_text: str = ONE
) -> tuple[subprocess.Popen[str], int, str]:
    """`bandit-serve run` as systemd would start it: the leader of a session of its own."""
    config = tmp_path / "one.yaml"
    config.write_text(config_text)
    http_port, redis_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    proc = start_run(
        config,
        "--port",
        str(http_port),
        "--redis-url",
        redis_url,
        "--router-replicas",
        "1",
        *extra,
        cwd=tmp_path,
        env=env,
    )
    return proc, http_port, redis_url


def _wait_up(proc: subprocess.Popen[str], http_port: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = httpx.post(
                f"http://127.0.0.1:{http_port}/v1/experiments/one/predict",
                json={"inputs": 1},
                timeout=5,
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    raise AssertionError(f"the service did not come up:\n{out[-3000:]}")


@pytest.mark.parametrize("target", ["driver", "group"])
def test_run_serves_and_sigterm_stops_everything_it_started(tmp_path: Path, target: str) -> None:
    """SIGTERM to the command, or to its whole process group (systemd, Kubernetes): every
    process it started (Ray's, the replicas, the Redis it started) is gone within 15 s.
    A stale RAY_ADDRESS in the environment is ignored: run without --address is local."""
    proc, http_port, redis_url = _start(tmp_path, env={"RAY_ADDRESS": "127.0.0.1:1"})
    started: list[psutil.Process] = []
    try:
        _wait_up(proc, http_port)
        assert redis.Redis.from_url(redis_url).ping()  # the Redis it started itself
        assert any((tmp_path / "var" / "redis").glob("appendonly*"))
        started = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in started)
        assert "redis-server" in names and ("raylet" in names or "gcs_server" in names)
        assert any(os.getsid(c.pid) != proc.pid for c in started)  # the service's own session
    finally:
        if target == "driver":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        began = time.monotonic()
        out, _ = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - began
    _, alive = psutil.wait_procs(started, timeout=max(0.1, 15 - stopped_in))
    assert not alive, [p.cmdline() for p in alive]
    assert proc.returncode == 0, out[-3000:]
    assert "bandit-serve stopped" in out
    assert stopped_in < 15, stopped_in
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
        raise AssertionError("the Redis the command started is still running")
    except redis.ConnectionError:
        pass


def test_a_model_that_does_not_start_on_ray_is_one_line_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    """On Ray the models load in their ModelVersion replicas: a model that does not load
    there is one line naming the experiment, the arm and the cause (not Ray's traceback),
    the command exits non-zero, and every process it started is gone."""
    bad = ONE.replace("tests.fixtures.models:echo_b", "tests.fixtures.models:nope")
    proc, _, _ = _start(tmp_path, "--engine", "ray", config_text=bad)
    started: dict[int, psutil.Process] = {}  # every process it starts, seen while it runs
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    started.setdefault(child.pid, child)
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, out[-3000:]
    assert errors[0].startswith("error: the model of experiment one arm b did not start:"), out
    assert "nope" in errors[0] and len(errors[0]) < 400 and "Traceback" not in out
    assert len(started) > 2  # its Redis, Ray's GCS, raylet, workers...
    _, alive = psutil.wait_procs(list(started.values()), timeout=15)
    assert not alive, [p.cmdline() for p in alive]


def test_a_port_in_use_and_an_unreachable_cluster_are_one_line_each(tmp_path: Path) -> None:
    config = tmp_path / "one.yaml"
    config.write_text(ONE)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "bandit_serve.cli", "run", str(config), "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in r.stderr and "--port" in r.stderr
    began = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bandit_serve.cli",
            "run",
            str(config),
            "--port",
            str(free_port()),
            "--address",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - began < 30
    assert r.returncode == 2 and "no Ray cluster answers at 127.0.0.1:" in r.stderr, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "bandit_serve.cli", "run", str(config), "--host", "0.0.0.0"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "refusing to serve without an auth section on 0.0.0.0" in r.stderr


def test_run_without_redis_server_says_how_to_install(tmp_path: Path) -> None:
    config = ROOT / "configs" / "demo.yaml"
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no redis-server on PATH
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bandit_serve.cli",
            "run",
            str(config),
            "--redis-url",
            f"redis://127.0.0.1:{free_port()}/0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "redis-server is not installed" in r.stderr
    assert "apt-get install redis-server" in r.stderr


def test_run_with_a_bad_config_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: [{name: x}]\n")
    r = subprocess.run(
        [sys.executable, "-m", "bandit_serve.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert f"{bad}: experiments[0].arms: Field required" in r.stderr


def test_a_config_change_that_fails_to_deploy_is_one_line_and_the_watch_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A redeploy that fails (a model that does not start) must not stop ``run``: the
    watcher says so in one line and deploys the next change that works."""
    import threading

    from bandit_serve.errors import BanditServeError
    from bandit_serve.service.runner import _watch

    config = tmp_path / "c.yaml"
    config.write_text(Path("configs/demo.yaml").read_text())
    calls: list[int] = []
    stop = threading.Event()

    def redeploy() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise BanditServeError("the model of experiment digits arm v2 did not start: boom")

    watcher = threading.Thread(target=_watch, args=(config, stop, 0.05, redeploy))
    watcher.start()
    time.sleep(0.5)  # the watcher reads the file's first mtime as it starts
    try:
        for change in (1, 2):
            os.utime(config, (time.time() + 10 * change,) * 2)
            deadline = time.monotonic() + 10
            while len(calls) < change and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        stop.set()
        watcher.join(timeout=5)
    out = capsys.readouterr().out
    assert len(calls) == 2, out
    assert not watcher.is_alive()
    failed = [ln for ln in out.splitlines() if "did not deploy" in ln]
    assert failed == [
        f"config {config} changed but did not deploy: "
        "the model of experiment digits arm v2 did not start: boom"
    ]
    assert out.count(f"config {config} changed: redeployed") == 1


def test_on_ray_a_change_that_would_open_the_api_beyond_loopback_is_not_deployed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exposure rule holds at every redeploy, not only at start-up: serving on
    0.0.0.0, a config without auth is refused in one line and never deployed."""
    import functools
    import threading

    from bandit_serve.service.options import check_exposure
    from bandit_serve.service.runner import _watch

    config = tmp_path / "c.yaml"
    config.write_text(Path("configs/demo.yaml").read_text())  # no auth section
    calls: list[int] = []
    stop = threading.Event()
    exposure = functools.partial(check_exposure, host="0.0.0.0", insecure=False)
    watcher = threading.Thread(
        target=_watch,
        args=(config, stop, 0.05, lambda: calls.append(1)),
        kwargs={"check": exposure},
    )
    watcher.start()
    time.sleep(0.5)  # the watcher reads the file's first mtime as it starts
    try:
        os.utime(config, (time.time() + 10,) * 2)
        deadline = time.monotonic() + 10
        while "did not deploy" not in (out := capsys.readouterr().out):
            assert time.monotonic() < deadline, out
            time.sleep(0.02)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert calls == []
    assert f"config {config} changed but did not deploy: refusing to serve without an auth" in out


# -- start-up errors: one line each, saying what to do --------------------------------------


def _cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``bandit-serve ARGS...``: its exit code and its output (stdout and stderr)."""
    return run_cli(cwd, *args, env=env, timeout=60)


def _run_fails(
    tmp_path: Path, redis_url: str, env: dict[str, str] | None = None, config_text: str = ONE
) -> tuple[str, str]:
    """``run --engine local`` with ``redis_url``, which must fail at start-up within
    seconds: its one error line and its whole output. It must have started no
    redis-server (no data directory)."""
    config = tmp_path / "one.yaml"
    config.write_text(config_text)
    began = time.monotonic()
    code, out = _cli(
        tmp_path,
        "run",
        str(config),
        "--engine",
        "local",
        "--port",
        str(free_port()),
        "--redis-url",
        redis_url,
        env=env,
    )
    assert time.monotonic() - began < 20
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1, out
    assert "Traceback" not in out and "bandit-serve is up" not in out, out
    assert not (tmp_path / "var" / "redis").exists(), "it started a redis-server"
    return errors[0], out


def _serves(tmp_path: Path, redis_url: str, env: dict[str, str] | None = None) -> str:
    """``run --engine local`` with ``redis_url`` comes up, predicts, takes a reward and
    stops on SIGTERM; its output."""
    config = tmp_path / "one.yaml"
    config.write_text(ONE)
    port = free_port()
    proc = start_run(
        config,
        "--engine",
        "local",
        "--port",
        str(port),
        "--redis-url",
        redis_url,
        cwd=tmp_path,
        env=env,
    )
    base = f"http://127.0.0.1:{port}/v1/experiments/one"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.post(f"{base}/predict", json={"inputs": 1}, timeout=5)
                if r.status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "did not come up"
            time.sleep(0.2)
        reward = httpx.post(
            f"{base}/rewards", json={"event_id": r.json()["event_id"], "reward": 1}, timeout=10
        )
        assert (reward.status_code, reward.json()["status"]) == (200, "applied"), reward.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert not (tmp_path / "var" / "redis").exists(), "it started a redis-server"
    return out


@pytest.mark.parametrize(
    ("form", "said"),
    [
        (
            "redis+cluster://app:s3cret-pw@127.0.0.1:{p},127.0.0.1:{q}",
            "no node of the Redis Cluster",
        ),
        ("rediss+cluster://app:s3cret-pw@127.0.0.1:{p}", "no node of the Redis Cluster"),
        ("redis+sentinel://:s3cret-pw@127.0.0.1:{p},127.0.0.1:{q}/mymaster", "no Sentinel of"),
        ("rediss://:s3cret-pw@127.0.0.1:{p}/0?retries=0", "cannot be used: Error 111"),
    ],
)
def test_a_cluster_sentinel_or_tls_url_where_nothing_answers_is_one_line(
    tmp_path: Path, form: str, said: str
) -> None:
    """Each URL form the store knows is parsed as the store parses it (redis-py's own
    parser raised a ValueError for these): nothing answers, so one line, the password
    redacted, saying what to do; no redis-server is started for them."""
    url = form.format(p=free_port(), q=free_port())
    line, out = _run_fails(tmp_path, url)
    assert said in line and "s3cret-pw" not in out, out
    assert f"{url.replace('s3cret-pw', '***')}" in line, line
    assert line.endswith(
        "is Redis running there? check --redis-url, REDIS_URL or the config's redis_url"
    )


def test_replicated_durability_on_a_server_without_replica_is_one_line(tmp_path: Path) -> None:
    """README: with ``durability=replicated`` a master without a replica is a start-up
    error (the store's query options gave a TypeError traceback before)."""
    with running(RedisProcess(tmp_path / "redis")) as server:
        url = f"{server.url}?durability=replicated&wait_timeout=0.5&retries=1"
        line, _ = _run_fails(tmp_path, url)
    assert line == (
        f"error: durability: replicated needs 1 replica(s) of every master of {url}, and "
        f"{server.address} has 0; give every master a replica (replicaof), or drop "
        "durability=replicated"
    )


def test_an_experiment_asking_for_replicated_durability_is_checked_at_start_up(
    tmp_path: Path,
) -> None:
    """An experiment's own ``durability: replicated`` (the URL's store-wide setting left
    as it is) on a master without a replica: one line at start-up naming the experiment,
    rather than a 503 at its first write."""
    text = ONE.replace(
        "    reward: {kind: bernoulli}\n",
        "    reward: {kind: bernoulli}\n    durability: replicated\n",
    )
    assert "durability: replicated" in text
    with running(RedisProcess(tmp_path / "redis")) as server:
        line, _ = _run_fails(tmp_path, server.url, config_text=text)
    assert line.startswith(
        f"error: durability: replicated needs 1 replica(s) of every master of {server.url}"
    ), line
    assert line.endswith("(asked for by experiment(s) one)"), line


def test_replicated_durability_and_the_stores_options_serve_with_a_replica(
    tmp_path: Path,
) -> None:
    """A plain URL with the store's own query options, on a master with a replica:
    `run` starts, serves, and a reward waits for the replica and is applied."""
    master = RedisProcess(tmp_path / "redis", name="master")
    replica = RedisProcess(
        tmp_path / "redis", name="replica", args=["--replicaof", "127.0.0.1", str(master.port)]
    )
    with running(master), running(replica):

        def synced() -> bool:
            with contextlib.closing(master.client()) as c:
                info = c.info("replication")
                return bool(info.get("slave0", {}).get("state") == "online")

        wait_until("the replica is online", synced, 15)
        out = _serves(
            tmp_path, f"{master.url}?durability=replicated&wait_timeout=2&retries=1&timeout=3"
        )
        with contextlib.closing(replica.client()) as c:
            assert c.keys("*one*"), "the replica has none of the experiment's keys"
    assert "bandit-serve is up" in out and "started redis-server" not in out


def test_a_refused_password_is_one_line_redacted_and_starts_no_second_server(
    tmp_path: Path,
) -> None:
    """A server that refuses the password answers: `run` says so in one line (the
    password redacted) with what to check, and starts no redis-server on its port
    (it said "redis-server did not come up on port ..." before)."""
    with running(
        RedisProcess(tmp_path / "redis", args=["--requirepass", "right-pw"], password="right-pw")
    ) as server:
        wrong = f"redis://:wrong-pw@{server.address}/0"
        line, out = _run_fails(tmp_path, wrong)
        assert line == (
            f"error: Redis at redis://:***@{server.address}/0 cannot be used: Redis at "
            f"{server.address} refused the credentials (invalid username-password pair or "
            "user is disabled.); check the password (in the URL, ?password_file=, "
            "REDIS_PASSWORD_FILE or REDIS_PASSWORD) and the user (in the URL, ?username= or "
            "REDIS_USERNAME)"
        ), out
        assert "wrong-pw" not in out and "did not come up" not in out
        # no password at all: the same advice
        line, _ = _run_fails(tmp_path, server.url, env={"REDIS_PASSWORD": ""})
        assert "refused the credentials (Authentication required.)" in line, line
        assert "REDIS_PASSWORD" in line


@pytest.mark.parametrize("source", ["password_file", "REDIS_PASSWORD"])
def test_the_password_from_a_file_or_the_environment_is_used(tmp_path: Path, source: str) -> None:
    """`run` found a password-protected server "not answering" when the password came
    from ``password_file=`` or ``REDIS_PASSWORD``; now it serves with it."""
    with running(
        RedisProcess(tmp_path / "redis", args=["--requirepass", "right-pw"], password="right-pw")
    ) as server:
        if source == "password_file":
            secret = tmp_path / "redis-password"
            secret.write_text("right-pw\n")
            _serves(tmp_path, f"{server.url}?password_file={secret}", env={"REDIS_PASSWORD": ""})
        else:
            _serves(tmp_path, server.url, env={"REDIS_PASSWORD": "right-pw"})
        with contextlib.closing(server.client()) as c:
            assert c.keys("*one*"), "nothing was written to the password-protected server"


def test_a_local_url_with_credentials_and_nothing_listening_is_one_line(tmp_path: Path) -> None:
    """A server started here would not know the URL's password: none is started."""
    url = f"redis://app:hunter2-pw@127.0.0.1:{free_port()}/0"
    line, out = _run_fails(tmp_path, url)
    assert "hunter2-pw" not in out
    assert line.startswith(
        f"error: nothing answers at {redact(url)} (connection refused), and bandit-serve "
        "starts a redis-server only for a local URL without credentials"
    ), line
    assert "check --redis-url, REDIS_URL" in line


def test_a_missing_config_file_says_check_the_path(tmp_path: Path) -> None:
    for command in ("run", "check"):
        code, out = _cli(tmp_path, command, "nope.yaml")
        assert code == 2, out
        assert out.strip() == (
            "error: nope.yaml: cannot read the file: No such file or directory; check the "
            f"path (looked for {tmp_path / 'nope.yaml'})"
        ), out


def test_commands_against_a_service_that_is_not_running_say_what_to_do(tmp_path: Path) -> None:
    """Nothing listens at the URL: one line naming it, asking whether `bandit-serve run`
    is up and pointing at --url / BANDIT_SERVE_URL (not only a raw ConnectError)."""
    url = f"http://127.0.0.1:{free_port()}"
    hint = "; is `bandit-serve run` up there? pass --url or set BANDIT_SERVE_URL"
    for args, env in (
        (("analyze", "one", "--url", url), None),
        (("analyze", "one"), {"BANDIT_SERVE_URL": url}),
        (("arm", "rollback", "one", "a", "--url", url), None),
    ):
        code, out = _cli(tmp_path, *args, env=env)
        lines = out.strip().splitlines()
        assert code == 2 and len(lines) == 1, out
        assert lines[0].startswith(f"error: cannot reach {url}: "), out
        assert "ConnectError" in lines[0] and lines[0].endswith(hint), out
