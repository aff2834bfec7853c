"""The serving logic as plain asyncio classes: no Ray, no HTTP.

:class:`ExperimentRouter` routes one experiment's requests: it keeps a snapshot of the
arm statistics (refreshed from the store every ``sync_interval_seconds``), the policy's
selection distribution frozen for that snapshot, and sends every decision and every
reward to the store. :class:`BanditService` holds the routers of a whole config and
applies config changes. The Ray Serve deployments and the HTTP API only wire these up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bandit_serve.config import AppConfig, ExperimentConfig
from bandit_serve.errors import ModelError, StoreError, UnknownExperimentError
from bandit_serve.policies import ArmStats, FrozenDistribution
from bandit_serve.stats import AnalysisReport, analyze, arm_posterior
from bandit_serve.store import ArmTotals, DecisionRecord, RewardOutcome, Store

__all__ = ["BanditService", "ExperimentRouter", "ModelCaller", "Prediction"]

log = logging.getLogger("bandit_serve")

TRAFFIC_WINDOW_SECONDS = 300.0  # traffic_share covers the last five minutes


class ModelCaller(Protocol):
    """Calls the model of one arm: ``await caller(experiment, arm, inputs)``."""

    def __call__(self, experiment: str, arm: str, inputs: Any) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class Prediction:
    event_id: str
    arm: str
    prediction: Any
    propensity: float


Observer = Callable[[str, str, float, bool], None]  # experiment, arm, model seconds, failed


class ExperimentRouter:
    """Routes one experiment: decide, log, call the model; take rewards; describe."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        store: Store,
        caller: ModelCaller,
        *,
        seed: int | None = None,
        model_timeout: float = 30.0,
        observe: Observer | None = None,
    ) -> None:
        self.store = store
        self.caller = caller
        self.model_timeout = model_timeout
        self.observe = observe
        self.rng = np.random.default_rng(seed)
        self._refresh_lock = asyncio.Lock()
        self.configure(cfg)

    def configure(self, cfg: ExperimentConfig) -> None:
        """Take a new config of the same experiment (arms, policy, reward spec)."""
        self.cfg = cfg
        self.settings = cfg.store_settings()
        self.policy = cfg.build_policy()
        self.arms = cfg.arm_names
        self.frozen: FrozenDistribution | None = None
        self.expected: dict[str, float] = {}  # the frozen distribution by arm name
        self.refreshed_at = -math.inf

    # -- the snapshot ----------------------------------------------------------------

    def arm_stats(self, totals: dict[str, ArmTotals]) -> ArmStats:
        """Statistics in arm order, on the scale the policy expects."""
        zero = ArmTotals()
        t = [totals.get(a, zero) for a in self.arms]
        st = ArmStats.from_arrays(
            [x.rewards for x in t], [x.reward_sum for x in t], [x.reward_sq for x in t]
        )
        if self.policy.unit_interval:
            st = st.rescaled(self.settings.low, self.settings.high)
        return st

    async def refresh(self) -> None:
        """Read the arm statistics from the store and freeze the policy's distribution."""
        async with self._refresh_lock:
            totals = await self.store.snapshot(self.settings.name)
            self.frozen = self.policy.freeze(self.arm_stats(totals), self.rng)
            self.expected = dict(zip(self.arms, self.frozen.probabilities.tolist(), strict=True))
            self.refreshed_at = time.monotonic()

    async def ensure_fresh(self) -> None:
        if time.monotonic() - self.refreshed_at >= self.cfg.sync_interval_seconds:
            await self.refresh()

    # -- requests --------------------------------------------------------------------

    async def predict(self, inputs: Any) -> Prediction:
        """Choose an arm, log the decision and call its model (both at once).

        Raises StoreError when the decision cannot be logged (nothing is returned, so no
        reward can be posted for it) and ModelError when the model fails (the logged
        decision is withdrawn: it counts as an error of the arm and waits for nothing).
        """
        await self.ensure_fresh()  # a no-op unless the snapshot is older than sync_interval
        assert self.frozen is not None
        d = self.frozen.sample(self.rng, 1)
        arm, propensity = self.arms[int(d.arms[0])], float(d.propensities[0])
        started = time.perf_counter()
        record: DecisionRecord | BaseException
        output: Any
        record, output = await asyncio.gather(
            self.store.record_decision(self.settings, arm, propensity, self.expected),
            asyncio.wait_for(self.caller(self.settings.name, arm, inputs), self.model_timeout),
            return_exceptions=True,
        )
        model_failed = isinstance(output, BaseException)
        if self.observe is not None:
            self.observe(self.settings.name, arm, time.perf_counter() - started, model_failed)
        if isinstance(record, BaseException):
            raise record
        if isinstance(output, BaseException):
            if isinstance(output, asyncio.CancelledError):
                raise output
            await self.store.cancel_decisions(self.settings, [record.event_id])
            reason = "timed out" if isinstance(output, TimeoutError) else repr(output)
            raise ModelError(self.settings.name, arm, reason) from output
        return Prediction(record.event_id, arm, output, propensity)

    async def post_rewards(self, items: Sequence[tuple[str, float]]) -> list[RewardOutcome]:
        return await self.store.apply_rewards(self.settings, items)

    async def settle(self) -> int:
        report = await self.store.settle_expired(self.settings)
        return report.defaulted + report.dropped

    # -- reading ---------------------------------------------------------------------

    async def traffic_share(self, window: float = TRAFFIC_WINDOW_SECONDS) -> dict[str, float]:
        now = self.store.clock()
        buckets = await self.store.buckets(self.settings, now - window, now)
        pulls = {a: 0 for a in self.arms}
        for b in buckets:
            for arm, t in b.arms.items():
                if arm in pulls:
                    pulls[arm] += t.pulls
        total = sum(pulls.values())
        return {a: (p / total if total else 0.0) for a, p in pulls.items()}

    async def analysis(
        self, baseline: str | None = None, alpha: float = 0.05, tau: float | None = None
    ) -> AnalysisReport:
        """The statistical report (:func:`bandit_serve.stats.analyze`) on fresh totals."""
        totals = await self.store.snapshot(self.settings.name)
        return analyze(self.cfg, totals, baseline=baseline, alpha=alpha, tau=tau)

    async def describe(self) -> dict[str, Any]:
        """The experiment as ``GET /v1/experiments/{name}`` shows it, read from the store."""
        totals = await self.store.snapshot(self.settings.name)
        share = await self.traffic_share()
        low, high = self.settings.low, self.settings.high
        arms = []
        for name in self.arms:
            t = totals.get(name, ArmTotals())
            arms.append(
                {
                    "name": name,
                    **t.public(),
                    "traffic_share": share[name],
                    "posterior": arm_posterior(self.cfg.reward.kind, low, high, t).summary(),
                }
            )
        return {
            "name": self.settings.name,
            "policy": self.cfg.policy.model_dump(),
            "reward": self.cfg.reward.model_dump(),
            "traffic_window_seconds": TRAFFIC_WINDOW_SECONDS,
            "arms": arms,
        }


