"""Plots of simulation results. Imports matplotlib, so only the CLI imports this module.

Every arm keeps one colour in every panel (its index in the scenario picks it), and the
arms are stacked in the scenario's order in every panel, so one legend is true for all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from bandit_serve.simulation.engine import PolicyResult

__all__ = ["MAX_NAMED_ARMS", "arm_colours", "plot_regret", "plot_share", "share_figure"]

MAX_NAMED_ARMS = 10  # more arms: the 9 with the most traffic over all policies, + "others"
OTHERS_COLOUR = "#b0b0b0"


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


def named_arms(arms: int, results: Sequence[PolicyResult]) -> list[int]:
    """The arms drawn on their own (scenario order): all of them up to
    :data:`MAX_NAMED_ARMS`, else the ones with the most traffic over every policy."""
    if arms <= MAX_NAMED_ARMS:
        return list(range(arms))
    total = np.sum([r.share.sum(axis=0) for r in results], axis=0)
    top = np.argsort(-total, kind="stable")[: MAX_NAMED_ARMS - 1]
    return sorted(int(a) for a in top)


def arm_colours(arms: Sequence[int]) -> dict[int, str]:
    """One colour per arm index (tab10), the same wherever the arm is drawn."""
    cmap = plt.get_cmap("tab10")
    return {a: to_hex(cmap(i % 10)) for i, a in enumerate(arms)}


def share_figure(title: str, arm_names: Sequence[str], results: Sequence[PolicyResult]) -> Figure:
    """Traffic share of each arm over time, one panel per policy, one legend for all."""
    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False)
    named = named_arms(len(arm_names), results)
    colours = arm_colours(named)
    others = [a for a in range(len(arm_names)) if a not in colours]
    labels = [arm_names[a] for a in named]
    fill = [colours[a] for a in named]
    if others:
        labels.append(f"{len(others)} others")
        fill.append(OTHERS_COLOUR)
    for ax, r in zip(axes.ravel(), results, strict=False):
        stacks = [r.share[:, a] for a in named]
        if others:
            stacks.append(r.share[:, others].sum(axis=1))
        ax.stackplot(r.grid, *stacks, labels=labels, colors=fill)
        ax.set_title(r.label, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("decisions", fontsize=8)
        ax.set_ylabel("traffic share", fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, legend_labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="lower center", ncol=min(len(labels), 10), fontsize=8)
    fig.suptitle(f"{title}: traffic share per arm")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return fig


def plot_share(
    path: Path, title: str, arm_names: Sequence[str], results: Sequence[PolicyResult]
) -> None:
    """:func:`share_figure`, written to ``path``."""
    fig = share_figure(title, arm_names, results)
    fig.savefig(path)
    plt.close(fig)
