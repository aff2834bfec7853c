"""The deployment files parse and point at what exists."""

from __future__ import annotations

import json
from pathlib import Path

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
        "bandit_decision_latency_seconds",
    ):
        assert name in exprs
