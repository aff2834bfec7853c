"""The posterior of an arm's mean reward: one prior, used by every view of an arm.

The experiment view (``GET /v1/experiments/{name}``), the metrics, the analysis (P(best),
expected loss) and the dashboard all read an arm's posterior from :func:`arm_posterior`,
so they never disagree about the same arm. The prior is fixed and documented, not taken
from the routing policy (a policy's prior is a tuning knob for exploration, not a belief
an experimenter should read results under):

- ``bernoulli`` and ``bounded`` rewards: rewards rescaled from ``[low, high]`` onto
  [0, 1]; a uniform Beta(1, 1) prior on the rescaled mean, updated as Beta-Bernoulli
  (a reward ``r`` adds ``r`` to alpha and ``1 - r`` to beta; exact for 0/1 rewards).
- ``gaussian`` rewards: a Normal-Inverse-Gamma(mu 0, kappa 1, alpha 1, beta 1) prior
  (the defaults of :class:`~bandit_serve.policies.GaussianThompson`); the posterior of
  the mean is a Student t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats as sps

from bandit_serve.policies import ArmStats, BetaThompson, GaussianThompson
from bandit_serve.store import ArmTotals

__all__ = ["ArmPosterior", "arm_posterior"]

_BETA_PRIOR = BetaThompson(alpha=1.0, beta=1.0)
_NIG_PRIOR = GaussianThompson()


@dataclass(frozen=True)
class ArmPosterior:
    """Posterior of one arm's mean reward, on the reward's own scale:
    ``offset + scale * X`` with X ~ Beta(a, b) (``family`` beta) or Student t(df) (``t``)."""

    family: Literal["beta", "t"]
    offset: float
    scale: float
    a: float = 0.0
    b: float = 0.0
    df: float = 0.0

    @property
    def mean(self) -> float:
        if self.family == "beta":
            return self.offset + self.scale * self.a / (self.a + self.b)
        return self.offset

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Central credible interval."""
        if self.family == "beta":
            lo, hi = sps.beta.interval(level, self.a, self.b)
        else:
            lo, hi = sps.t.interval(level, self.df)
        return self.offset + self.scale * float(lo), self.offset + self.scale * float(hi)

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        """``n`` draws of the mean."""
        x = rng.beta(self.a, self.b, n) if self.family == "beta" else rng.standard_t(self.df, n)
        return np.asarray(self.offset + self.scale * x, dtype=np.float64)

    def summary(self, level: float = 0.95) -> dict[str, float]:
        """``{mean, low, high}`` as the experiment view shows it."""
        lo, hi = self.interval(level)
        return {"mean": self.mean, "low": lo, "high": hi}


def arm_posterior(reward_kind: str, low: float, high: float, totals: ArmTotals) -> ArmPosterior:
    """The posterior of an arm's mean from its applied rewards (see the module doc)."""
    st = ArmStats.from_arrays([[totals.rewards]], [[totals.reward_sum]], [[totals.reward_sq]])
    if reward_kind == "gaussian":
        df, loc, scale = (float(v[0, 0]) for v in _NIG_PRIOR.posterior(st))
        return ArmPosterior("t", offset=loc, scale=scale, df=df)
    a, b = (float(v[0, 0]) for v in _BETA_PRIOR.posterior(st.rescaled(low, high)))
    return ArmPosterior("beta", offset=low, scale=high - low, a=a, b=b)
