"""The arm and experiment state machine, as pure functions of the control state."""

from __future__ import annotations

import pytest

from bandit_serve.errors import ActionRefused, UnknownArmError
from bandit_serve.safety import actions
from bandit_serve.store import ArmStatus, Control, ExperimentState

ARMS = ["a", "b", "c"]


def test_each_action_once_then_unchanged() -> None:
    ctl = Control()
    t = actions.rollback(ctl, "b", arms=ARMS, baseline="a", actor="ops")
    assert t.changed and t.control.status("b") is ArmStatus.ROLLED_BACK
    assert not actions.rollback(t.control, "b", arms=ARMS, baseline="a", actor="ops").changed
    r = actions.restore(t.control, "b", arms=ARMS, actor="ops")
    assert r.changed and r.mark_restore == "b" and r.control.status("b") is ArmStatus.ACTIVE
    p = actions.promote(r.control, "c", arms=ARMS, actor="ops")
    assert p.control.state is ExperimentState.PROMOTED
    assert [p.control.status(x) for x in ARMS] == [
        ArmStatus.RETIRED,
        ArmStatus.RETIRED,
        ArmStatus.PROMOTED,
    ]
    with pytest.raises(ActionRefused):
        actions.pause(p.control, actor="ops")
    with pytest.raises(ActionRefused):
        actions.rollback(p.control, "a", arms=ARMS, baseline="a", actor="ops")
    with pytest.raises(UnknownArmError):
        actions.restore(ctl, "zz", arms=ARMS, actor="ops")


def test_a_retried_reset_resets_once() -> None:
    """A write that timed out may have landed: deciding again with the same request's
    token changes nothing, a new request resets again."""
    ctl = Control({"epoch": "0"})
    first = actions.reset(ctl, actor="ops", token="t1")
    assert first.changed and first.new_epoch
    landed = first.control  # what the store holds if the first write landed
    assert not actions.reset(landed, actor="ops", token="t1").changed
    assert actions.reset(landed, actor="ops", token="t2").changed


def test_pause_and_resume_keep_the_canarys_clock() -> None:
    ctl = Control({"canary:step": "1", "canary:since": "100.0", "canary:paused": "0"})
    paused = actions.pause(ctl, actor="ops").control
    assert paused.get(actions.PAUSED_AT) is not None
    resumed = actions.resume(paused, actor="ops").control
    assert resumed.get(actions.PAUSED_AT) is None
    assert float(resumed.get("canary:paused") or "nan") >= 0.0


def test_rolling_back_a_promoted_arm_keeps_earlier_rollbacks() -> None:
    """Undoing a promotion gives traffic back to the arms it retired, never to an arm
    that was rolled back before it (a crashing version stays out)."""
    ctl = actions.rollback(Control(), "c", arms=ARMS, baseline="a", actor="guardrail").control
    ctl = actions.promote(ctl, "b", arms=ARMS, actor="ops").control
    assert [ctl.status(x) for x in ARMS] == [
        ArmStatus.RETIRED,
        ArmStatus.PROMOTED,
        ArmStatus.ROLLED_BACK,
    ]
    t = actions.rollback(ctl, "b", arms=ARMS, baseline="a", actor="guardrail")
    assert t.control.state is ExperimentState.RUNNING
    assert [t.control.status(x) for x in ARMS] == [
        ArmStatus.ACTIVE,
        ArmStatus.ROLLED_BACK,
        ArmStatus.ROLLED_BACK,
    ]
    assert [e.kind for e in t.events] == ["rollback"]


def test_a_promotion_ends_a_pause() -> None:
    paused = actions.pause(Control(), actor="ops").control
    promoted = actions.promote(paused, "b", arms=ARMS, actor="ops").control
    assert promoted.state is ExperimentState.PROMOTED
    assert promoted.get(actions.PAUSED_AT) is None
    undone = actions.rollback(promoted, "b", arms=ARMS, baseline="a", actor="ops").control
    assert undone.state is ExperimentState.RUNNING and undone.get(actions.PAUSED_AT) is None
