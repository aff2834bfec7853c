"""Bayesian probability that each arm is best, and the expected loss of choosing it."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_DRAWS", "prob_best_and_loss"]

DEFAULT_DRAWS = 20_000


def prob_best_and_loss(
    samples: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """From posterior draws of shape ``(draws, K)``: ``P(arm is best)`` and
    ``E[max_j theta_j - theta_arm]`` (the reward given up by choosing the arm), each (K,)."""
    best = samples.argmax(axis=1)
    p_best = np.bincount(best, minlength=samples.shape[1]) / samples.shape[0]
    loss = (samples.max(axis=1, keepdims=True) - samples).mean(axis=0)
    return p_best.astype(np.float64), np.asarray(loss, dtype=np.float64)
