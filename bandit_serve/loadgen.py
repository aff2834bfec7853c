"""``bandit-serve loadgen``: an application and its downstream app, driving any experiment.

Predictions are sent at a steady ``rate`` with at most ``concurrency`` in flight (through
:class:`bandit_serve.client.AsyncClient`, so its retry rules apply); each answered
prediction gets its reward after a random delay of up to ``max_delay`` seconds, except a
``miss_rate`` share that never gets one (the server's sweeper then applies the default).

Where the requests come from:

* an **inputs file** of JSON lines (:func:`read_inputs`). A line is either a plain JSON
  value, sent as the inputs, or an object with ``inputs`` and optionally ``reward`` (a
  number posted as the reward), ``expected`` (the reward is 1 when the prediction equals
  it, else 0), ``unit_id`` and ``context`` (sent with the prediction). Lines with neither
  ``reward`` nor ``expected`` get the fixed ``default_reward`` when one is given, else no
  reward at all. Empty lines are skipped.
* the **digits generator** (:func:`digits_items`): images from the half of scikit-learn's
  digits that the demo's models never saw, with their label as ``expected``, so the
  reward is 1 when the model was right.

Progress shows as a live table on a terminal and as one plain line every few seconds
otherwise; the result counts failures by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from bandit_serve.client import (
    ApiError,
    AsyncClient,
    ClientError,
    ModelFailed,
    Prediction,
    ServiceUnavailable,
)
from bandit_serve.errors import BanditServeError

__all__ = [
    "InputsFileError",
    "LineProgress",
    "LiveProgress",
    "LoadItem",
    "LoadgenResult",
    "count_inputs",
    "digits_items",
    "read_inputs",
    "run_loadgen",
]

RECENT = 500  # the traffic share is over the last this many predictions
_MISSING: Any = object()
_LINE_KEYS = frozenset({"inputs", "reward", "expected", "unit_id", "context"})


class InputsFileError(BanditServeError, ValueError):
    """A line of the inputs file is not JSON or not of the documented form; the message
    names the file and the line."""


@dataclass(frozen=True)
class LoadItem:
    """One request to send and how to reward it."""

    inputs: Any
    reward: float | None = None  # posted as is
    expected: Any = _MISSING  # reward 1 when the prediction equals it, else 0
    unit_id: str | None = None
    context: dict[str, Any] | None = None

    def reward_for(self, prediction: Any, default: float | None) -> float | None:
        """The reward to post for ``prediction`` (None: post none)."""
        if self.reward is not None:
            return self.reward
        if self.expected is not _MISSING:
            return 1.0 if prediction == self.expected else 0.0
        return default

    @property
    def judged(self) -> bool:
        return self.expected is not _MISSING


def _item(value: Any, where: str) -> LoadItem:
    if not (isinstance(value, dict) and "inputs" in value):
        return LoadItem(value)
    extra = sorted(set(value) - _LINE_KEYS)
    if extra:
        raise InputsFileError(
            f"{where}: unknown field(s) {', '.join(extra)}; a line is a JSON value (the "
            f"inputs) or an object with {', '.join(sorted(_LINE_KEYS))}"
        )
    reward = value.get("reward")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, int | float)):
        raise InputsFileError(f"{where}: reward must be a number, not {reward!r}")
    unit_id = value.get("unit_id")
    if unit_id is not None and not isinstance(unit_id, str):
        raise InputsFileError(f"{where}: unit_id must be a string, not {unit_id!r}")
    context = value.get("context")
    if context is not None and not isinstance(context, dict):
        raise InputsFileError(f"{where}: context must be an object, not {context!r}")
    return LoadItem(
        value["inputs"],
        None if reward is None else float(reward),
        value.get("expected", _MISSING),
        unit_id,
        context,
    )


def read_inputs(path: Path) -> Iterator[LoadItem]:
    """The items of a JSON-lines inputs file, in order (one pass, read lazily)."""
    try:
        f = path.open(encoding="utf-8")
    except OSError as err:
        raise InputsFileError(f"cannot read the inputs file {path}: {err.strerror}") from None
    with f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputsFileError(f"{where}: not JSON ({err.msg})") from None
            yield _item(value, where)


def count_inputs(path: Path) -> int:
    """How many items the file holds; reads (and checks) every line."""
    n = sum(1 for _ in read_inputs(path))
    if n == 0:
        raise InputsFileError(f"the inputs file {path} has no lines")
    return n


def cycle_inputs(path: Path) -> Iterator[LoadItem]:
    """The file's items, from the start again when it ends."""
    while True:
        yield from read_inputs(path)


