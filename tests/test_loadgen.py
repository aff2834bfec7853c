"""`bandit-serve loadgen` against a live HTTP server (uvicorn, in-memory store): the digits
generator, inputs files, progress without a terminal, and a non-zero exit on failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bandit_serve.cli import app
from bandit_serve.config import AppConfig
from bandit_serve.loadgen import InputsFileError, LoadgenResult, LoadItem, read_inputs
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import LocalModels
from bandit_serve.store import MemoryStore
from tests.conftest import free_port, serve_in_thread

FAST = ["--rate", "2000", "--max-delay", "0.02"]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("BANDIT_SERVE_HOME", str(tmp_path))  # the digit models' cache
    cfg = AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": "digits",
                    "arms": [
                        {"name": "v1", "model": "bandit_serve.demo:predict_v1"},
                        {"name": "v2", "model": "bandit_serve.demo:predict_v2"},
                    ],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli"},
                },
                {
                    "name": "ab",
                    "arms": [
                        {"name": "v1", "model": "tests.fixtures.models:echo_a"},
                        {"name": "v2", "model": "tests.fixtures.models:echo_b"},
                    ],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli"},
                },
                {
                    "name": "broken",
                    "arms": [{"name": "only", "model": "tests.fixtures.models:broken"}],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli"},
                },
            ]
        }
    )
    service = BanditService(cfg, MemoryStore(), LocalModels(cfg), seed=3)
    with serve_in_thread(create_api(lambda: service)) as base:
        yield base


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["loadgen", *args])
    return r.exit_code, r.output


def totals(base: str, name: str) -> tuple[int, int, float]:
    arms = httpx.get(f"{base}/v1/experiments/{name}").json()["arms"]
    return (
        sum(a["pulls"] for a in arms),
        sum(a["rewards"] for a in arms),
        sum(a["reward_sum"] for a in arms),
    )


def test_the_digits_generator_rewards_right_answers(server: str) -> None:
    code, out = run("--url", server, "--requests", "300", "--miss-rate", "0.2", *FAST)
    assert code == 0, out
    assert "traffic share over the last 300 requests: v1 " in out
    assert out.rstrip().endswith("failed requests: 0")
    # not a terminal: plain progress lines (at least the final one), no live table
    assert "loadgen digits: 300/300 predictions" in out and "┃" not in out
    pulls, rewards, reward_sum = totals(server, "digits")
    assert pulls == 300
    assert 200 <= rewards <= 270  # about 80% of 300 posted
    assert 0.75 * rewards <= reward_sum <= 0.98 * rewards  # rewarded 1 when right (80-95%)


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_an_inputs_file_drives_any_experiment(server: str, tmp_path: Path) -> None:
    f = write(
        tmp_path / "in.jsonl",
        5,  # a plain value: the inputs; rewarded only with --reward
        {"inputs": [1], "reward": 0},
        "",
        {"inputs": [2], "expected": "never equal"},  # reward 0
        {"inputs": [3], "unit_id": "u7", "context": {"country": "fr"}, "reward": 1},
    )
    args = ("--url", server, "--experiment", "ab", "--inputs", str(f), "--miss-rate", "0")
    code, out = run(*args, *FAST)
    assert code == 0, out
    assert "loadgen ab: 4/4 predictions" in out
    assert totals(server, "ab") == (4, 3, 1.0)
    code, out = run(*args, "--requests", "8", "--reward", "1", *FAST)  # the file twice
    assert code == 0, out
    assert totals(server, "ab") == (12, 3 + 8, 1.0 + 4.0)


def test_failed_requests_exit_1_with_their_count_and_reasons_in_one_line(
    server: str, tmp_path: Path
) -> None:
    f = write(tmp_path / "in.jsonl", {"inputs": 1, "reward": 1}, {"inputs": 2, "reward": 7})
    code, out = run("--url", server, "--experiment", "ab", "-i", str(f), "--miss-rate", "0", *FAST)
    assert code == 1, out
    assert out.strip().splitlines()[-1] == "error: 1 of 4 requests failed: 1 reward invalid"
    code, out = run("--url", server, "--experiment", "nope", "-i", str(f), *FAST)
    assert code == 1
    assert "2 of 2 requests failed: 2 predict: 404 no experiment named 'nope'" in out
    code, out = run("--url", server, "--experiment", "broken", "-i", str(f), *FAST)
    assert code == 1 and "2 predict: 502 the model of arm 'only' failed" in out
    dead = f"http://127.0.0.1:{free_port()}"
    code, out = run("--url", dead, "--experiment", "ab", "-i", str(f), "--retries", "1", *FAST)
    assert code == 1 and "2 of 2 requests failed: 2 predict: ConnectError" in out
    assert (
        out.strip()
        .splitlines()[-1]
        .endswith(f"is `bandit-serve run` up at {dead}? pass --url or set BANDIT_SERVE_URL")
    )


def test_progress_lines_come_every_few_seconds_without_a_terminal(
    server: str, tmp_path: Path
) -> None:
    f = write(tmp_path / "in.jsonl", *range(10))
    code, out = run(
        "--url", server, "--experiment", "ab", "-i", str(f), "--requests", "60",
        "--rate", "100", "--progress-every", "0.1",
    )  # fmt: skip
    assert code == 0, out
    lines = [ln for ln in out.splitlines() if ln.startswith("loadgen ab: ")]
    assert len(lines) >= 3 and lines[-1].startswith("loadgen ab: 60/60 predictions")
    assert "failed" in lines[0] and "/s)" in lines[0]


def test_bad_inputs_are_refused_before_any_request(server: str, tmp_path: Path) -> None:
    cases: dict[str, tuple[list[object], str]] = {
        "not JSON": (["[1, 2", "3"], "in.jsonl, line 1: not JSON"),
        "typo": ([{"inputs": 1, "rewards": 1}], "line 1: unknown field(s) rewards"),
        "reward": (["1", {"inputs": 1, "reward": "yes"}], "line 2: reward must be a number"),
        "empty": ([""], "has no lines"),
    }
    for lines, message in cases.values():
        f = write(tmp_path / "in.jsonl", *lines)
        code, out = run("--url", server, "--experiment", "ab", "-i", str(f))
        assert code == 2 and message in out, out
    code, out = run("--url", server, "--experiment", "ab", "-i", str(tmp_path / "none.jsonl"))
    assert code == 2 and "cannot read the inputs file" in out
    code, out = run("--url", server, "--experiment", "ab")
    assert code == 2 and "--inputs FILE is needed to drive experiment 'ab'" in out
    assert totals(server, "ab")[0] == 0


def test_items_and_results() -> None:
    item = LoadItem([1], expected=3)
    assert (item.reward_for(3, None), item.reward_for(4, 0.5)) == (1.0, 0.0)
    assert LoadItem(1).reward_for("x", None) is None
    assert LoadItem(1, reward=0.25).reward_for("x", 1.0) == 0.25
    res = LoadgenResult(total=3, sent=2, rewards_posted=2)
    res.failed.update({"predict: 503": 1, "reward expired": 2})
    assert res.failure_line() == "3 of 5 requests failed: 2 reward expired, 1 predict: 503"
    with pytest.raises(InputsFileError):
        list(read_inputs(Path("/nonexistent/inputs.jsonl")))
