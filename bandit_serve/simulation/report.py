"""Turn simulation results into the summary, the CSV and the terminal table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bandit_serve.simulation.engine import PolicyResult, lai_robbins_constant, mean_schedule
from bandit_serve.simulation.scenario import Scenario

__all__ = ["lai_robbins_bound", "summary", "write_csv", "write_summary"]


def lai_robbins_bound(sc: Scenario) -> float | None:
    """``C ln T`` for a stationary Bernoulli instance, else None (no such bound applies)."""
    if not sc.bernoulli or sc.changes:
        return None
    _, means = mean_schedule(sc)
    c = lai_robbins_constant(means[0])
    if not math.isfinite(c) or c == 0:
        return None
    return float(c * math.log(sc.horizon))


def summary(sc: Scenario, results: Sequence[PolicyResult]) -> dict[str, Any]:
    bound = lai_robbins_bound(sc)
    return {
        "scenario": sc.name,
        "horizon": sc.horizon,
        "runs": sc.runs,
        "seed": sc.seed,
        "lai_robbins": bound,
        "policies": [
            {
                "label": r.label,
                "kind": r.kind,
                "regret_mean": float(r.regret_mean[-1]),
                "regret_se": float(r.regret_se[-1]),
                "regret_to_lai_robbins": float(r.regret_mean[-1] / bound) if bound else None,
                "best_arm_share_last10": r.best_arm_share_last10,
                "decisions_per_second": r.decisions_per_second,
            }
            for r in results
        ],
    }


def write_summary(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(path: Path, results: Sequence[PolicyResult]) -> None:
    """Long format: ``policy, t, regret_mean, regret_se`` on the decimated grid."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "t", "regret_mean", "regret_se"])
        for r in results:
            for t, m, se in zip(r.grid, r.regret_mean, r.regret_se, strict=True):
                w.writerow([r.label, int(t), f"{m:.6g}", f"{se:.6g}"])


def table_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for p in data["policies"]:
        ratio = p["regret_to_lai_robbins"]
        rows.append(
            [
                p["label"],
                f"{p['regret_mean']:.1f} ± {p['regret_se']:.1f}",
                "-" if ratio is None else f"{ratio:.2f}",
                f"{p['best_arm_share_last10']:.3f}",
                f"{p['decisions_per_second']:,.0f}",
            ]
        )
    return rows


TABLE_HEADER = [
    "policy",
    "regret at T (± SE)",
    "÷ Lai-Robbins",
    "best-arm share, last 10%",
    "decisions/s",
]


def markdown_table(data: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(data)]
    return "\n".join(lines)
