"""The serving logic as plain asyncio classes: no Ray, no HTTP.

:class:`ExperimentRouter` routes one experiment's requests. It keeps a snapshot of the
experiment (control state and arm statistics, refreshed from the store every
``sync_interval_seconds``) and the routing distribution frozen for that snapshot: the
policy's distribution over the *active* arms while the experiment runs, all traffic to
the baseline while it is paused, all to the promoted arm once one is. A request's path::

    input contract of every arm that could be drawn (422 before anything is logged)
    -> draw an arm -> call its model (timed; a failure is the arm's error)
    -> log the decision with the call's outcome (one store call) -> answer

The safety plane runs beside it on the same store: guardrail checks every
``check_interval_seconds`` (:mod:`bandit_serve.safety`), actions by operators, and the
sweeper that settles expired decisions. :class:`BanditService` holds the routers of a
whole config and runs the background loops. The Ray Serve deployments and the HTTP API
only wire these up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bandit_serve.assignment import (
    arm_for_bucket,
    canary_arm,
    in_range,
    layer_position,
    unit_bucket,
)
from bandit_serve.config import ApiKeyConfig, AppConfig, CanaryConfig, ExperimentConfig
from bandit_serve.errors import (
    InputRejected,
    ModelError,
    StoreError,
    UnknownArmError,
    UnknownExperimentError,
)
from bandit_serve.models import InputContract
from bandit_serve.policies import ArmStats, FrozenDistribution
from bandit_serve.safety import actions, canary
from bandit_serve.safety.guardrails import Finding, evaluate, latency_summary
from bandit_serve.service import metrics
from bandit_serve.service.auth import Authenticator, Limiter
from bandit_serve.service.signing import Signer
from bandit_serve.stats import AnalysisReport, analyze, arm_posterior, histogram
from bandit_serve.stats.analysis import shadow_report
from bandit_serve.store import (
    ArmStatus,
    ArmTotals,
    AuditEvent,
    Control,
    ExperimentState,
    LoggedDecision,
    RewardOutcome,
    ShadowCall,
    Snapshot,
    Store,
    new_event_id,
)

__all__ = ["BanditService", "ExperimentRouter", "ModelCaller", "Prediction"]

log = logging.getLogger("bandit_serve")

TRAFFIC_WINDOW_SECONDS = 300.0  # traffic_share covers the last five minutes
ACT_ATTEMPTS = 20  # compare-and-set retries of one action under contention
# Mirrored requests a router keeps in flight; beyond that a request is not mirrored (a
# slow shadow model costs the shadow calls, never the served requests' memory or time).
MAX_MIRRORS_IN_FLIGHT = 64


class ModelCaller(Protocol):
    """Calls the models of the arms: ``await caller(experiment, arm, inputs)``, and tells
    each arm's input contract (None when the model declares none)."""

    def __call__(self, experiment: str, arm: str, inputs: Any) -> Awaitable[Any]: ...

    async def contracts(
        self, experiment: str, arms: Sequence[str]
    ) -> dict[str, InputContract | None]: ...


@dataclass(frozen=True)
class Prediction:
    """An answered request: ``prediction_json`` is the model's answer already encoded (so
    an answer that cannot be sent is known before the decision is logged)."""

    event_id: str | None
    arm: str
    prediction_json: str
    propensity: float | None
    in_experiment: bool = True

    @property
    def prediction(self) -> Any:
        return json.loads(self.prediction_json)


@dataclass
class _Request:
    """One request's state, shared with the task that finishes it if the client leaves."""

    gone: bool = False
    logged_gone: bool = False
    event_id: str = field(default_factory=new_event_id)
    unit: str | None = None
    assign: int = 0


def _describe_failure(err: BaseException) -> str:
    """The model's exception in a few words (for the log and the 502's detail)."""
    cause = getattr(err, "cause", None)  # Ray wraps the model's exception in RayTaskError
    shown = cause if isinstance(cause, BaseException) else err
    return f"{type(shown).__name__}: {str(shown)[:300]}"


def _agreement(served: Any, shadow: Any) -> tuple[bool, float | None]:
    """Whether two answers are equal, and their mean absolute difference when both are
    numbers (or equally long lists of numbers)."""

    def numbers(x: Any) -> list[float] | None:
        if isinstance(x, bool):
            return None
        if isinstance(x, int | float):
            return [float(x)]
        if (
            isinstance(x, list)
            and x
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in x)
        ):
            return [float(v) for v in x]
        return None

    a, b = numbers(served), numbers(shadow)
    diff = None
    if a is not None and b is not None and len(a) == len(b):
        diff = sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)
        if not math.isfinite(diff):
            diff = None
    try:
        equal = json.dumps(served, sort_keys=True) == json.dumps(shadow, sort_keys=True)
    except (TypeError, ValueError):
        equal = False
    return equal, diff