def digits_items(seed: int = 0) -> Iterator[LoadItem]:
    """Random digit images the demo's models never saw, their label as ``expected``."""
    from bandit_serve.demo import traffic

    x, y = traffic()
    rng = np.random.default_rng(seed)
    while True:
        k = int(rng.integers(len(y)))
        yield LoadItem(x[k].tolist(), expected=int(y[k]))


@dataclass
class LoadgenResult:
    """What happened. ``failed`` counts failed requests (predictions that got no
    prediction, rewards that were not counted) by reason."""

    total: int = 0  # predictions planned
    sent: int = 0  # predictions answered
    rewards_posted: int = 0
    reward_status: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    arms: Counter[str] = field(default_factory=Counter)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))
    judged: Counter[str] = field(default_factory=Counter)  # predictions with an expected value
    correct: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    last_answer: float | None = None  # when the latest prediction was answered

    @property
    def rate(self) -> float:
        """Predictions answered per second, from the start to the latest answer."""
        if self.last_answer is None:
            return 0.0
        return self.sent / max(self.last_answer - self.started, 1e-9)

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    @property
    def attempted(self) -> int:
        """Requests made: predictions tried and rewards posted."""
        return self.sent + self.failed_predictions + self.rewards_posted

    @property
    def failed_predictions(self) -> int:
        return sum(n for k, n in self.failed.items() if k.startswith("predict"))

    def share(self) -> dict[str, float]:
        """Each arm's share of the last :data:`RECENT` predictions."""
        recent = Counter(self.recent)
        return {a: recent[a] / max(1, len(self.recent)) for a in sorted(self.arms)}

    def failure_line(self) -> str:
        """``12 of 3,400 requests failed: 10 predict: ConnectError, 2 reward expired``."""
        reasons = ", ".join(f"{n:,} {why}" for why, n in self.failed.most_common())
        return f"{self.failures:,} of {self.attempted:,} requests failed: {reasons}"

    def summary(self) -> str:
        share = ", ".join(f"{a} {s:.1%}" for a, s in self.share().items()) or "none"
        return (
            f"traffic share over the last {len(self.recent):,} requests: {share}; "
            f"failed requests: {self.failures:,}"
        )


def _failure(err: ClientError) -> str:
    if isinstance(err, ModelFailed):
        return f"{err.status} the model of arm {err.arm!r} failed"
    if isinstance(err, ServiceUnavailable):
        return err.reason or "no answer"
    if isinstance(err, ApiError):
        detail = err.detail if len(err.detail) <= 60 else err.detail[:59] + "…"
        return f"{err.status} {detail}"
    return type(err).__name__


class Progress(Protocol):
    def update(self, res: LoadgenResult) -> None: ...
    def close(self, res: LoadgenResult) -> None: ...


class LineProgress:
    """One plain line every ``every`` seconds (for logs, pipes and CI)."""

    def __init__(self, experiment: str, out: TextIO | None = None, every: float = 5.0) -> None:
        self.experiment = experiment
        self.out = out
        self.every = every
        self._last: float | None = None

    def line(self, res: LoadgenResult) -> str:
        share = ", ".join(f"{a} {s:.1%}" for a, s in res.share().items())
        return (
            f"loadgen {self.experiment}: {res.sent:,}/{res.total:,} predictions "
            f"({res.rate:.0f}/s), {res.rewards_posted:,} rewards, "
            f"{res.failures:,} failed" + (f"; last {len(res.recent):,}: {share}" if share else "")
        )

    def update(self, res: LoadgenResult) -> None:
        now = time.monotonic()
        if self._last is None:
            self._last = now
        elif now - self._last >= self.every:
            self._last = now
            print(self.line(res), file=self.out or sys.stdout, flush=True)

    def close(self, res: LoadgenResult) -> None:
        print(self.line(res), file=self.out or sys.stdout, flush=True)


