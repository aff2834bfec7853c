"""Statistics an experimenter can trust (numpy + scipy.stats).

Fixed-horizon tests (:mod:`.frequentist`), power and sample size (:mod:`.power`),
always-valid sequential tests (:mod:`.sequential`), P(best) and expected loss
(:mod:`.bayes`), the sample-ratio-mismatch check (:mod:`.srm`), the posterior of an arm's
mean that every view shares (:mod:`.posterior`), and the report that combines them
(:mod:`.analysis`).
"""

from __future__ import annotations

from bandit_serve.stats.analysis import AnalysisReport, ArmReport, analyze
from bandit_serve.stats.bayes import prob_best_and_loss
from bandit_serve.stats.frequentist import TestResult, two_proportion_ztest, welch_ttest
from bandit_serve.stats.posterior import ArmPosterior, arm_posterior
from bandit_serve.stats.power import (
    power_means,
    power_proportions,
    sample_size_means,
    sample_size_proportions,
)
from bandit_serve.stats.sequential import msprt_confidence_sequence, msprt_p_value
from bandit_serve.stats.srm import SRM_THRESHOLD, srm_test

__all__ = [
    "SRM_THRESHOLD",
    "AnalysisReport",
    "ArmPosterior",
    "ArmReport",
    "TestResult",
    "analyze",
    "arm_posterior",
    "msprt_confidence_sequence",
    "msprt_p_value",
    "power_means",
    "power_proportions",
    "prob_best_and_loss",
    "sample_size_means",
    "sample_size_proportions",
    "srm_test",
    "two_proportion_ztest",
    "welch_ttest",
]
