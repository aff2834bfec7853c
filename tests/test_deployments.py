"""The deployment files parse and point at what exists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from bandit_serve.config import key_digest, load_config
from bandit_serve.errors import ConfigError
from bandit_serve.service.serve_app import AppArgs, build_app

ROOT = Path(__file__).resolve().parents[1]


def test_serve_config_builds_with_the_typed_app_builder(tmp_path: Path) -> None:
    cfg = yaml.safe_load((ROOT / "deployments" / "serve.yaml").read_text())
    app = cfg["applications"][0]
    assert app["import_path"] == "bandit_serve.service.serve_app:build_app"
    args = AppArgs.model_validate(app["args"])
    assert (ROOT / args.config).is_file()
    # the shipped config beside a keys file, as a user makes it with `keys new`
    shutil.copy(ROOT / args.config, tmp_path / "experiments.yaml")
    line = {"name": "web", "sha256": key_digest("k" * 32), "scopes": ["predict:digits"]}
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump({"keys": [line]}))
    built = build_app({**app["args"], "config": str(tmp_path / "experiments.yaml")})
    assert type(built).__name__ == "Application"  # what `serve run deployments/serve.yaml` calls


def test_serve_yaml_binds_beyond_this_machine_only_with_auth_on(tmp_path: Path) -> None:
    """serve.yaml listens on 0.0.0.0, so its config has auth (the demo's experiments) and
    fails closed, with one line naming the keys file, until that file exists."""
    cfg = yaml.safe_load((ROOT / "deployments" / "serve.yaml").read_text())
    assert cfg["http_options"]["host"] == "0.0.0.0"
    path = ROOT / cfg["applications"][0]["args"]["config"]
    raw = yaml.safe_load(path.read_text())
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert raw["experiments"] == demo["experiments"]
    assert raw["auth"]["keys_file"] == "keys.yaml" and "redis_url" not in raw
    shutil.copy(path, tmp_path / "experiments.yaml")  # no keys.yaml beside it yet
    with pytest.raises(ConfigError, match=r"keys\.yaml: cannot read the file"):
        load_config(tmp_path / "experiments.yaml")


def test_prometheus_and_grafana_parse() -> None:
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


# -- KubeRay (not run: no Kubernetes here; parsed and checked against serve.yaml) ------------


def _rayservice() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((ROOT / "deployments" / "rayservice.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def _containers(rs: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every Ray container: the head's and each worker group's."""
    cluster = rs["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [(g["template"]["spec"], c) for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayservice_serves_the_application_of_serve_yaml() -> None:
    """Same application, same args: only the config path and the Redis URL differ (the URL
    comes from a Secret through REDIS_URL, so the args carry none)."""
    serve_cfg = yaml.safe_load((ROOT / "deployments" / "serve.yaml").read_text())
    inner = yaml.safe_load(_rayservice()["RayService"]["spec"]["serveConfigV2"])
    for key in ("proxy_location", "http_options"):
        assert inner[key] == serve_cfg[key], key
    assert len(inner["applications"]) == len(serve_cfg["applications"]) == 1
    ours, theirs = inner["applications"][0], serve_cfg["applications"][0]
    assert set(ours) == set(theirs)
    for key in ("name", "route_prefix", "import_path"):
        assert ours[key] == theirs[key], key
    assert "redis_url" not in ours["args"]
    differ = {"config", "redis_url"}
    same = {k: v for k, v in theirs["args"].items() if k not in differ}
    assert {k: v for k, v in ours["args"].items() if k not in differ} == same
    AppArgs.model_validate(ours["args"])


def test_rayservice_config_is_the_demo_with_auth_from_secrets(tmp_path: Path) -> None:
    """The ConfigMap's experiments are configs/demo.yaml's; auth is on, with API key digests
    from a file mounted from a Secret and signing keys from an environment variable set
    from a Secret, in every Ray container; REDIS_URL from a Secret likewise."""
    docs = _rayservice()
    rs = docs["RayService"]
    text = docs["ConfigMap"]["data"]["experiments.yaml"]
    cm = yaml.safe_load(text)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert cm["experiments"] == demo["experiments"]
    assert "redis_url" not in cm  # REDIS_URL, never a default that could win by accident
    auth = cm["auth"]
    assert auth["protect_metrics"] is True and not auth.get("keys")

    config_path = PurePosixPath(
        yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]
    )
    keys_path = PurePosixPath(auth["keys_file"])
    volumes_of = {"config": docs["ConfigMap"]["metadata"]["name"]}
    for pod, container in _containers(rs):
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert env[auth["signing_keys_env"]]["key"] == auth["signing_keys_env"]
        assert env["REDIS_URL"]["key"] == "REDIS_URL"
        assert not [e for e in container["env"] if "value" in e]  # no literal secrets
        mounts = {m["name"]: PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["config"]["configMap"]["name"] == volumes_of["config"]
        assert config_path == mounts["config"] / config_path.name
        assert "secret" in volumes["keys"]
        assert keys_path == mounts["keys"] / keys_path.name
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}

    # the config loads, once its keys file exists (a keys.yaml as the comments say)
    keys = tmp_path / "keys.yaml"
    digest = "0" * 64
    keys.write_text(f"keys:\n  - {{name: web, sha256: '{digest}', scopes: [predict:digits]}}\n")
    config = tmp_path / "experiments.yaml"
    config.write_text(text.replace(str(keys_path), str(keys)))
    cfg = load_config(config)
    assert cfg.auth is not None and [k.name for k in cfg.auth.keys] == ["web"]


def test_network_policy_keeps_rays_ports_inside() -> None:
    """Every Ray pod is selected; from outside only Serve's port 8000 is open; Ray pods
    reach each other; only the KubeRay operator reaches the dashboard (8265)."""
    docs = _rayservice()
    policy = docs["NetworkPolicy"]["spec"]
    selector = policy["podSelector"]["matchLabels"]
    for group in (
        docs["RayService"]["spec"]["rayClusterConfig"]["headGroupSpec"],
        *docs["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ):
        labels = group["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    open_rules = [r for r in policy["ingress"] if "from" not in r]
    assert open_rules == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]
    peers = [r for r in policy["ingress"] if "from" in r and "ports" not in r]
    assert peers == [{"from": [{"podSelector": {"matchLabels": selector}}]}]
    (operator,) = [r for r in policy["ingress"] if "from" in r and "ports" in r]
    assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]
    assert operator["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kuberay-operator"
    }
