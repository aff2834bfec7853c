"""The deployment files parse and point at what exists."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from bandit_serve.service.serve_app import AppArgs, build_app

ROOT = Path(__file__).resolve().parents[1]


def test_serve_config_builds_with_the_typed_app_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = yaml.safe_load((ROOT / "deployments" / "serve.yaml").read_text())
    app = cfg["applications"][0]
    assert app["import_path"] == "bandit_serve.service.serve_app:build_app"
    args = AppArgs.model_validate(app["args"])
    assert (ROOT / args.config).is_file()
    monkeypatch.chdir(ROOT)
    built = build_app(app["args"])  # what `serve run deployments/serve.yaml` calls: a dict
    assert type(built).__name__ == "Application"


def test_rayservice_and_prometheus_and_grafana_parse() -> None:
    rs = yaml.safe_load((ROOT / "deployments" / "rayservice.yaml").read_text())
    inner = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert inner["applications"][0]["import_path"].endswith(":build_app")
    prom = yaml.safe_load((ROOT / "deployments" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
    dash = json.loads((ROOT / "deployments" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for name in (
        "bandit_traffic_share",
        "bandit_posterior_mean",
        "bandit_decisions_total",
        "bandit_rewards_total",
        "bandit_model_errors_total",
        "bandit_model_calls_total",
        "bandit_model_latency_seconds_bucket",
        "bandit_decision_latency_seconds",
        "bandit_arm_status",
        "bandit_guardrail_violations_total",
    ):
        assert name in exprs


def test_prometheus_takes_its_targets_from_files_beside_its_config() -> None:
    """No hard-coded target: file_sd over prometheus-targets/ (documented in the file); the
    shipped example is in the target file format and is not read until copied."""
    prom = yaml.safe_load((ROOT / "deployments" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert "static_configs" not in job
    (sd,) = job["file_sd_configs"]
    patterns = [PurePosixPath(f) for f in sd["files"]]
    assert {p.parent.as_posix() for p in patterns} == {"prometheus-targets"}
    folder = ROOT / "deployments" / "prometheus-targets"
    examples = sorted(folder.glob("*.example"))
    assert examples, "ship an example targets file"
    for example in examples:
        assert not any(
            PurePosixPath(f"prometheus-targets/{example.name}").match(str(p)) for p in patterns
        )
        groups = yaml.safe_load(example.read_text())
        assert all(re.fullmatch(r"[\w.-]+:\d+", t) for g in groups for t in g["targets"])
    text = (ROOT / "deployments" / "prometheus.yml").read_text()
    assert "prometheus-targets/" in text.split("global:")[0]  # the comment says where


STORE_BACKED = re.compile(r"\bbandit_(?!decision_latency_seconds)\w+")


def test_grafana_never_adds_up_copies_of_store_backed_series() -> None:
    """Every experiment series is read from Redis: any replica's scrape is the whole truth,
    so copies from several targets are reduced with max (never summed); quantiles are
    histogram_quantile over rate() of the Redis-backed model latency histogram; only the
    per-process decision latency is summed over processes."""
    dash = json.loads((ROOT / "deployments" / "grafana-dashboard.json").read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for m in STORE_BACKED.finditer(expr):
                before = expr[: m.start()]
                assert re.search(r"max by \([^)]*\) \((rate\()?$", before), (
                    f"panel {panel['title']!r}: {m.group()} is not reduced with max by: {expr}"
                )
            for m in re.finditer(r"bandit_decision_latency_seconds_bucket", expr):
                assert re.search(r"sum by \([^)]*\ble\b[^)]*\) \(rate\($", expr[: m.start()])
            if "histogram_quantile" in expr:
                assert re.search(r"histogram_quantile\(0\.\d+, \w+ by \([^)]*\) \(rate\(", expr)
