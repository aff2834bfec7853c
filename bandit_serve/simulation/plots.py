"""Plots of simulation results. Imports matplotlib, so only the CLI imports this module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bandit_serve.simulation.engine import PolicyResult

__all__ = ["plot_regret", "plot_share"]


def plot_regret(path: Path, title: str, results: Sequence[PolicyResult]) -> None:
    """Mean cumulative regret of each policy with a band of ±1 standard error."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for r in results:
        (line,) = ax.plot(r.grid, r.regret_mean, label=r.label)
        ax.fill_between(
            r.grid,
            r.regret_mean - r.regret_se,
            r.regret_mean + r.regret_se,
            color=line.get_color(),
            alpha=0.25,
            linewidth=0,
        )
    ax.set_xlabel("decisions")
    ax.set_ylabel("cumulative regret (expected)")
    ax.set_title(f"{title}: mean regret ± 1 SE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_share(
    path: Path, title: str, arm_names: Sequence[str], results: Sequence[PolicyResult]
) -> None:
    """Traffic share of each arm over time, one panel per policy (many arms: top 8 + rest)."""
    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False)
    for ax, r in zip(axes.ravel(), results, strict=False):
        share = r.share
        order = share.sum(axis=0).argsort()[::-1]
        top = order[:8]
        stacks = [share[:, a] for a in top]
        labels = [arm_names[a] for a in top]
        if len(order) > 8:
            stacks.append(share[:, order[8:]].sum(axis=1))
            labels.append(f"{len(order) - 8} others")
        ax.stackplot(r.grid, *stacks, labels=labels)
        ax.set_title(r.label, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("decisions", fontsize=8)
        ax.set_ylabel("traffic share", fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=8)
    fig.suptitle(f"{title}: traffic share per arm")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
