"""Bandit policies, pure numpy, batched over a leading axis.

``POLICIES`` maps each ``kind`` to its class: the config models and the tests walk it.
"""

from __future__ import annotations

from bandit_serve.policies.base import (
    ArmStats,
    Decision,
    FrozenDistribution,
    Policy,
    sample_categorical,
)
from bandit_serve.policies.canary import Canary
from bandit_serve.policies.epsilon_greedy import EpsilonGreedy
from bandit_serve.policies.fixed import FixedWeights
from bandit_serve.policies.thompson import BetaThompson, GaussianThompson
from bandit_serve.policies.ucb import KLUCB, UCB1, kl_bernoulli, kl_ucb_index, ucb1_index

__all__ = [
    "KLUCB",
    "POLICIES",
    "UCB1",
    "ArmStats",
    "BetaThompson",
    "Canary",
    "Decision",
    "EpsilonGreedy",
    "FixedWeights",
    "FrozenDistribution",
    "GaussianThompson",
    "Policy",
    "kl_bernoulli",
    "kl_ucb_index",
    "sample_categorical",
    "ucb1_index",
]

POLICIES: dict[str, type[Policy]] = {
    cls.kind: cls
    for cls in (BetaThompson, GaussianThompson, UCB1, KLUCB, EpsilonGreedy, FixedWeights, Canary)
}