def _store_signer(store: Store) -> Callable[[], Awaitable[Signer]]:
    """Signing keys kept in the store (one random key made once for every replica)."""
    cached: list[Signer] = []

    async def get() -> Signer:
        if not cached:
            keys = await store.signing_keys(Signer.random_secret())
            cached.append(Signer(tuple((k, v.encode()) for k, v in sorted(keys.items()))))
        return cached[0]

    return get


def encode_json(value: Any) -> str:
    """Strict JSON (no NaN; non-ASCII escaped, so lone surrogates still encode)."""
    return json.dumps(value, allow_nan=False, ensure_ascii=True, separators=(",", ":"))


class ExperimentRouter:
    """Routes one experiment: decide, call the model, log; take rewards; act; describe."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        store: Store,
        caller: ModelCaller,
        *,
        seed: int | None = None,
        model_timeout: float = 30.0,
        on_events: Callable[[ExperimentConfig, list[AuditEvent]], None] | None = None,
        signer: Callable[[], Awaitable[Signer]] | None = None,
    ) -> None:
        self.store = store
        self.signer = signer if signer is not None else _store_signer(store)
        self.caller = caller
        self.model_timeout = model_timeout
        self.on_events = on_events
        self.rng = np.random.default_rng(seed)
        self._refresh_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._mirrors = 0  # mirrored requests in flight
        self.mirrors_skipped = 0  # requests not mirrored because of MAX_MIRRORS_IN_FLIGHT
        self.findings: list[Finding] = []
        self.checked_at = -math.inf
        self.configure(cfg)

    def configure(self, cfg: ExperimentConfig) -> None:
        """Take a new config of the same experiment (arms, policy, reward spec, rules)."""
        self.cfg = cfg
        self.settings = cfg.store_settings()
        self.policy = cfg.build_policy()
        self.arms = cfg.arm_names
        self.baseline = cfg.baseline_arm
        self.frozen: FrozenDistribution | None = None
        self.expected: dict[str, float] = {}  # the frozen distribution by arm name
        self.snap: Snapshot | None = None
        self.refreshed_at = -math.inf
        self.contracts: dict[str, InputContract | None] | None = None
        self.digest = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]
        self.announced: str | None = None
        self._schema: Any = None
        if cfg.input_schema is not None:
            from jsonschema import Draft202012Validator

            self._schema = Draft202012Validator(cfg.input_schema)

    # -- the snapshot ----------------------------------------------------------------

    def arm_stats(self, totals: dict[str, ArmTotals], arms: Sequence[str]) -> ArmStats:
        """Statistics of ``arms`` in that order, on the scale the policy expects."""
        zero = ArmTotals()
        t = [totals.get(a, zero) for a in arms]
        st = ArmStats.from_arrays(
            [x.rewards for x in t], [x.reward_sum for x in t], [x.reward_sq for x in t]
        )
        if self.policy.unit_interval:
            st = st.rescaled(self.settings.low, self.settings.high)
        return st

    def routing(self, snap: Snapshot) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The probability of each arm (config order) under this snapshot."""
        ctl = snap.control
        p = np.zeros(len(self.arms))
        if ctl.state is ExperimentState.PROMOTED:
            promoted = [i for i, a in enumerate(self.arms) if ctl.status(a) is ArmStatus.PROMOTED]
            p[promoted[0] if promoted else self.arms.index(self.baseline)] = 1.0
            return p
        if ctl.state is ExperimentState.PAUSED:
            p[self.arms.index(self.baseline)] = 1.0
            return p
        active = [i for i, a in enumerate(self.arms) if ctl.status(a) is ArmStatus.ACTIVE]
        if not active:
            p[self.arms.index(self.baseline)] = 1.0
            return p
        policy = self.policy.restricted(active)
        if isinstance(self.cfg.policy, CanaryConfig):  # the schedule's current weight
            names = [self.arms[i] for i in active]
            if self.cfg.policy.candidate not in names or len(names) == 1:
                p[self.arms.index(self.baseline)] = 1.0  # the candidate was rolled back
                return p
            policy = self.cfg.policy.at_weight(names, canary.weight(ctl, self.cfg.policy))
        stats = self.arm_stats(snap.totals, [self.arms[i] for i in active])
        p[active] = policy.probabilities(stats, self.rng)[0]
        return p

    def salt(self) -> str:
        """The assignment salt: the config's, or the random one kept in the store."""
        assert self.cfg.assignment is not None
        if self.cfg.assignment.salt is not None:
            return self.cfg.assignment.salt
        kept = None if self.snap is None else self.snap.control.get(actions.SALT)
        if kept is None:  # refresh writes it before the first snapshot: never here
            raise StoreError("the experiment's assignment salt is not in the store yet; retry")
        return kept

    async def refresh(self) -> None:
        """Read the experiment from the store and freeze the routing distribution."""
        if self.announced != self.digest:
            await self._announce()  # first: the snapshot then has what it wrote (the salt)
        async with self._refresh_lock:
            snap = await self.store.read(self.settings.name)
            p = self.routing(snap)
            self.snap = snap
            self.frozen = FrozenDistribution(p)
            self.expected = {a: float(x) for a, x in zip(self.arms, p, strict=True) if x > 0}
            self.refreshed_at = time.monotonic()

    async def ensure_fresh(self) -> None:
        if time.monotonic() - self.refreshed_at >= self.cfg.sync_interval_seconds:
            await self.refresh()

    async def _announce(self) -> None:
        arms = ", ".join(self.arms)
        summary = f"arms {arms}; policy {self.cfg.policy.kind}; baseline {self.baseline}"
        await self.act(lambda ctl: actions.config_changed(ctl, self.digest, summary=summary))
        if self.cfg.assignment is not None and self.cfg.assignment.salt is None:
            salt = secrets.token_hex(8)
            await self.act(lambda ctl: actions.ensure_salt(ctl, salt))
        self.announced = self.digest

    # -- requests --------------------------------------------------------------------

    async def check_inputs(self, inputs: Any) -> None:
        """Refuse inputs that an arm which could serve the request cannot take (or that
        break the experiment's input schema): the answer never depends on which arm is
        drawn. That is every arm not rolled back or retired, whatever its share now (a
        sticky unit keeps an arm the policy no longer draws), and the baseline (it serves
        units outside a layered experiment)."""
        if self._schema is not None:
            err = next(iter(self._schema.iter_errors(inputs)), None)
            if err is not None:
                where = err.json_path.replace("$", "inputs", 1)
                raise InputRejected(
                    f"{where} does not match the experiment's input_schema "
                    f"({err.validator}: {str(err.validator_value)[:80]})"
                )
        if self.contracts is None:
            self.contracts = await self.caller.contracts(self.settings.name, self.arms)
        assert self.snap is not None
        for arm in self._may_serve(self.snap.control):
            contract = self.contracts.get(arm)
            if contract is not None:
                problem = contract.problem(inputs)
                if problem is not None:
                    raise InputRejected(f"{problem} (the contract of arm {arm!r})")

    def _may_serve(self, ctl: Control) -> list[str]:
        """The arms that may answer a request: every active or promoted arm, whatever its
        share now, and the baseline. The input contracts and the guardrails cover these."""
        return [
            a
            for a in self.arms
            if a == self.baseline or ctl.status(a) in (ArmStatus.ACTIVE, ArmStatus.PROMOTED)
        ]

    def _assigned(self, unit_id: str) -> tuple[str, float] | None:
        """The arm of a unit by its bucket (fixed splits and canaries: a function of the
        bucket and the weights), or None when the policy learns (drawn as usual)."""
        if self.policy.adaptive:
            return None  # a bandit: sticky assignments need the store (not yet)
        assert self.frozen is not None
        p = self.frozen.probabilities
        try:
            b = unit_bucket(self.salt(), unit_id)
        except ValueError as err:
            raise InputRejected(f"unit_id cannot be hashed: {err}") from None
        if isinstance(self.cfg.policy, CanaryConfig):
            cand = self.arms.index(self.cfg.policy.candidate)
            base = self.arms.index(self.baseline)
            i = cand if p[cand] > 0 and canary_arm(b, float(p[cand])) else base
            if p[i] == 0:  # neither gets traffic (e.g. promoted elsewhere): the draw's arm
                i = int(np.argmax(p))
        else:
            i = arm_for_bucket(b, [float(x) for x in p])
        return self.arms[i], float(p[i])

    async def predict(self, inputs: Any, unit_id: str | None = None) -> Prediction:
        """Check the inputs, choose an arm, call its model, log the decision, answer.

        With a ``layer``, a unit outside the experiment's range (or a request without a
        ``unit_id``) is served by the baseline and is not in the experiment: nothing is
        logged. With ``assignment`` and a ``unit_id``, a fixed split or a canary places
        the unit by its bucket.

        Raises InputRejected (nothing logged), StoreError when the decision cannot be
        logged (the answer is withheld, so no reward can be posted for it) and ModelError
        when the model failed (logged as the arm's error). If the client goes away, the
        model call still finishes and is logged (outcome and latency count), with the
        decision withdrawn from the reward statistics.
        """
        await self.ensure_fresh()  # a no-op unless the snapshot is older than sync_interval
        await self.check_inputs(inputs)
        assert self.frozen is not None
        layer = self.cfg.layer
        if layer is not None and (
            unit_id is None or not in_range(layer_position(layer.name, unit_id), *layer.range)
        ):
            return await self._outside(inputs)
        signer = await self.signer()
        req = _Request()
        placed = None
        if self.cfg.assignment is not None and unit_id is not None:
            placed = self._assigned(unit_id)
            if placed is None:
                placed, req.assign = await self._sticky(unit_id)
            else:
                req.assign = 1
            req.unit = unit_id
        if placed is not None:
            arm, propensity = placed
        else:
            d = self.frozen.sample(self.rng, 1)
            arm, propensity = self.arms[int(d.arms[0])], float(d.propensities[0])
        task = asyncio.ensure_future(
            self._serve(req, arm, propensity, inputs, self.expected, signer)
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            req.gone = True
            self._background.add(task)
            task.add_done_callback(lambda t: self._after_gone(req, t))
            raise

    async def _sticky(self, unit_id: str) -> tuple[tuple[str, float] | None, int]:
        """A bandit's unit keeps its first arm (and that decision's propensity) for
        ``sticky_seconds``; rollback and promote override it. Returns the placement (None:
        draw) and how the decision writes the assignment (1: new, 2: reassign)."""
        assert self.snap is not None
        ctl = self.snap.control
        kept = (await self.store.assignments(self.settings, [unit_id])).get(unit_id)
        if ctl.state is not ExperimentState.RUNNING:
            return None, 0  # paused or promoted: the routing decides; assignments stay
        if kept is None:
            return None, 1
        arm, propensity = kept
        if arm in self.arms and ctl.status(arm) is ArmStatus.ACTIVE:
            return (arm, propensity), 0
        return None, 2  # its arm was rolled back (or is gone): a new draw, kept from now

    async def _outside(self, inputs: Any) -> Prediction:
        """A unit outside the experiment: the baseline answers, nothing is logged."""
        try:
            output = await asyncio.wait_for(
                self.caller(self.settings.name, self.baseline, inputs), self.model_timeout
            )
        except TimeoutError:
            raise ModelError(self.settings.name, self.baseline, "timed out") from None
        except Exception as err:
            raise ModelError(self.settings.name, self.baseline, _describe_failure(err)) from err
        try:
            body = encode_json(output)
        except (ValueError, TypeError, RecursionError) as err:
            reason = f"its answer cannot be sent as JSON ({type(err).__name__})"
            raise ModelError(self.settings.name, self.baseline, reason) from None
        return Prediction(None, self.baseline, body, None, in_experiment=False)

    async def _serve(
        self,
        req: _Request,
        arm: str,
        propensity: float,
        inputs: Any,
        expected: dict[str, float],
        signer: Signer,
    ) -> Prediction:
        started = time.perf_counter()
        failure: str | None = None
        refused: str | None = None
        body = ""
        try:
            output = await asyncio.wait_for(
                self.caller(self.settings.name, arm, inputs), self.model_timeout
            )
        except TimeoutError:
            failure = "timed out"
        except Exception as err:
            cause = getattr(err, "cause", None)  # Ray wraps the model's exception
            if isinstance(err, InputRejected) or isinstance(cause, InputRejected):
                refused = str(cause if isinstance(cause, InputRejected) else err)[:300]
            else:  # the model's own exception: the arm's error
                failure = _describe_failure(err)
        else:
            try:
                body = encode_json(output)
            except (ValueError, TypeError, RecursionError) as err:
                failure = f"its answer cannot be sent as JSON ({type(err).__name__})"
        seconds = time.perf_counter() - started
        req.logged_gone = req.gone
        decision = LoggedDecision(
            req.event_id,
            arm,
            propensity,
            failed=failure is not None,
            client_gone=req.gone,
            latency_bin=histogram.bin_index(seconds),
            rejected=refused is not None,
            unit=req.unit,
            assign=req.assign,
            unit_expected=expected if req.assign else None,
        )
        try:
            await self.store.log_decisions(self.settings, [decision], expected)
        except StoreError as err:
            # It may have been written all the same (a timeout after sending): no client
            # will hold its id, so withdraw it once the store answers again.
            self._spawn(self._withdraw_later(req.event_id))
            raise StoreError(str(err), maybe_written=True) from err
        if refused is not None:  # the client's fault: 422, and not the arm's error
            raise InputRejected(f"the model of arm {arm!r} refused the inputs: {refused}")
        if failure is not None:
            raise ModelError(self.settings.name, arm, failure)
        if self.cfg.shadow is not None and self.rng.random() < self.cfg.shadow.rate:
            if self._mirrors < MAX_MIRRORS_IN_FLIGHT:
                self._mirrors += 1
                self._spawn(self._mirror(inputs, output))  # off the answer's path
            else:
                self.mirrors_skipped += 1
        token = signer.sign(self.settings.name, req.event_id)
        return Prediction(token, arm, body, propensity)

    @property
    def mirrors_in_flight(self) -> int:
        """Mirrored requests this router has not finished (at most MAX_MIRRORS_IN_FLIGHT)."""
        return self._mirrors

    async def _mirror(self, inputs: Any, served: Any) -> None:
        """Send a copy of a request to every shadow arm; count their calls, errors,
        latency and agreement with the served answer. Never raises."""
        shadow = self.cfg.shadow
        assert shadow is not None

        async def one(name: str) -> ShadowCall:
            started = time.perf_counter()
            try:
                out = await asyncio.wait_for(
                    self.caller(self.settings.name, name, inputs), self.model_timeout
                )
            except Exception:
                return ShadowCall(name, True, histogram.bin_index(time.perf_counter() - started))
            seconds = time.perf_counter() - started
            equal, diff = _agreement(served, out)
            return ShadowCall(name, False, histogram.bin_index(seconds), equal, diff)

        try:
            calls = await asyncio.gather(*(one(a.name) for a in shadow.arms))
            await self.store.log_shadow(self.settings, calls)
        except Exception as err:  # a shadow must never disturb serving
            log.warning("shadow calls of %s not counted: %s", self.settings.name, err)
        finally:
            self._mirrors -= 1

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _after_gone(self, req: _Request, task: asyncio.Task[Prediction]) -> None:
        """The client left while its decision was being logged as pending: withdraw it."""
        self._background.discard(task)
        if task.cancelled() or task.exception() is not None or req.logged_gone:
            return
        self._spawn(self._withdraw_later(req.event_id, delays=(0.0, 1.0, 5.0, 30.0)))

    async def _withdraw_later(
        self, event_id: str, delays: Sequence[float] = (1.0, 5.0, 30.0, 120.0)
    ) -> None:
        """Withdraw a decision no client holds an id for, retrying while the store fails."""
        for delay in delays:
            await asyncio.sleep(delay)
            try:
                await self.store.withdraw_decisions(self.settings, [event_id])
                return
            except StoreError:
                continue
        log.warning("could not withdraw decision %s of %s", event_id, self.settings.name)

    async def post_rewards(self, items: Sequence[tuple[str, float]]) -> list[RewardOutcome]:
        """Verify each event id's signature (a forged or foreign id is ``unknown`` before
        the store is touched), then apply the rest exactly once."""
        signer = await self.signer()
        ids = [signer.verify(self.settings.name, e) for e, _ in items]
        forged = sum(1 for i in ids if i is None)
        if forged:
            metrics.forged_rewards.labels(self.settings.name).inc(forged)
        valid = [(i, r) for i, (_, r) in zip(ids, items, strict=True) if i is not None]
        try:
            applied = await self.store.apply_rewards(self.settings, valid) if valid else []
        except StoreError as err:  # may have been applied: a retry answers duplicate
            raise StoreError(str(err), maybe_written=True) from err
        it = iter(applied)
        return [RewardOutcome.UNKNOWN if i is None else next(it) for i in ids]

    async def settle(self) -> int:
        report = await self.store.settle_expired(self.settings)
        return report.defaulted + report.dropped

    # -- the safety plane ------------------------------------------------------------

    async def act(self, decide: Callable[[Control], actions.Transition]) -> bool:
        """Apply an action exactly once: read the control state, decide, compare-and-set;
        on a concurrent change, read and decide again. Returns whether it changed
        anything (ActionRefused and UnknownArmError propagate)."""
        for _ in range(ACT_ATTEMPTS):
            snap = await self.store.read(self.settings.name)
            t = decide(snap.control)
            if not t.changed:
                return False
            try:
                stored = await self.store.transition(
                    self.settings,
                    snap.control.version,
                    t.control,
                    t.events,
                    mark_restore=t.mark_restore,
                    new_epoch=t.new_epoch,
                )
            except StoreError as err:  # the write may have landed (a timeout after sending)
                raise StoreError(str(err), maybe_written=True) from err
            if stored is not None:
                self.refreshed_at = -math.inf  # obey at once in this replica
                if stored and self.on_events is not None:
                    self.on_events(self.cfg, stored)
                return True
        raise StoreError(f"the control state of {self.settings.name!r} kept changing; retry")

    def _arm(self, arm: str) -> str:
        if arm not in self.arms:
            raise UnknownArmError(f"no arm named {arm!r}; arms: {', '.join(self.arms)}")
        return arm

    async def rollback(self, arm: str, actor: str, reason: str = "") -> bool:
        return await self.act(
            lambda c: actions.rollback(
                c, arm, arms=self.arms, baseline=self.baseline, actor=actor, reason=reason
            )
        )

    async def restore(self, arm: str, actor: str, reason: str = "") -> bool:
        return await self.act(
            lambda c: actions.restore(c, arm, arms=self.arms, actor=actor, reason=reason)
        )

    async def promote(self, arm: str, actor: str, reason: str = "") -> bool:
        return await self.act(
            lambda c: actions.promote(c, arm, arms=self.arms, actor=actor, reason=reason)
        )

    async def pause(self, actor: str, reason: str = "") -> bool:
        return await self.act(lambda c: actions.pause(c, actor=actor, reason=reason))

    async def resume(self, actor: str, reason: str = "") -> bool:
        return await self.act(lambda c: actions.resume(c, actor=actor, reason=reason))

    async def reset(self, actor: str, reason: str = "") -> bool:
        token = secrets.token_hex(8)  # one request: retries of it reset once
        return await self.act(lambda c: actions.reset(c, actor=actor, reason=reason, token=token))

    async def check_guardrails(self) -> list[Finding]:
        """Evaluate every rule; roll back (or alert about) each violating arm, once."""
        g = self.cfg.guardrails
        if g is None:
            return []
        snap = await self.store.read(self.settings.name)
        ctl = snap.control
        findings = evaluate(self.cfg, snap, self._may_serve(ctl))
        self.findings = findings
        self.checked_at = time.time()
        for f in findings:
            if f.violated:
                rollback = g.on_violation == "rollback" and f.arm != self.baseline
                await self.act(_on_violation(self, f, rollback))
        if isinstance(self.cfg.policy, CanaryConfig):
            await self._schedule(self.cfg.policy, snap, findings)
        return findings

    async def _schedule(self, c: CanaryConfig, snap: Snapshot, findings: list[Finding]) -> None:
        """Start the canary, or move it a step (once across replicas)."""
        calls = snap.totals.get(c.candidate, ArmTotals()).calls
        violated = any(f.violated and f.arm == c.candidate for f in findings)
        # "no violation" means something only once the rules can judge: both arms need
        # the guardrails' min_calls (since the candidate's last restore) before a step
        g = self.cfg.guardrails
        assert g is not None  # a canary's config requires guardrails
        judged = all(
            snap.since_restore(c.candidate, a).calls >= g.min_calls
            for a in (c.candidate, self.baseline)
        )
        violated = violated or not judged
        now = time.time()
        await self.act(lambda ctl: canary.start(ctl, c, now, calls, baseline=self.baseline))
        await self.act(
            lambda ctl: canary.advance(
                ctl, c, arms=self.arms, now=now, candidate_calls=calls, violated=violated
            )
        )

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

    async def timeseries(self, window: float = 3600.0) -> dict[str, Any]:
        """Per time bucket of the last ``window`` seconds and per arm: what happened in the
        bucket (pulls, traffic share, calls, errors, latency quantiles, rewards) and the
        posterior of the mean as it stood at the bucket's end (cumulative)."""
        snap = await self.store.read(self.settings.name)
        now = self.store.clock()
        buckets = await self.store.buckets(self.settings, now - window, now)
        low, high = self.settings.low, self.settings.high
        running = {a: snap.totals.get(a, ArmTotals()) for a in self.arms}
        rows: list[dict[str, Any]] = []
        for b in reversed(buckets):  # newest first: totals at a bucket's end, by subtraction
            pulls = sum(b.arms.get(a, ArmTotals()).pulls for a in self.arms)
            arms = {}
            for a in self.arms:
                t = b.arms.get(a, ArmTotals())
                arms[a] = {
                    "pulls": t.pulls,
                    "share": t.pulls / pulls if pulls else None,
                    "calls": t.calls,
                    "errors": t.errors,
                    "error_rate": t.error_rate,
                    "latency": latency_summary(t),
                    "rewards": t.rewards,
                    "reward_sum": t.reward_sum,
                    "posterior": arm_posterior(
                        self.cfg.reward.kind, low, high, running[a]
                    ).summary(),
                }
                running[a] = running[a].minus(t)
            rows.append({"start": b.start, "arms": arms})
        rows.reverse()
        return {
            "name": self.settings.name,
            "bucket_seconds": self.settings.bucket_seconds,
            "window_seconds": window,
            "arms": self.arms,
            "buckets": rows,
        }

    async def analysis(
        self, baseline: str | None = None, alpha: float = 0.05, tau: float | None = None
    ) -> AnalysisReport:
        """The statistical report (:func:`bandit_serve.stats.analyze`) on fresh totals."""
        totals = await self.store.snapshot(self.settings.name)
        return analyze(self.cfg, totals, baseline=baseline or self.baseline, alpha=alpha, tau=tau)

    async def events(self, since: str | None = None, limit: int = 100) -> list[AuditEvent]:
        return await self.store.events(self.settings.name, since, limit)

    async def describe(self, snap: Snapshot | None = None) -> dict[str, Any]:
        """The experiment as ``GET /v1/experiments/{name}`` shows it, read from the store
        (or from ``snap``, read just before)."""
        if snap is None:
            snap = await self.store.read(self.settings.name)
        share = await self.traffic_share()
        ctl = snap.control
        low, high = self.settings.low, self.settings.high
        arms = []
        for name in self.arms:
            t = snap.totals.get(name, ArmTotals())
            arms.append(
                {
                    "name": name,
                    "status": ctl.status(name).value,
                    **t.public(),
                    "latency": latency_summary(t),
                    "traffic_share": share[name],
                    "posterior": arm_posterior(self.cfg.reward.kind, low, high, t).summary(),
                }
            )
        return {
            "name": self.settings.name,
            "state": ctl.state.value,
            "epoch": ctl.epoch,
            "baseline": self.baseline,
            "policy": self.cfg.policy.model_dump(),
            "reward": self.cfg.reward.model_dump(),
            "traffic_window_seconds": TRAFFIC_WINDOW_SECONDS,
            "arms": arms,
            "canary": None
            if not isinstance(self.cfg.policy, CanaryConfig)
            else canary.view(
                ctl, self.cfg.policy, snap.totals.get(self.cfg.policy.candidate, ArmTotals()).calls
            ).public(),
            "assignment": None
            if self.cfg.assignment is None
            else {
                "by": self.cfg.assignment.by,
                "salt": self.cfg.assignment.salt or ctl.get(actions.SALT),
                "sticky_seconds": self.cfg.assignment.sticky_seconds,
            },
            "layer": None
            if self.cfg.layer is None
            else {"name": self.cfg.layer.name, "range": list(self.cfg.layer.range)},
            "shadow": None
            if self.cfg.shadow is None
            else [
                {
                    "name": a.name,
                    "calls": t.calls,
                    "errors": t.errors,
                    "latency": latency_summary(t),
                    "agreement": {
                        "compared": t.shadow_compared,
                        "equal_share": report.agreement,
                        "mean_abs_diff": report.mean_abs_diff,
                    },
                }
                for a in self.cfg.shadow.arms
                for t in [snap.totals.get(f"shadow/{a.name}", ArmTotals())]
                for report in [shadow_report(a.name, t)]
            ],
            "guardrails": None
            if self.cfg.guardrails is None
            else {
                "on_violation": self.cfg.guardrails.on_violation,
                "checked_at": self.checked_at if math.isfinite(self.checked_at) else None,
                "results": [f.public() for f in self.findings],
                "violations": [
                    {"arm": arm, "rule": rule, "count": n}
                    for (arm, rule), n in sorted(actions.violation_count(ctl).items())
                ],
            },
        }


def _on_violation(
    router: ExperimentRouter, f: Finding, rollback: bool
) -> Callable[[Control], actions.Transition]:
    """The action for a violated rule: roll the arm back (when it still gets traffic),
    or alert once."""

    def decide(ctl: Control) -> actions.Transition:
        if not rollback:
            return actions.alert(
                ctl, f.arm, f.rule.id, actor="guardrail", reason=f.reason, details=f.public()
            )
        if ctl.status(f.arm) not in (ArmStatus.ACTIVE, ArmStatus.PROMOTED):
            return actions.Transition(ctl, changed=False)
        return actions.rollback(
            ctl,
            f.arm,
            arms=router.arms,
            baseline=router.baseline,
            actor="guardrail",
            reason=f.reason,
            rule=f.rule.id,
            details=f.public(),
        )

    return decide


class BanditService:
    """All experiments of a config, over one store; background refresh, settling and
    guardrail checks."""

    def __init__(
        self,
        cfg: AppConfig,
        store: Store,
        caller: ModelCaller,
        *,
        seed: int | None = None,
        model_timeout: float = 30.0,
        settle_every: float = 1.0,
    ) -> None:
        self.store = store
        self.caller = caller
        self.seed = seed
        self.model_timeout = model_timeout
        self.settle_every = settle_every
        self.routers: dict[str, ExperimentRouter] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._store_signer = _store_signer(store)
        self._env_signer: Signer | None = None
        self.authenticator: Authenticator | None = None
        self.rate_limiter: Limiter | None = self._take_token
        from bandit_serve.safety.notify import Notifier

        self.notifier = Notifier()
        self.reconfigure(cfg)

    def reconfigure(self, cfg: AppConfig) -> None:
        """Apply a new config: new experiments start, removed ones stop, changed ones take
        their new arms and policy. Statistics and arm statuses live in the store, so a
        reload never undoes an action; a new arm starts from the prior."""
        self.cfg = cfg
        self.authenticator = None if cfg.auth is None else Authenticator(cfg.auth)
        env = None if cfg.auth is None else cfg.auth.signing_keys_env
        self._env_signer = None if env is None else Signer.from_env(env)
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
                    on_events=self.notifier.send,
                    signer=self._signer,
                )
            elif r.cfg != exp:
                r.configure(exp)
            routers[exp.name] = r
        self.routers = routers

    async def _signer(self) -> Signer:
        """The event-id signer: keys from the environment (``auth.signing_keys_env``), or
        one key made once and kept in the store for every replica."""
        if self._env_signer is not None:
            return self._env_signer
        return await self._store_signer()

    async def _take_token(self, key: ApiKeyConfig) -> float | None:
        """A key's quota, shared by every replica (a token bucket in the store)."""
        assert key.rate_per_second is not None
        burst = key.burst or max(1, math.ceil(key.rate_per_second))
        return await self.store.take_token(f"key:{key.name}", key.rate_per_second, burst)

    def router(self, name: str) -> ExperimentRouter:
        try:
            return self.routers[name]
        except KeyError:
            raise UnknownExperimentError(f"no experiment named {name!r}") from None

    # -- background work -------------------------------------------------------------

    def start(self) -> None:
        """Start refreshing, settling and guardrail checks (needs a running loop)."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._refresh_loop()),
                loop.create_task(self._settle_loop()),
                loop.create_task(self._guardrail_loop()),
            ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.notifier.close()

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

    async def _guardrail_loop(self) -> None:
        while True:
            now = time.time()
            intervals = []
            for r in list(self.routers.values()):
                g = r.cfg.guardrails
                if g is None:
                    continue
                intervals.append(g.check_interval_seconds)
                if now - r.checked_at < g.check_interval_seconds:
                    continue
                try:
                    await r.check_guardrails()
                except StoreError as err:
                    log.warning("guardrail check of %s failed: %s", r.settings.name, err)
                except Exception:  # a bug must not stop the checks of other experiments
                    log.exception("guardrail check of %s failed", r.settings.name)
            await asyncio.sleep(max(0.05, min(intervals, default=1.0) / 4))
