"""Always-valid inference: the mixture sequential probability ratio test (mSPRT).

For an effect estimate ``theta_hat`` with variance ``V`` (approximately normal), the
mixture likelihood ratio against ``theta = 0`` with a ``N(0, tau^2)`` mixing distribution
is (Johari, Koomen, Pekelis & Walsh, "Always valid inference", 2017)::

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 theta_hat^2 / (2 V (V + tau^2)))

``Lambda`` is a nonnegative martingale under the null, so by Ville's inequality
``P(Lambda ever exceeds 1/alpha) <= alpha``: the p-value ``min(1, 1/Lambda)`` stays valid
however often one looks and whenever one stops. Inverting the test gives the confidence
sequence ``theta_hat +- sqrt(V (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V)))``.

Tuning: ``tau`` is the scale of the effects one expects, in reward units. The test is
valid for any ``tau``; it is most powerful for effects near ``tau`` and loses power for
effects much smaller or larger. The plug-in variance makes validity approximate for
small samples (as for the z-test itself).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["msprt_confidence_sequence", "msprt_p_value"]

FloatArray = NDArray[np.float64]


def msprt_p_value(effect: ArrayLike, variance: ArrayLike, tau: float) -> FloatArray:
    """Always-valid p-value of ``effect = 0`` at the current look."""
    th, v = np.asarray(effect, dtype=np.float64), np.asarray(variance, dtype=np.float64)
    t2 = tau * tau
    log_lambda = 0.5 * np.log(v / (v + t2)) + t2 * th * th / (2 * v * (v + t2))
    return np.asarray(np.minimum(1.0, np.exp(-log_lambda)), dtype=np.float64)


def msprt_confidence_sequence(
    effect: ArrayLike, variance: ArrayLike, tau: float, alpha: float = 0.05
) -> tuple[FloatArray, FloatArray]:
    """A ``1 - alpha`` confidence sequence for the effect (valid at every look)."""
    th, v = np.asarray(effect, dtype=np.float64), np.asarray(variance, dtype=np.float64)
    t2 = tau * tau
    half = np.sqrt(v * (v + t2) / t2 * (2 * np.log(1 / alpha) + np.log((v + t2) / v)))
    return th - half, th + half
