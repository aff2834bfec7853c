"""The arm and experiment state machine: every action as a pure function of the control
state, whoever asks (an operator, a guardrail, a canary schedule, a config change).

An action returns a :class:`Transition` (the new control state and its audit events) or
raises :class:`ActionRefused` (the action does not fit the state: HTTP 409). Repeating the
current state is a transition with ``changed=False`` (idempotent: HTTP 200
``{"changed": false}``). The store applies a transition with a compare-and-set on the
control version, so it happens exactly once however many replicas attempt it.

States::

    arm:        active ──rollback──▶ rolled_back ──restore──▶ active
                active ──promote──▶ promoted (the others: retired)
                promoted ──rollback──▶ rolled_back (the others: active again)
    experiment: running ◀──pause/resume──▶ paused
                running | paused ──promote──▶ promoted
    reset:      a new epoch (statistics from zero); statuses and the audit log stay

Traffic: ``running`` routes with the policy over the active arms; ``paused`` sends all
traffic to the baseline; ``promoted`` all of it to the promoted arm.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bandit_serve.errors import ActionRefused, UnknownArmError
from bandit_serve.store import ArmStatus, AuditEvent, Control, ExperimentState

__all__ = [
    "ActionRefused",
    "Transition",
    "alert",
    "config_changed",
    "ensure_salt",
    "pause",
    "promote",
    "reset",
    "restore",
    "resume",
    "rollback",
    "violation_count",
]

ALERT = "alert:"  # alert:<arm>|<rule id> -> time of the alert (one alert per episode)
VIOLATIONS = "viol:"  # viol:<arm>|<rule id> -> violations acted upon (a counter)
CONFIG = "config"  # a digest of the config last announced
PAUSED_AT = "paused_at"  # when the current pause began (a canary's clock stops)
SALT = "salt"  # the experiment's assignment salt, when the config gives none
RESET_TOKEN = "reset_token"  # the last reset request (a retried write resets once)


@dataclass(frozen=True)
class Transition:
    """A new control state and the audit events that explain it."""

    control: Control
    events: tuple[AuditEvent, ...] = ()
    changed: bool = True
    mark_restore: str | None = None
    new_epoch: bool = False


def _unchanged(ctl: Control) -> Transition:
    return Transition(ctl, changed=False)


def _event(
    kind: str, arm: str | None, actor: str, reason: str, details: Mapping[str, Any] | None = None
) -> AuditEvent:
    return AuditEvent(kind=kind, arm=arm, actor=actor, reason=reason, details=dict(details or {}))


def _check_arm(arm: str, arms: Sequence[str]) -> None:
    if arm not in arms:
        raise UnknownArmError(f"no arm named {arm!r}; arms: {', '.join(arms)}")


def _clear_prefix(ctl: Control, prefix: str) -> dict[str, str | None]:
    return {k: None for k in ctl.fields if k.startswith(prefix)}


def _count_violation(ctl: Control, arm: str, rule: str | None) -> dict[str, str | None]:
    if rule is None:
        return {}
    key = f"{VIOLATIONS}{arm}|{rule}"
    return {key: str(int(ctl.fields.get(key, "0")) + 1)}


def violation_count(ctl: Control) -> dict[tuple[str, str], int]:
    """Violations acted upon, by (arm, rule id)."""
    out = {}
    for k, v in ctl.fields.items():
        if k.startswith(VIOLATIONS):
            arm, _, rule = k[len(VIOLATIONS) :].partition("|")
            out[(arm, rule)] = int(v)
    return out


def rollback(
    ctl: Control,
    arm: str,
    *,
    arms: Sequence[str],
    baseline: str,
    actor: str,
    reason: str = "",
    rule: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> Transition:
    """Stop sending traffic to ``arm`` (its pending rewards still count)."""
    _check_arm(arm, arms)
    if arm == baseline:
        raise ActionRefused(
            f"{arm!r} is the baseline and cannot be rolled back; promote another arm instead"
        )
    status = ctl.status(arm)
    if status is ArmStatus.ROLLED_BACK:
        return _unchanged(ctl)
    if status is ArmStatus.RETIRED:
        raise ActionRefused(f"arm {arm!r} is retired (another arm was promoted)")
    changes: dict[str, str | None] = {f"status:{arm}": ArmStatus.ROLLED_BACK.value}
    if status is ArmStatus.PROMOTED:  # undo the promotion: the retired arms route again
        retired = [a for a in arms if ctl.status(a) is ArmStatus.RETIRED]
        changes.update({f"status:{a}": None for a in retired})
        changes["state"] = ExperimentState.RUNNING.value
    changes.update(_count_violation(ctl, arm, rule))
    event = _event(
        "rollback", arm, actor, reason or f"{arm} rolled back", {**(details or {}), "rule": rule}
    )
    return Transition(ctl.with_items(changes), (event,))


def restore(
    ctl: Control, arm: str, *, arms: Sequence[str], actor: str, reason: str = ""
) -> Transition:
    """Give a rolled-back arm traffic again; its guardrail statistics start from now."""
    _check_arm(arm, arms)
    status = ctl.status(arm)
    if status is ArmStatus.ACTIVE:
        return _unchanged(ctl)
    if status is not ArmStatus.ROLLED_BACK:
        raise ActionRefused(f"arm {arm!r} is {status.value}; only a rolled-back arm is restored")
    changes: dict[str, str | None] = {
        f"status:{arm}": None,
        f"restored:{arm}": repr(time.time()),
        **_clear_prefix(ctl, f"{ALERT}{arm}|"),
    }
    event = _event("restore", arm, actor, reason or f"{arm} restored")
    return Transition(ctl.with_items(changes), (event,), mark_restore=arm)


def promote(
    ctl: Control, arm: str, *, arms: Sequence[str], actor: str, reason: str = ""
) -> Transition:
    """All traffic to ``arm``; the others retire. Rewards are still accepted."""
    _check_arm(arm, arms)
    status = ctl.status(arm)
    if status is ArmStatus.PROMOTED and ctl.state is ExperimentState.PROMOTED:
        return _unchanged(ctl)
    if status is not ArmStatus.ACTIVE:
        raise ActionRefused(f"arm {arm!r} is {status.value}; only an active arm is promoted")
    changes: dict[str, str | None] = {
        f"status:{a}": ArmStatus.RETIRED.value
        for a in arms
        if a != arm and ctl.status(a) is not ArmStatus.ROLLED_BACK
    }
    changes[f"status:{arm}"] = ArmStatus.PROMOTED.value
    changes["state"] = ExperimentState.PROMOTED.value
    changes[PAUSED_AT] = None  # a promotion ends a pause
    event = _event("promote", arm, actor, reason or f"{arm} promoted: all traffic")
    return Transition(ctl.with_items(changes), (event,))


def pause(ctl: Control, *, actor: str, reason: str = "") -> Transition:
    """All traffic to the baseline; decisions are still logged and rewardable."""
    if ctl.state is ExperimentState.PAUSED:
        return _unchanged(ctl)
    if ctl.state is ExperimentState.PROMOTED:
        raise ActionRefused("the experiment is promoted; roll the promoted arm back first")
    event = _event("pause", None, actor, reason or "paused: all traffic to the baseline")
    changes = {"state": ExperimentState.PAUSED.value, PAUSED_AT: repr(time.time())}
    return Transition(ctl.with_items(changes), (event,))


def resume(ctl: Control, *, actor: str, reason: str = "") -> Transition:
    if ctl.state is ExperimentState.RUNNING:
        return _unchanged(ctl)
    if ctl.state is ExperimentState.PROMOTED:
        raise ActionRefused("the experiment is promoted; there is nothing to resume")
    event = _event("resume", None, actor, reason or "resumed: the policy routes again")
    changes: dict[str, str | None] = {"state": ExperimentState.RUNNING.value, PAUSED_AT: None}
    paused_at = ctl.get(PAUSED_AT)
    if paused_at is not None and "canary:step" in ctl.fields:  # the canary's clock stopped
        since = float(ctl.get("canary:since") or paused_at)
        paused = float(ctl.get("canary:paused") or "0")
        changes["canary:paused"] = repr(
            paused + max(0.0, time.time() - max(float(paused_at), since))
        )
    return Transition(ctl.with_items(changes), (event,))


def reset(ctl: Control, *, actor: str, reason: str = "", token: str | None = None) -> Transition:
    """A fresh start: a new epoch. Arm statuses, a canary's step and the audit log
    survive; alerts and restore marks (which refer to the old statistics) do not, and a
    canary's step counts its calls and seconds again from the reset. ``token`` names one reset
    request: deciding again after a retried write (the first may have landed) sees its
    own token and changes nothing, so a retry never resets twice."""
    if token is not None and ctl.get(RESET_TOKEN) == token:
        return _unchanged(ctl)
    changes: dict[str, str | None] = {
        **_clear_prefix(ctl, ALERT),
        **_clear_prefix(ctl, "restored:"),
        RESET_TOKEN: token,
    }
    if "canary:step" in ctl.fields:  # the step's count restarts with the statistics
        changes.update({"canary:since": repr(time.time()), "canary:calls": "0"})
        changes["canary:paused"] = "0"
    event = _event(
        "reset",
        None,
        actor,
        reason or "reset: statistics start from zero",
        {"epoch": ctl.epoch + 1},
    )
    return Transition(ctl.with_items(changes), (event,), new_epoch=True)


def alert(
    ctl: Control,
    arm: str,
    rule: str,
    *,
    actor: str,
    reason: str,
    details: Mapping[str, Any] | None = None,
) -> Transition:
    """A guardrail breach that is reported, not acted on: once per arm and rule until the
    arm is restored or the experiment reset."""
    key = f"{ALERT}{arm}|{rule}"
    if key in ctl.fields:
        return _unchanged(ctl)
    changes: dict[str, str | None] = {key: repr(time.time()), **_count_violation(ctl, arm, rule)}
    event = _event("guardrail_alert", arm, actor, reason, {**(details or {}), "rule": rule})
    return Transition(ctl.with_items(changes), (event,))


def ensure_salt(ctl: Control, salt: str) -> Transition:
    """Keep a random assignment salt for every replica (the first one written wins)."""
    if ctl.get(SALT) is not None:
        return _unchanged(ctl)
    return Transition(ctl.with_items({SALT: salt}))


def config_changed(ctl: Control, digest: str, *, summary: str) -> Transition:
    """Announce a config once (every replica sees it; the first one writes the event)."""
    if ctl.get(CONFIG) == digest:
        return _unchanged(ctl)
    first = ctl.get(CONFIG) is None
    event = _event(
        "config_changed",
        None,
        "config",
        ("config loaded: " if first else "config changed: ") + summary,
    )
    return Transition(ctl.with_items({CONFIG: digest}), (event,))
