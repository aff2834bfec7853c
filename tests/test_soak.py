"""The soak's CI variant (benchmarks/soak.py): two minutes, errors only.

``bandit-serve run`` (a local Ray, 2 routers) on a redis-server of its own, 15 decisions/s
(about a quarter to half of what this 2-core machine serves with the reward mix), rewards
for 90% of decisions after 0.5-10 s, 30% of them posted twice, windows of 30 s / 60 s; the
newest router replica SIGKILLed at one minute. Memory growth needs the full ten minutes
(``python benchmarks/soak.py``; figures in the README), so it is not checked here.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.soak import Settings, report, run


def test_soak_two_minutes_with_a_router_killed_fails_nothing_outside_the_fault_window(
    tmp_path: Path,
) -> None:
    s = Settings(minutes=2, rate=15.0, kill_every=60.0, settle=False, redis_sizes=False, echo=False)
    result = run(s, workdir=tmp_path)
    text = report(result)
    print(text)  # the figures, with -s
    ledger = result.ledger
    assert len(ledger.decisions) > 0.8 * 15 * 120, text  # the load ran at its rate
    (fault,) = result.faults
    assert fault.recovered is not None, text  # the replacement router answered
    assert result.error_rate_outside() < 0.001, text
    assert len(result.errors(inside=True)) <= 20, text  # requests in flight to the victim
    assert ledger.given_up == 0, text  # every reward was answered in the end
    assert [e for e, n in ledger.applied.items() if n > 1] == [], text  # never counted twice
    bad_answers = [r for r in ledger.requests if r.outcome in ("404", "410", "422")]
    assert bad_answers == [], text