class BanditService:
    """All experiments of a config, over one store; background refresh and settling."""

    def __init__(
        self,
        cfg: AppConfig,
        store: Store,
        caller: ModelCaller,
        *,
        seed: int | None = None,
        model_timeout: float = 30.0,
        settle_every: float = 1.0,
        observe: Observer | None = None,
    ) -> None:
        self.store = store
        self.caller = caller
        self.seed = seed
        self.model_timeout = model_timeout
        self.settle_every = settle_every
        self.observe = observe
        self.routers: dict[str, ExperimentRouter] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.reconfigure(cfg)

    def reconfigure(self, cfg: AppConfig) -> None:
        """Apply a new config: new experiments start, removed ones stop, changed ones take
        their new arms and policy. Statistics live in the store, so arms that stay keep
        theirs and a new arm starts from the prior."""
        self.cfg = cfg
        routers = {}
        for i, exp in enumerate(cfg.experiments):
            r = self.routers.get(exp.name)
            if r is None:
                seed = None if self.seed is None else self.seed + i
                r = ExperimentRouter(
                    exp,
                    self.store,
                    self.caller,
                    seed=seed,
                    model_timeout=self.model_timeout,
                    observe=self.observe,
                )
            elif r.cfg != exp:
                r.configure(exp)
            routers[exp.name] = r
        self.routers = routers

    def router(self, name: str) -> ExperimentRouter:
        try:
            return self.routers[name]
        except KeyError:
            raise UnknownExperimentError(f"no experiment named {name!r}") from None

    # -- background work -------------------------------------------------------------

    def start(self) -> None:
        """Start refreshing snapshots and settling expired decisions (needs a running loop)."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._refresh_loop()),
                loop.create_task(self._settle_loop()),
            ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _refresh_loop(self) -> None:
        while True:
            for r in list(self.routers.values()):
                try:
                    await r.ensure_fresh()
                except StoreError as err:
                    log.warning("snapshot refresh of %s failed: %s", r.settings.name, err)
            interval = min(
                (r.cfg.sync_interval_seconds for r in self.routers.values()), default=1.0
            )
            await asyncio.sleep(max(0.05, interval / 2))

    async def _settle_loop(self) -> None:
        while True:
            for r in list(self.routers.values()):
                try:
                    await r.settle()
                except StoreError as err:
                    log.warning("settling %s failed: %s", r.settings.name, err)
            await asyncio.sleep(self.settle_every)
