"""The simulator's plots: one colour per arm in every panel, and a legend true for all."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bandit_serve.simulation.engine import PolicyResult
from bandit_serve.simulation.plots import OTHERS_COLOUR, share_figure


def result(label: str, share: Sequence[Sequence[float]]) -> PolicyResult:
    s = np.asarray(share, dtype=np.float64)
    grid = np.arange(1, len(s) + 1, dtype=np.int64)
    zeros = np.zeros(len(s))
    return PolicyResult(label, "thompson", grid, zeros, zeros, s, np.zeros(3), 0.5, 1.0)


def hex_of(rgba: object) -> str:
    r, g, b, a = (float(v) for v in np.asarray(rgba, dtype=np.float64).ravel()[:4])
    return to_hex((r, g, b, a))


def colours_by_panel(fig: Figure) -> list[dict[str, str]]:
    """For each policy panel, arm label -> the fill colour of its stack."""
    panels = []
    for ax in fig.axes:
        polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
        if polys:
            panels.append({str(p.get_label()): hex_of(p.get_facecolor()[0]) for p in polys})
    return panels


def legend_colours(fig: Figure) -> dict[str, str]:
    (legend,) = fig.legends
    out = {}
    for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
        assert isinstance(handle, Rectangle)
        out[text.get_text()] = hex_of(handle.get_facecolor())
    return out


def test_each_arm_has_one_colour_in_every_panel_whatever_each_panel_ranks_first() -> None:
    names = ["a0", "a1", "a2"]
    results = [
        result("thompson", [[0.8, 0.15, 0.05], [0.9, 0.05, 0.05]]),  # a0 leads
        result("ucb1", [[0.1, 0.2, 0.7], [0.05, 0.05, 0.9]]),  # a2 leads
        result("kl_ucb", [[0.2, 0.6, 0.2], [0.1, 0.8, 0.1]]),  # a1 leads
        result("fixed", [[1 / 3] * 3, [1 / 3] * 3]),
    ]
    fig = share_figure("drift", names, results)
    try:
        panels = colours_by_panel(fig)
        assert len(panels) == 4
        first = panels[0]
        assert sorted(first) == names
        assert len(set(first.values())) == 3, "two arms share a colour"
        for p in panels:
            assert p == first
        assert legend_colours(fig) == first
        # stacked in the scenario's order in every panel (a0 at the bottom)
        for ax in fig.axes[:4]:
            labels = [str(c.get_label()) for c in ax.collections]
            assert labels == names
    finally:
        plt.close(fig)


def test_many_arms_keep_their_colour_and_the_rest_is_grey() -> None:
    names = [f"a{i:02d}" for i in range(20)]
    rng = np.random.default_rng(0)
    shares = []
    for leader in (19, 3):
        s = rng.dirichlet(np.ones(20), size=4) * 0.2
        s[:, leader] += 0.8
        shares.append(result(f"leader {leader}", s / s.sum(axis=1, keepdims=True)))
    fig = share_figure("many", names, shares)
    try:
        a, b = colours_by_panel(fig)
        assert a == b
        assert "a19" in a and "a03" in a
        assert a["11 others"] == OTHERS_COLOUR
        assert len(a) == 10 and len(set(a.values())) == 10
        assert legend_colours(fig) == a
    finally:
        plt.close(fig)
