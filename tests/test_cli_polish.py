"""The command line reads well: --version, analyze --json, tables at 80 columns that cut no
number and merge no label, and `check` loading every model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import bandit_serve
from bandit_serve.cli import app
from bandit_serve.config import AppConfig
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import LocalModels
from bandit_serve.store import MemoryStore
from tests.conftest import serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
LONG = "treatment-with-a-rather-long-name"


def invoke(*args: str, columns: int | None = None) -> tuple[int, str]:
    env = {"COLUMNS": str(columns)} if columns else None
    r = CliRunner().invoke(app, list(args), env=env)
    return r.exit_code, r.output


def table_rows(out: str) -> list[list[str]]:
    """The body rows of every rich table in ``out``; a row wrapped over several lines is
    joined cell by cell (pieces of a cell joined with a space)."""
    rows: list[list[str]] = []
    fresh = True
    for line in out.splitlines():
        if not line.startswith("│"):
            fresh = True
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if not fresh and not any(cells[1:]):  # continuation: only the label goes on
            rows[-1] = [
                " ".join(p for p in (a, b) if p) for a, b in zip(rows[-1], cells, strict=True)
            ]
        else:
            rows.append(cells)
            fresh = False
    return rows


def squash(text: str) -> str:
    return "".join(text.split())


def test_version() -> None:
    code, out = invoke("--version")
    assert (code, out) == (0, f"bandit-serve {bandit_serve.__version__}\n")
    assert out == "bandit-serve 0.1.0\n"


@pytest.fixture
def server() -> Iterator[str]:
    cfg = AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": "ab",
                    "arms": [
                        {"name": "control", "model": "tests.fixtures.models:echo_a"},
                        {"name": LONG, "model": "tests.fixtures.models:echo_b"},
                    ],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli"},
                }
            ]
        }
    )
    service = BanditService(cfg, MemoryStore(), LocalModels(cfg), seed=3)
    with serve_in_thread(create_api(lambda: service)) as base:
        with httpx.Client(base_url=base) as c:
            for i in range(300):
                p = c.post("/v1/experiments/ab/predict", json={"inputs": i}).json()
                won = (p["arm"] == LONG and i % 3 == 0) or i % 7 == 0
                c.post(
                    "/v1/experiments/ab/rewards",
                    json={"event_id": p["event_id"], "reward": int(won)},
                )
        yield base


def test_analyze_json_is_the_apis_report(server: str) -> None:
    code, out = invoke("analyze", "ab", "--url", server, "--json", "--alpha", "0.1")
    assert code == 0, out
    report = json.loads(out)
    api = httpx.get(f"{server}/v1/experiments/ab/analysis", params={"alpha": 0.1}).json()
    assert report.keys() == api.keys()
    assert (report["baseline"], report["alpha"], report["test"]) == ("control", 0.1, api["test"])
    for mine, theirs in zip(report["arms"], api["arms"], strict=True):
        for key in ("name", "samples", "mean", "effect", "ci_low", "ci_high", "p_value"):
            assert mine[key] == theirs[key]


def test_analyze_fits_80_columns_without_cutting_numbers_or_labels(server: str) -> None:
    code, out = invoke("analyze", "ab", "--url", server, columns=80)
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    report = httpx.get(f"{server}/v1/experiments/ab/analysis").json()
    rows = table_rows(out)
    by_arm: dict[str, list[str]] = {}
    for row in rows:
        by_arm.setdefault(squash(row[0]), []).extend(row[1:])
    assert set(by_arm) == {"control", LONG}  # the long name wrapped, whole, once per table
    treatment = next(a for a in report["arms"] if a["name"] == LONG)
    cells = by_arm[LONG]
    for key in ("mean", "ci_low", "ci_high", "p_value", "expected_loss"):
        assert treatment[key] is not None
        fmt = "+.4f" if key.startswith("ci") else ".4f"
        assert format(treatment[key], fmt) in cells, (key, cells)
    assert f"{treatment['effect']:+.4f}" in cells and f"{treatment['samples']:,}" in cells
    assert "sample ratio check" in out and "fixed-horizon" in out


def test_analyze_is_one_table_when_the_terminal_is_wide(server: str) -> None:
    code, out = invoke("analyze", "ab", "--url", server, columns=160)
    assert code == 0
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["control", LONG] and len(rows[0]) == 11


def test_analyze_unreachable_or_refused_is_one_line(server: str) -> None:
    code, out = invoke("analyze", "nope", "--url", server)
    assert code == 2 and out.startswith("error: analysis of 'nope': 404 no experiment named")
    assert len(out.strip().splitlines()) == 1
    code, out = invoke("analyze", "ab", "--url", "http://127.0.0.1:9")
    assert code == 2 and "ConnectError" in out


def test_simulate_fits_80_columns_with_distinct_whole_labels(tmp_path: Path) -> None:
    scenario = ROOT / "simulations" / "bernoulli-easy.yaml"
    args = ("simulate", str(scenario), "--runs", "4", "--horizon", "300", "--out", str(tmp_path))
    code, out = invoke(*args, columns=80)
    assert code == 0, out
    printed = [line for line in out.splitlines() if not line.startswith("wrote ")]
    assert max(len(line) for line in printed) <= 80
    assert "…" not in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = table_rows(out)
    labels = [p["label"] for p in summary["policies"]]
    assert "epsilon_greedy(decay_after=300)" in labels and "epsilon_greedy" in labels
    assert [squash(r[0]) for r in rows] == [squash(label) for label in labels]
    for row, p in zip(rows, summary["policies"], strict=True):
        assert row[1] == f"{p['regret_mean']:.1f} ± {p['regret_se']:.1f}"
        assert row[3] == f"{p['best_arm_share_last10']:.3f}"
        assert row[4] == f"{p['decisions_per_second']:,.0f}"


def write_config(tmp_path: Path, arms: list[dict[str, object]]) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        json.dumps(
            {
                "experiments": [
                    {
                        "name": "shop",
                        "arms": arms,
                        "policy": {"kind": "thompson"},
                        "reward": {"kind": "bernoulli"},
                    }
                ]
            }
        )
    )
    return path


def test_check_loads_every_model_and_names_each_failing_arm(tmp_path: Path) -> None:
    (tmp_path / "garbage.joblib").write_text("not a pickle")
    cfg = write_config(
        tmp_path,
        [
            {"name": "good", "model": "tests.fixtures.models:echo_a"},
            {"name": "gone", "model": "models/missing.joblib"},
            {"name": "typo", "model": "tests.fixtures.modles:echo_a"},
            {"name": "attr", "model": "tests.fixtures.models:echo_z"},
            {"name": "junk", "model": {"kind": "sklearn", "path": "garbage.joblib"}},
        ],
    )
    code, out = invoke("check", str(cfg))
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert [e.split(":")[1].strip() for e in errors] == [
        "shop/gone",
        "shop/typo",
        "shop/attr",
        "shop/junk",
    ]
    assert f"{tmp_path}/models/missing.joblib does not exist" in errors[0]
    assert "No module named 'tests.fixtures.modles'" in errors[1]
    assert "has no attribute 'echo_z'" in errors[2]
    assert "cannot load model file" in errors[3] and str(tmp_path / "garbage.joblib") in errors[3]
    code, out = invoke("check", str(cfg), "--no-load-models")
    assert code == 0 and "shop: 5 arms" in out and "error" not in out


def test_check_passes_the_demo_and_says_what_it_loaded() -> None:
    code, out = invoke("check", str(ROOT / "configs" / "demo.yaml"))
    assert code == 0, out
    assert out.startswith("digits: ") and out.strip().endswith("models loaded")
