"""The canary schedule: steps of the candidate's share, advanced by the safety plane.

A step advances when the candidate has had ``min_calls`` calls and ``min_seconds`` of
running time (paused time excluded) in it and no guardrail is violated — which the
router only grants once the candidate and the baseline both have the guardrails'
``min_calls`` (before that, no rule could have fired, so "no violation" means nothing);
a violation
rolls the candidate back (the guardrails do that); after the last step ``promote: auto``
promotes the candidate, ``manual`` waits for ``POST .../promote``. Every change is a
transition of the control state (:mod:`bandit_serve.safety.actions`), so it happens once
across replicas and writes an event (``step``, ``awaiting_promotion``, ``promote``).

Control fields: ``canary:candidate`` (whose schedule this is), ``canary:step`` (1-based;
absent before the start), ``canary:since`` (when the step began), ``canary:calls`` (the
candidate's calls then), ``canary:paused`` (seconds paused in this step), ``canary:done``
(the last step passed).

The fields belong to one candidate. A config change that names another candidate (a
shadow arm made the candidate, replacing the previous one) starts a new schedule at step
1: until the safety plane has started it, the new candidate gets the first step's weight,
never the old candidate's step; and an experiment whose previous canary was promoted is
running again (its promoted arm being, by then, the baseline) so that the new one can
start. A ``reset`` restarts the current step's count (:func:`.actions.reset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bandit_serve.config import CanaryConfig
from bandit_serve.safety import actions
from bandit_serve.safety.actions import Transition
from bandit_serve.store import ArmStatus, AuditEvent, Control, ExperimentState

__all__ = ["CanaryView", "advance", "start", "view", "weight"]

CANDIDATE, STEP, SINCE, CALLS, PAUSED, DONE = (
    "canary:candidate",
    "canary:step",
    "canary:since",
    "canary:calls",
    "canary:paused",
    "canary:done",
)
FIELDS = (CANDIDATE, STEP, SINCE, CALLS, PAUSED, DONE)


def _mine(ctl: Control, cfg: CanaryConfig) -> bool:
    """Whether the schedule's fields are ``cfg.candidate``'s (fields written before the
    candidate was recorded are the current candidate's)."""
    return ctl.get(CANDIDATE) in (None, cfg.candidate)


def _step(ctl: Control, cfg: CanaryConfig) -> int:
    return int(ctl.get(STEP) or "0") if _mine(ctl, cfg) else 0


def weight(ctl: Control, cfg: CanaryConfig) -> float:
    """The candidate's share now (the first step's before the schedule starts)."""
    step = max(1, _step(ctl, cfg))
    return cfg.steps[min(step, len(cfg.steps)) - 1].weight


def _paused(ctl: Control, now: float) -> float:
    """Seconds paused in the current step, the ongoing pause included."""
    total = float(ctl.get(PAUSED) or "0")
    paused_at = ctl.get(actions.PAUSED_AT)
    if paused_at is not None:
        total += max(0.0, now - max(float(paused_at), float(ctl.get(SINCE) or "0")))
    return total


def phase(ctl: Control, cfg: CanaryConfig) -> str:
    """``running | paused | awaiting_promotion | promoted | rolled_back``."""
    status = ctl.status(cfg.candidate)
    if status is ArmStatus.ROLLED_BACK:
        return "rolled_back"
    if ctl.state is ExperimentState.PROMOTED or status is ArmStatus.PROMOTED:
        return "promoted"
    if ctl.state is ExperimentState.PAUSED:
        return "paused"
    if ctl.get(DONE) == "1" and _mine(ctl, cfg):
        return "awaiting_promotion"
    return "running"


@dataclass(frozen=True)
class CanaryView:
    """What ``GET /v1/experiments/{name}`` shows as ``canary``."""

    step: int
    weight: float
    since: float | None
    calls: int
    phase: str

    def public(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "weight": self.weight,
            "since": self.since,
            "calls": self.calls,
            "phase": self.phase,
        }


def view(ctl: Control, cfg: CanaryConfig, candidate_calls: int) -> CanaryView:
    mine = _mine(ctl, cfg)
    since = ctl.get(SINCE) if mine else None
    return CanaryView(
        step=max(1, _step(ctl, cfg)),
        weight=weight(ctl, cfg),
        since=None if since is None else float(since),
        calls=max(0, candidate_calls - int(ctl.get(CALLS) or "0")) if mine else 0,
        phase=phase(ctl, cfg),
    )


def _enter(step: int, now: float, calls: int) -> dict[str, str | None]:
    return {STEP: str(step), SINCE: repr(now), CALLS: str(calls), PAUSED: "0"}


def start(
    ctl: Control, cfg: CanaryConfig, now: float, candidate_calls: int, *, baseline: str
) -> Transition:
    """Enter step 1 (once per candidate): a new candidate's schedule replaces the
    previous one's, and ends the previous canary's promotion."""
    if _step(ctl, cfg) > 0:
        return Transition(ctl, changed=False)
    changes: dict[str, str | None] = {
        **dict.fromkeys(FIELDS),
        CANDIDATE: cfg.candidate,
        **_enter(1, now, candidate_calls),
    }
    w = cfg.steps[0].weight
    started = "canary started"
    previous = ctl.get(CANDIDATE)
    if previous is not None and previous != cfg.candidate:
        started = f"canary of {cfg.candidate} started (replacing {previous})"
        if ctl.state is ExperimentState.PROMOTED:  # the previous canary's promotion ends
            changes["state"] = ExperimentState.RUNNING.value
            for arm in (baseline, cfg.candidate):
                if ctl.status(arm) in (ArmStatus.PROMOTED, ArmStatus.RETIRED):
                    changes[f"status:{arm}"] = None
    event = AuditEvent(
        kind="step",
        arm=cfg.candidate,
        actor="schedule",
        reason=f"{started}: step 1 of {len(cfg.steps)}, candidate weight {w:g}",
        details={"step": 1, "weight": w},
    )
    return Transition(ctl.with_items(changes), (event,))


def advance(
    ctl: Control,
    cfg: CanaryConfig,
    *,
    arms: list[str],
    now: float,
    candidate_calls: int,
    violated: bool,
) -> Transition:
    """The next step, the promotion, or nothing (not enough calls or time yet, a
    violation, or not running)."""
    unchanged = Transition(ctl, changed=False)
    step = _step(ctl, cfg)
    if step == 0 or violated or phase(ctl, cfg) != "running":
        return unchanged
    current = cfg.steps[step - 1]
    calls = candidate_calls - int(ctl.get(CALLS) or "0")
    elapsed = now - float(ctl.get(SINCE) or repr(now)) - _paused(ctl, now)
    if calls < current.min_calls or elapsed < current.min_seconds:
        return unchanged
    passed = f"after {calls} calls and {elapsed:.0f} s at weight {current.weight:g}"
    if step < len(cfg.steps):
        w = cfg.steps[step].weight
        event = AuditEvent(
            kind="step",
            arm=cfg.candidate,
            actor="schedule",
            reason=f"step {step + 1} of {len(cfg.steps)}: candidate weight {w:g} ({passed})",
            details={"step": step + 1, "weight": w, "calls": calls, "seconds": elapsed},
        )
        return Transition(ctl.with_items(_enter(step + 1, now, candidate_calls)), (event,))
    if cfg.promote == "auto":
        t = actions.promote(
            ctl,
            cfg.candidate,
            arms=arms,
            actor="schedule",
            reason=f"canary passed its last step ({passed}): promoted",
        )
        return Transition(t.control.with_items({DONE: "1"}), t.events)
    event = AuditEvent(
        kind="awaiting_promotion",
        arm=cfg.candidate,
        actor="schedule",
        reason=f"canary passed its last step ({passed}); waiting for POST .../promote",
    )
    return Transition(ctl.with_items({DONE: "1"}), (event,))