class LiveProgress:
    """A table redrawn in place (rich), for a terminal."""

    def __init__(self, experiment: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.experiment = experiment
        self.live = Live(console=Console(), refresh_per_second=4, transient=False)
        self.live.start()

    def table(self, res: LoadgenResult) -> Any:
        from rich.table import Table

        elapsed = time.monotonic() - res.started
        t = Table(
            title=f"{self.experiment}: {res.sent:,}/{res.total:,} predictions, {elapsed:.0f}s"
        )
        t.add_column("arm")
        t.add_column(f"share, last {RECENT}", justify="right")
        t.add_column("requests", justify="right")
        judged = any(res.judged.values())
        if judged:
            t.add_column("accuracy", justify="right")
        for arm, share in res.share().items():
            row = [arm, f"{share:.1%}", f"{res.arms[arm]:,}"]
            if judged:
                n = res.judged[arm]
                row.append(f"{res.correct[arm] / n:.1%}" if n else "-")
            t.add_row(*row)
        statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(res.reward_status.items()))
        t.caption = f"rewards posted {res.rewards_posted:,} ({statuses or 'none yet'})"
        t.caption += f"; failed {res.failures:,}"
        return t

    def update(self, res: LoadgenResult) -> None:
        self.live.update(self.table(res))

    def close(self, res: LoadgenResult) -> None:
        self.live.update(self.table(res))
        self.live.stop()


async def run_loadgen(
    client: AsyncClient,
    experiment: str,
    items: Iterator[LoadItem],
    *,
    requests: int,
    rate: float = 100.0,
    concurrency: int = 16,
    max_delay: float = 2.0,
    miss_rate: float = 0.1,
    default_reward: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    tick: float = 0.25,
) -> LoadgenResult:
    """Send ``requests`` predictions from ``items`` and their rewards; see the module doc."""
    rng = np.random.default_rng(seed)
    res = LoadgenResult(total=requests)
    sem = asyncio.Semaphore(concurrency)
    rewards: set[asyncio.Task[None]] = set()

    async def post_reward(event_id: str, reward: float, delay: float) -> None:
        await asyncio.sleep(delay)
        res.rewards_posted += 1
        try:
            r = await client.reward(experiment, event_id, reward)
        except ClientError as err:
            res.failed[f"reward: {_failure(err)}"] += 1
            return
        res.reward_status[r.status.value] += 1
        if not r.counted:
            res.failed[f"reward {r.status.value}"] += 1

    def rewarded(item: LoadItem, p: Prediction) -> None:
        res.sent += 1
        res.last_answer = time.monotonic()
        res.arms[p.arm] += 1
        res.recent.append(p.arm)
        if item.judged:
            res.judged[p.arm] += 1
            res.correct[p.arm] += int(p.prediction == item.expected)
        reward = item.reward_for(p.prediction, default_reward)
        if reward is None or rng.random() < miss_rate:
            return
        t = asyncio.create_task(post_reward(p.event_id, reward, rng.uniform(0, max_delay)))
        rewards.add(t)
        t.add_done_callback(rewards.discard)

    async def one(item: LoadItem) -> None:
        try:
            p = await client.predict(experiment, item.inputs, item.unit_id, item.context)
        except ClientError as err:
            res.failed[f"predict: {_failure(err)}"] += 1
        else:
            rewarded(item, p)
        finally:
            sem.release()

    async def report(stop: asyncio.Event) -> None:
        while not stop.is_set():
            if progress is not None:
                progress.update(res)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    stop = asyncio.Event()
    reporter = asyncio.create_task(report(stop))
    predictions: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    try:
        for i in range(requests):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            await sem.acquire()
            t = asyncio.create_task(one(next(items)))
            predictions.add(t)
            t.add_done_callback(predictions.discard)
        if predictions:
            await asyncio.gather(*predictions)
        if rewards:
            await asyncio.gather(*list(rewards))
    finally:
        stop.set()
        await reporter
        if progress is not None:
            progress.close(res)
    return res


def make_progress(experiment: str, live: bool, every: float) -> Progress:
    """A live table on a terminal, else plain lines every ``every`` seconds."""
    return LiveProgress(experiment) if live else LineProgress(experiment, every=every)
