"""A Python client for the bandit-serve HTTP API: :class:`Client` (sync) and
:class:`AsyncClient` (asyncio), both on httpx, with typed results and safe retries.

::

    from bandit_serve.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as c:
        p = c.predict("digits", pixels)          # Prediction(event_id, arm, prediction, propensity)
        r = c.reward("digits", p.event_id, 1.0)  # RewardResult; r.counted: the reward is in
        c.rewards("digits", [(e, 0.0) for e in ids])   # batches of up to 1,000, results in order
        c.analysis("digits").arm("v2").p_best

Retries (the same rules in both clients; ``retries`` extra attempts, then the error):

* **Rewards and reads** (``reward``, ``rewards``, every GET) are retried on 502, 503 and
  504 answers, refused or dropped connections and timeouts. A reward is safe to send
  again: the server applies an event id once and answers ``duplicate`` afterwards. When
  an earlier attempt may have been applied (it timed out, the connection dropped, or a
  503 did not say that nothing was recorded), a ``duplicate`` answer to the retry means
  that attempt was applied: :attr:`RewardResult.counted` is then True.
* **Predictions and actions** (``predict``, ``rollback``, ``restore``, ``promote``,
  ``pause``, ``resume``, ``reset``) are retried only when nothing can have been recorded:
  the connection could not be made (refused, or the connect or pool timeout: the request
  was never sent), or a 503 whose JSON body says ``"may_have_been_recorded": false``, or a
  503 whose body is not JSON (Ray Serve's proxy refusing a full queue). Never after a
  read or write timeout, a dropped connection, a 502/504 from a gateway, or a 503 that
  says nothing or ``true``: a decision may exist then, and sending the request again
  would log a second one. The error raised says so
  (:attr:`ServiceUnavailable.may_have_been_recorded`). A 502 whose JSON names an ``arm``
  is the router's own answer (that arm's model failed): :class:`ModelFailed`.
* Waits grow exponentially from ``backoff`` seconds (doubling per attempt, at most
  :data:`MAX_BACKOFF`) with jitter (a uniform factor in [0.5, 1]). A ``Retry-After``
  header (seconds or an HTTP date) is honoured: the retry waits at least that long, times
  a uniform factor in [1, 1.5] so that clients told the same time do not return together.
  A ``Retry-After`` above :data:`MAX_RETRY_AFTER` seconds is not waited for: the error is
  raised at once.

Errors (every one subclasses :class:`bandit_serve.errors.BanditServeError`)::

    ClientError                           base of the client's errors
    ├── ServiceUnavailable (ConnectionError)  no usable answer after the retries: refused,
    │                                     timed out, dropped, or 502/503/504;
    │                                     ``may_have_been_recorded``, ``status``, ``attempts``
    ├── UnexpectedAnswer                  an answer this client cannot read (wrong URL?)
    └── ApiError                          the service refused the request: ``status``, ``detail``
        ├── AuthError (PermissionError)   401, 403: no key, a wrong key, or a missing scope
        ├── NotFound (LookupError)        404: no such experiment or arm
        ├── Conflict                      409: an action that does not fit the state
        ├── InvalidRequest (ValueError)   400, 413, 422: the server's detail says what is wrong
        └── ModelFailed                   502 from predict: the arm's model raised; ``arm``

A reward's own outcomes (``duplicate``, ``unknown``, ``expired``, ``invalid``) are
results, not errors: :class:`RewardResult`. This module imports httpx, the standard
library and :mod:`bandit_serve.errors` (whose package facade brings numpy, pydantic and
redis-py), never Ray, FastAPI, scipy or the service: a test checks it.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx

from bandit_serve.errors import BanditServeError, UnknownArmError

__all__ = [
    "MAX_BACKOFF",
    "MAX_RETRY_AFTER",
    "MAX_REWARD_BATCH",
    "ActionResult",
    "Analysis",
    "AnalysisArm",
    "ApiError",
    "ArmSummary",
    "AsyncClient",
    "AuditEvent",
    "AuthError",
    "Bucket",
    "BucketArm",
    "Client",
    "ClientError",
    "Conflict",
    "Experiment",
    "Interval",
    "InvalidRequest",
    "Latency",
    "ModelFailed",
    "NotFound",
    "Prediction",
    "RewardResult",
    "RewardStatus",
    "ServiceUnavailable",
    "Timeseries",
    "UnexpectedAnswer",
    "parse_retry_after",
    "retry_delay",
]

MAX_REWARD_BATCH = 1000  # the server's limit for one {"rewards": [...]} request
MAX_BACKOFF = 10.0  # seconds: the longest exponential wait between two attempts
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is not waited for


# -- errors ----------------------------------------------------------------------------------


class ClientError(BanditServeError):
    """Base class of the errors :mod:`bandit_serve.client` raises."""


class ServiceUnavailable(ClientError, ConnectionError):
    """No usable answer after the retries: the connection was refused, timed out or
    dropped, or the service answered 502/503/504.

    ``may_have_been_recorded`` is False only when the request certainly changed nothing
    (for a prediction: no decision was logged); ``status`` is the last HTTP status (None
    when there was no answer); ``attempts`` how many times the request was sent or tried;
    ``reason`` the last failure in a word or two (``"ConnectError"``, ``"503"``).
    """

    def __init__(
        self,
        message: str,
        *,
        may_have_been_recorded: bool,
        status: int | None,
        attempts: int,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.may_have_been_recorded = may_have_been_recorded
        self.status = status
        self.attempts = attempts
        self.reason = reason


class UnexpectedAnswer(ClientError):
    """The service answered something this client cannot read (not JSON, or fields
    missing): the URL points elsewhere, or the server's version does not match."""


class ApiError(ClientError):
    """The service refused the request; ``detail`` is the server's reason."""

    def __init__(self, message: str, *, status: int, detail: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.body = body


class AuthError(ApiError, PermissionError):
    """401 or 403: no API key, a wrong one, or a key without the needed scope."""


class NotFound(ApiError, LookupError):
    """404: no experiment (or arm) of that name."""


class Conflict(ApiError):
    """409: an action that does not fit the experiment's state (e.g. rolling back the
    baseline)."""


class InvalidRequest(ApiError, ValueError):
    """400, 413 or 422: a malformed body, inputs no arm can take, a bad parameter."""


class ModelFailed(ApiError):
    """502 from predict: the model of the drawn arm raised or timed out (the service
    counted the error against the arm; ``arm`` names it)."""

    def __init__(self, message: str, *, status: int, detail: str, body: Any = None) -> None:
        super().__init__(message, status=status, detail=detail, body=body)
        self.arm: str | None = body.get("arm") if isinstance(body, dict) else None


_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
}


# -- results ---------------------------------------------------------------------------------

T = TypeVar("T")


def _req(data: Mapping[str, Any], key: str) -> Any:
    try:
        return data[key]
    except (KeyError, TypeError):
        raise UnexpectedAnswer(f"the answer has no field {key!r}: {str(data)[:200]}") from None


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class Prediction:
    """A predict answer: the arm drawn, its model's prediction, and the probability with
    which the arm was drawn. Post the reward for ``event_id`` later."""

    event_id: str
    arm: str
    prediction: Any
    propensity: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prediction:
        return cls(
            str(_req(data, "event_id")),
            str(_req(data, "arm")),
            _req(data, "prediction"),
            float(_req(data, "propensity")),
        )


class RewardStatus(enum.StrEnum):
    """What the service did with a reward."""

    APPLIED = "applied"  # counted now
    DUPLICATE = "duplicate"  # the event already had a reward; nothing changed
    UNKNOWN = "unknown"  # no such decision (never made, its record expired, or reset)
    EXPIRED = "expired"  # the reward wait window had passed; nothing changed
    INVALID = "invalid"  # not a finite number within the experiment's bounds


@dataclass(frozen=True)
class RewardResult:
    """The outcome of one reward.

    ``retried`` is True when the reward was sent again after an attempt whose outcome is
    unknown (a timeout, a dropped connection, a 503 that did not rule it out): a
    ``duplicate`` answer then most likely means that attempt was applied.
    """

    event_id: str
    status: RewardStatus
    attempts: int = 1
    retried: bool = False
    detail: str | None = None

    @property
    def counted(self) -> bool:
        """The reward is in the statistics: applied now, or a ``duplicate`` answer to a
        retry after an attempt that may have been applied (counted once either way)."""
        return self.status is RewardStatus.APPLIED or (
            self.status is RewardStatus.DUPLICATE and self.retried
        )


@dataclass(frozen=True)
class Interval:
    """A posterior mean with its 95% credible interval (None where undefined)."""

    mean: float | None
    low: float | None
    high: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Interval:
        d = data or {}
        return cls(_opt_float(d.get("mean")), _opt_float(d.get("low")), _opt_float(d.get("high")))


@dataclass(frozen=True)
class Latency:
    """Model-call latency quantiles in seconds (None without calls)."""

    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Latency:
        d = data or {}
        return cls(_opt_float(d.get("p50")), _opt_float(d.get("p95")), _opt_float(d.get("p99")))


@dataclass(frozen=True)
class ArmSummary:
    """One arm as ``GET /v1/experiments/{name}`` shows it: the fields most callers read,
    typed, and ``raw``, the arm as sent (every counter, those added later included)."""

    name: str
    status: str
    pulls: int
    rewards: int
    reward_sum: float
    mean: float | None
    pending: int
    defaulted: int
    dropped: int
    withdrawn: int
    calls: int
    errors: int
    error_rate: float | None
    traffic_share: float | None
    posterior: Interval
    latency: Latency
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ArmSummary:
        return cls(
            name=str(_req(d, "name")),
            status=str(d.get("status", "active")),
            pulls=int(d.get("pulls", 0)),
            rewards=int(d.get("rewards", 0)),
            reward_sum=float(d.get("reward_sum", 0.0)),
            mean=_opt_float(d.get("mean")),
            pending=int(d.get("pending", 0)),
            defaulted=int(d.get("defaulted", 0)),
            dropped=int(d.get("dropped", 0)),
            withdrawn=int(d.get("withdrawn", 0)),
            calls=int(d.get("calls", 0)),
            errors=int(d.get("errors", 0)),
            error_rate=_opt_float(d.get("error_rate")),
            traffic_share=_opt_float(d.get("traffic_share")),
            posterior=Interval.from_json(d.get("posterior")),
            latency=Latency.from_json(d.get("latency")),
            raw=d,
        )


def _find(items: Iterable[T], name: str, what: str) -> T:
    for item in items:
        if getattr(item, "name", None) == name:
            return item
    raise UnknownArmError(f"no arm named {name!r} in this {what}")


@dataclass(frozen=True)
class Experiment:
    """``GET /v1/experiments/{name}``: state, configuration and per-arm statistics.
    ``raw`` is the answer as sent (fields this client does not type are there)."""

    name: str
    state: str
    epoch: int
    baseline: str | None
    policy: Mapping[str, Any]
    reward: Mapping[str, Any]
    arms: tuple[ArmSummary, ...]
    guardrails: Mapping[str, Any] | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def arm(self, name: str) -> ArmSummary:
        return _find(self.arms, name, "experiment")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Experiment:
        return cls(
            name=str(_req(d, "name")),
            state=str(d.get("state", "running")),
            epoch=int(d.get("epoch", 0)),
            baseline=d.get("baseline"),
            policy=dict(d.get("policy") or {}),
            reward=dict(d.get("reward") or {}),
            arms=tuple(ArmSummary.from_json(a) for a in _req(d, "arms")),
            guardrails=d.get("guardrails"),
            raw=d,
        )


@dataclass(frozen=True)
class AnalysisArm:
    """One arm's row of the analysis (see the README's "Reading the analysis")."""

    name: str
    samples: int
    decisions: int
    mean: float | None
    p_best: float | None
    expected_loss: float | None
    ipw_mean: float | None
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_value_sequential: float | None
    cs_low: float | None
    cs_high: float | None
    note: str | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AnalysisArm:
        f = {k: _opt_float(d.get(k)) for k in _ANALYSIS_FLOATS}
        return cls(
            name=str(_req(d, "name")),
            samples=int(d.get("samples", 0)),
            decisions=int(d.get("decisions", 0)),
            note=d.get("note"),
            **f,
        )


_ANALYSIS_FLOATS = (
    "mean",
    "p_best",
    "expected_loss",
    "ipw_mean",
    "effect",
    "ci_low",
    "ci_high",
    "p_value",
    "p_value_sequential",
    "cs_low",
    "cs_high",
)


@dataclass(frozen=True)
class Analysis:
    """``GET /v1/experiments/{name}/analysis``: each arm against the baseline. ``raw`` is
    the answer as sent (``analyze --json`` prints it)."""

    experiment: str
    baseline: str
    alpha: float
    tau: float | None
    test: str
    adaptive: bool
    biased_by_adaptive_allocation: tuple[str, ...]
    srm_chi2: float | None
    srm_p_value: float | None
    srm_warning: str | None
    notes: tuple[str, ...]
    arms: tuple[AnalysisArm, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def arm(self, name: str) -> AnalysisArm:
        return _find(self.arms, name, "analysis")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Analysis:
        return cls(
            experiment=str(_req(d, "experiment")),
            baseline=str(_req(d, "baseline")),
            alpha=float(_req(d, "alpha")),
            tau=_opt_float(d.get("tau")),
            test=str(d.get("test", "")),
            adaptive=bool(d.get("adaptive", False)),
            biased_by_adaptive_allocation=tuple(d.get("biased_by_adaptive_allocation") or ()),
            srm_chi2=_opt_float(d.get("srm_chi2")),
            srm_p_value=_opt_float(d.get("srm_p_value")),
            srm_warning=d.get("srm_warning"),
            notes=tuple(d.get("notes") or ()),
            arms=tuple(AnalysisArm.from_json(a) for a in _req(d, "arms")),
            raw=d,
        )


@dataclass(frozen=True)
class BucketArm:
    """One arm in one time bucket: what happened in the bucket, and the posterior of its
    mean as it stood at the bucket's end."""

    pulls: int
    share: float | None
    calls: int
    errors: int
    error_rate: float | None
    rewards: int
    reward_sum: float
    latency: Latency
    posterior: Interval

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BucketArm:
        return cls(
            pulls=int(d.get("pulls", 0)),
            share=_opt_float(d.get("share")),
            calls=int(d.get("calls", 0)),
            errors=int(d.get("errors", 0)),
            error_rate=_opt_float(d.get("error_rate")),
            rewards=int(d.get("rewards", 0)),
            reward_sum=float(d.get("reward_sum", 0.0)),
            latency=Latency.from_json(d.get("latency")),
            posterior=Interval.from_json(d.get("posterior")),
        )


@dataclass(frozen=True)
class Bucket:
    start: float  # unix time of the bucket's start
    arms: Mapping[str, BucketArm]


@dataclass(frozen=True)
class Timeseries:
    """``GET /v1/experiments/{name}/timeseries``: per time bucket, oldest first."""

    name: str
    bucket_seconds: float
    window_seconds: float
    arms: tuple[str, ...]
    buckets: tuple[Bucket, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Timeseries:
        return cls(
            name=str(_req(d, "name")),
            bucket_seconds=float(_req(d, "bucket_seconds")),
            window_seconds=float(_req(d, "window_seconds")),
            arms=tuple(_req(d, "arms")),
            buckets=tuple(
                Bucket(
                    float(b["start"]),
                    {a: BucketArm.from_json(v) for a, v in (b.get("arms") or {}).items()},
                )
                for b in _req(d, "buckets")
            ),
        )


@dataclass(frozen=True)
class AuditEvent:
    """One entry of an experiment's audit log."""

    id: str
    time: float
    kind: str
    arm: str | None
    actor: str
    reason: str
    details: Mapping[str, Any]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AuditEvent:
        return cls(
            id=str(_req(d, "id")),
            time=float(_req(d, "time")),
            kind=str(_req(d, "kind")),
            arm=d.get("arm"),
            actor=str(d.get("actor", "")),
            reason=str(d.get("reason", "")),
            details=dict(d.get("details") or {}),
        )


@dataclass(frozen=True)
class ActionResult:
    """The answer to an action: whether it changed anything, and the states after it."""

    changed: bool
    state: str
    arms: Mapping[str, str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ActionResult:
        return cls(bool(_req(d, "changed")), str(_req(d, "state")), dict(_req(d, "arms")))


# -- the shared request logic ----------------------------------------------------------------


class _Retry(enum.Enum):
    ALWAYS = "always"  # safe to repeat: rewards (event ids apply once) and reads
    UNSENT = "unsent"  # only when nothing can have been recorded: predict, actions


RETRY_STATUSES = frozenset({502, 503, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class _Call:
    """One logical request; ``what`` names it in messages."""

    method: str
    path: str
    retry: _Retry
    what: str
    params: Mapping[str, str | int | float] | None = None
    body: Any = None


def retry_delay(retry: int, backoff: float, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first): exponential from
    ``backoff`` with jitter, and never less than ``Retry-After`` (jittered upwards).

    >>> rng = random.Random(0)
    >>> 0.1 <= retry_delay(2, 0.1, None, rng) <= 0.2
    True
    >>> 2.0 <= retry_delay(1, 0.1, 2.0, rng) <= 3.0
    True
    """
    wait = min(MAX_BACKOFF, backoff * 2.0 ** (retry - 1)) * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        wait = max(wait, retry_after * rng.uniform(1.0, 1.5))
    return wait


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds (fractions accepted) or an HTTP
    date; None when absent or unreadable.

    >>> parse_retry_after("3"), parse_retry_after("0.25"), parse_retry_after("soon")
    (3.0, 0.25, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0)
    10.0
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _json_or_none(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _detail(body: Any, r: httpx.Response) -> str:
    """The server's reason, one line (FastAPI's validation errors joined)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for e in detail:
            if isinstance(e, dict):
                loc = ".".join(str(x) for x in e.get("loc", ())[1:] if x != "body")
                parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
            else:
                parts.append(str(e))
        return "; ".join(parts)
    if detail is not None:
        return str(detail)
    text = r.text.strip().replace("\n", " ")
    return text[:300] or r.reason_phrase


class _Attempts:
    """The retry state of one call: after each attempt, answer, wait and retry, or raise.

    Shared by :class:`Client` and :class:`AsyncClient`, which only send and sleep.
    """

    def __init__(self, call: _Call, retries: int, backoff: float, rng: random.Random) -> None:
        self.call = call
        self.retries = retries
        self.backoff = backoff
        self.rng = rng
        self.attempts = 0
        self.uncertain = False  # an attempt may have changed something on the server

    def _give_up(self, reason: str, status: int | None) -> ServiceUnavailable:
        tries = f"after {self.attempts} attempts" if self.attempts > 1 else "at the first attempt"
        recorded = self.uncertain and self.call.method != "GET"
        if self.call.method == "GET":
            note = ""
        elif not recorded:
            note = "; nothing was recorded"
        elif self.call.retry is _Retry.UNSENT:
            note = "; not retried: it may have been recorded"
        else:
            note = "; it may have been recorded (sending it again is safe)"
        return ServiceUnavailable(
            f"{self.call.what} failed {tries}: {reason}{note}",
            may_have_been_recorded=recorded,
            status=status,
            attempts=self.attempts,
            reason=str(status) if status is not None else reason.partition(" ")[0],
        )

    def _next(self, reason: str, status: int | None, retryable: bool, after: float | None) -> float:
        if not retryable or self.attempts > self.retries:
            raise self._give_up(reason, status)
        if after is not None and after > MAX_RETRY_AFTER:
            raise self._give_up(f"{reason} (asked to retry after {after:g} s)", status)
        return retry_delay(self.attempts, self.backoff, after, self.rng)

    def failed(self, err: httpx.TransportError) -> float:
        """The attempt got no answer: seconds to wait before the retry, or raises."""
        self.attempts += 1
        kind = type(err).__name__
        reason = f"{kind} ({err})" if str(err) else kind
        if isinstance(err, httpx.UnsupportedProtocol):
            raise self._give_up(reason, None) from err
        sent = not isinstance(err, _NOT_SENT)
        self.uncertain |= sent
        retryable = self.call.retry is _Retry.ALWAYS or not sent
        return self._next(reason, None, retryable, None)

    def answered(self, r: httpx.Response) -> float | None:
        """The attempt got ``r``: None when it is the answer, else seconds to wait."""
        self.attempts += 1
        if r.status_code not in RETRY_STATUSES:
            return None
        body = _json_or_none(r)
        if _model_failed(self.call, r.status_code, body):
            return None  # the service's own answer, not a gateway's: raised as ModelFailed
        flag = body.get("may_have_been_recorded") if isinstance(body, dict) else None
        # a 503 without JSON comes from Ray Serve's proxy refusing a full queue
        nothing = r.status_code == 503 and (body is None or flag is False)
        self.uncertain |= not nothing
        retryable = self.call.retry is _Retry.ALWAYS or nothing
        reason = f"{r.status_code} {_detail(body, r)}"
        after = parse_retry_after(r.headers.get("retry-after"))
        return self._next(reason, r.status_code, retryable, after)


def _model_failed(call: _Call, status: int, body: Any) -> bool:
    """A 502 from the router's predict names the arm whose model failed."""
    return (
        status == 502
        and call.path.endswith("/predict")
        and isinstance(body, dict)
        and ("arm" in body)
    )


def _error(call: _Call, r: httpx.Response, body: Any) -> ApiError:
    detail = _detail(body, r)
    status = r.status_code
    cls = ModelFailed if _model_failed(call, status, body) else _ERRORS.get(status, ApiError)
    return cls(f"{call.what}: {status} {detail}", status=status, detail=detail, body=body)


def _answer(call: _Call, r: httpx.Response) -> Any:
    """The JSON of a 200 answer; raises the error of any other."""
    body = _json_or_none(r)
    if r.status_code != 200:
        raise _error(call, r, body)
    if body is None:
        raise UnexpectedAnswer(f"{call.what}: the answer is not JSON: {r.text[:200]!r}")
    return body


_STATUSES = frozenset(s.value for s in RewardStatus)


def _single_reward(call: _Call, r: httpx.Response, tries: _Attempts) -> RewardResult:
    """200/409/404/410/422 with a reward ``status`` are results; anything else raises."""
    body = _json_or_none(r)
    status = body.get("status") if isinstance(body, dict) else None
    if not isinstance(body, dict) or status not in _STATUSES:
        _answer(call, r)  # raises: an unknown experiment, a malformed body, ...
        raise UnexpectedAnswer(f"{call.what}: no reward status in {str(body)[:200]}")
    event_id = str(body.get("event_id", call.body["event_id"]))
    detail = body.get("detail")
    return RewardResult(event_id, RewardStatus(status), tries.attempts, tries.uncertain, detail)


def _reward_batch(call: _Call, r: httpx.Response, tries: _Attempts) -> list[RewardResult]:
    results = _req(_answer(call, r), "results")
    sent = len(call.body["rewards"])
    if len(results) != sent:
        raise UnexpectedAnswer(f"{call.what}: {len(results)} results for {sent} rewards")
    return [
        RewardResult(
            str(_req(x, "event_id")),
            RewardStatus(_req(x, "status")),
            tries.attempts,
            tries.uncertain,
        )
        for x in results
    ]


@dataclass(frozen=True)
class _Op(Generic[T]):
    """A call and how to read its answer."""

    call: _Call
    read: Callable[[_Call, httpx.Response, _Attempts], T]


def _json_op(call: _Call, parse: Callable[[Any], T]) -> _Op[T]:
    return _Op(call, lambda c, r, _: parse(_answer(c, r)))


def _exp(name: str, tail: str = "") -> str:
    return f"/v1/experiments/{quote(name, safe='')}{tail}"


def _plain(inputs: Any) -> Any:
    """numpy arrays (anything with ``tolist``) as plain lists, for JSON."""
    tolist = getattr(inputs, "tolist", None)
    return tolist() if callable(tolist) else inputs


def _batches(items: Iterable[tuple[str, float]], size: int) -> Iterator[list[tuple[str, float]]]:
    if not 1 <= size <= MAX_REWARD_BATCH:
        raise ValueError(f"batch_size must be within 1..{MAX_REWARD_BATCH}, not {size}")
    batch: list[tuple[str, float]] = []
    for event_id, reward in items:
        batch.append((event_id, reward))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _experiments(body: Any) -> list[Experiment]:
    return [Experiment.from_json(e) for e in _req(body, "experiments")]


def _events(body: Any) -> list[AuditEvent]:
    return [AuditEvent.from_json(e) for e in _req(body, "events")]


class _Core:
    """What both clients share: settings, and every call with the reading of its answer.
    The clients only send, sleep and await."""

    def __init__(
        self, url: str, api_key: str | None, retries: int, backoff: float, seed: int | None
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0, not {backoff}")
        self.base = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.backoff = backoff
        self.rng = random.Random(seed)

    def attempts(self, call: _Call) -> _Attempts:
        return _Attempts(call, self.retries, self.backoff, self.rng)

    @staticmethod
    def request_args(call: _Call) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if call.params:
            kw["params"] = dict(call.params)
        if call.body is not None:
            kw["json"] = call.body
        return kw

    # the calls ---------------------------------------------------------------------------

    def predict(
        self, experiment: str, inputs: Any, unit_id: str | None, context: Mapping[str, Any] | None
    ) -> _Op[Prediction]:
        body: dict[str, Any] = {"inputs": _plain(inputs)}
        if unit_id is not None:
            body["unit_id"] = unit_id
        if context is not None:
            body["context"] = dict(context)
        what = f"predict on {experiment!r}"
        call = _Call("POST", _exp(experiment, "/predict"), _Retry.UNSENT, what, body=body)
        return _json_op(call, Prediction.from_json)

    def reward(self, experiment: str, event_id: str, reward: float) -> _Op[RewardResult]:
        body = {"event_id": event_id, "reward": float(reward)}
        what = f"reward for {event_id!r} in {experiment!r}"
        call = _Call("POST", _exp(experiment, "/rewards"), _Retry.ALWAYS, what, body=body)
        return _Op(call, _single_reward)

    def rewards(
        self, experiment: str, batch: Sequence[tuple[str, float]]
    ) -> _Op[list[RewardResult]]:
        body = {"rewards": [{"event_id": e, "reward": float(v)} for e, v in batch]}
        what = f"{len(batch)} rewards in {experiment!r}"
        call = _Call("POST", _exp(experiment, "/rewards"), _Retry.ALWAYS, what, body=body)
        return _Op(call, _reward_batch)

    @staticmethod
    def _get(path: str, what: str, **params: str | int | float | None) -> _Call:
        kept = {k: v for k, v in params.items() if v is not None}
        return _Call("GET", path, _Retry.ALWAYS, what, params=kept or None)

    def experiments(self) -> _Op[list[Experiment]]:
        return _json_op(self._get("/v1/experiments", "list experiments"), _experiments)

    def experiment(self, name: str) -> _Op[Experiment]:
        return _json_op(self._get(_exp(name), f"read {name!r}"), Experiment.from_json)

    def analysis(
        self, name: str, baseline: str | None, alpha: float, tau: float | None
    ) -> _Op[Analysis]:
        call = self._get(
            _exp(name, "/analysis"),
            f"analysis of {name!r}",
            baseline=baseline,
            alpha=alpha,
            tau=tau,
        )
        return _json_op(call, Analysis.from_json)

    def timeseries(self, name: str, window_seconds: float) -> _Op[Timeseries]:
        call = self._get(
            _exp(name, "/timeseries"), f"timeseries of {name!r}", window_seconds=window_seconds
        )
        return _json_op(call, Timeseries.from_json)

    def events(self, name: str, since: str | None, limit: int) -> _Op[list[AuditEvent]]:
        call = self._get(_exp(name, "/events"), f"audit log of {name!r}", since=since, limit=limit)
        return _json_op(call, _events)

    def action(
        self,
        experiment: str,
        tail: str,
        what: str,
        reason: str | None,
        *,
        arm: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> _Op[ActionResult]:
        body: dict[str, Any] = {} if arm is None else {"arm": arm}
        if reason:
            body["reason"] = reason
        call = _Call(
            "POST",
            _exp(experiment, tail),
            _Retry.UNSENT,
            f"{what} in {experiment!r}",
            params=params,
            body=body or None,
        )
        return _json_op(call, ActionResult.from_json)

    def arm_action(
        self, experiment: str, arm: str, verb: str, reason: str | None
    ) -> _Op[ActionResult]:
        tail = f"/arms/{quote(arm, safe='')}/{verb}"
        return self.action(experiment, tail, f"{verb} {arm!r}", reason)


# -- the clients -----------------------------------------------------------------------------


class Client:
    """A synchronous client (one ``httpx.Client``: connections are reused; close it, or use
    it as a context manager).

    ``api_key`` is sent as ``Authorization: Bearer <key>``; ``timeout``: seconds per
    attempt; ``retries``: extra attempts where the rules in the module doc allow one;
    ``backoff``: the first wait in seconds (doubling); ``seed`` makes the jitter
    reproducible; ``transport`` is handed to httpx (tests, proxies).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        seed: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = _Core(url, api_key, retries, backoff, seed)
        self._http = httpx.Client(
            base_url=self._core.base,
            headers=self._core.headers,
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: _Op[T]) -> T:
        call = op.call
        tries = self._core.attempts(call)
        kw = self._core.request_args(call)
        while True:
            try:
                r = self._http.request(call.method, call.path, **kw)
            except httpx.TransportError as err:
                delay = tries.failed(err)
            else:
                wait = tries.answered(r)
                if wait is None:
                    return op.read(call, r, tries)
                delay = wait
            time.sleep(delay)

    def predict(
        self,
        experiment: str,
        inputs: Any,
        unit_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Prediction:
        """Route ``inputs`` to an arm; its model's prediction, the arm and the event id."""
        return self._run(self._core.predict(experiment, inputs, unit_id, context))

    def reward(self, experiment: str, event_id: str, reward: float) -> RewardResult:
        """Post the reward of one decision (retried until answered; see ``counted``)."""
        return self._run(self._core.reward(experiment, event_id, reward))

    def rewards(
        self,
        experiment: str,
        items: Iterable[tuple[str, float]],
        *,
        batch_size: int = MAX_REWARD_BATCH,
    ) -> list[RewardResult]:
        """Post ``(event_id, reward)`` pairs in batches; one result per pair, in order.
        A batch that fails raises; the batches before it were applied (sending them again
        is safe: they answer ``duplicate``)."""
        out: list[RewardResult] = []
        for batch in _batches(items, batch_size):
            answered: list[RewardResult] = self._run(self._core.rewards(experiment, batch))
            out.extend(answered)
        return out

    def experiments(self) -> list[Experiment]:
        return self._run(self._core.experiments())

    def experiment(self, name: str) -> Experiment:
        return self._run(self._core.experiment(name))

    def analysis(
        self, name: str, baseline: str | None = None, alpha: float = 0.05, tau: float | None = None
    ) -> Analysis:
        """Each arm against ``baseline`` (default: the experiment's)."""
        return self._run(self._core.analysis(name, baseline, alpha, tau))

    def timeseries(self, name: str, window_seconds: float = 3600.0) -> Timeseries:
        return self._run(self._core.timeseries(name, window_seconds))

    def events(self, name: str, since: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The audit log, oldest first; ``since`` (an event id, exclusive) pages on."""
        return self._run(self._core.events(name, since, limit))

    def rollback(self, experiment: str, arm: str, reason: str | None = None) -> ActionResult:
        """Stop routing to ``arm`` (not the baseline); its pending rewards still count."""
        return self._run(self._core.arm_action(experiment, arm, "rollback", reason))

    def restore(self, experiment: str, arm: str, reason: str | None = None) -> ActionResult:
        """Route to a rolled-back ``arm`` again."""
        return self._run(self._core.arm_action(experiment, arm, "restore", reason))

    def promote(self, experiment: str, arm: str, reason: str | None = None) -> ActionResult:
        """All traffic to ``arm``; the other arms retire."""
        return self._run(
            self._core.action(experiment, "/promote", f"promote {arm!r}", reason, arm=arm)
        )

    def pause(self, experiment: str, reason: str | None = None) -> ActionResult:
        """All traffic to the baseline; decisions are still logged and rewardable."""
        return self._run(self._core.action(experiment, "/pause", "pause", reason))

    def resume(self, experiment: str, reason: str | None = None) -> ActionResult:
        """The policy routes again."""
        return self._run(self._core.action(experiment, "/resume", "resume", reason))

    def reset(self, experiment: str, *, confirm: str, reason: str | None = None) -> ActionResult:
        """Statistics from zero (old event ids answer ``unknown``); ``confirm`` must be the
        experiment's name."""
        params = {"confirm": confirm}
        return self._run(self._core.action(experiment, "/reset", "reset", reason, params=params))


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same arguments and methods, awaited;
    ``max_connections`` bounds httpx's pool. Close it with ``aclose`` or ``async with``."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        seed: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._core = _Core(url, api_key, retries, backoff, seed)
        self._http = httpx.AsyncClient(
            base_url=self._core.base,
            headers=self._core.headers,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: _Op[T]) -> T:
        call = op.call
        tries = self._core.attempts(call)
        kw = self._core.request_args(call)
        while True:
            try:
                r = await self._http.request(call.method, call.path, **kw)
            except httpx.TransportError as err:
                delay = tries.failed(err)
            else:
                wait = tries.answered(r)
                if wait is None:
                    return op.read(call, r, tries)
                delay = wait
            await asyncio.sleep(delay)

    async def predict(
        self,
        experiment: str,
        inputs: Any,
        unit_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Prediction:
        return await self._run(self._core.predict(experiment, inputs, unit_id, context))

    async def reward(self, experiment: str, event_id: str, reward: float) -> RewardResult:
        return await self._run(self._core.reward(experiment, event_id, reward))

    async def rewards(
        self,
        experiment: str,
        items: Iterable[tuple[str, float]],
        *,
        batch_size: int = MAX_REWARD_BATCH,
    ) -> list[RewardResult]:
        out: list[RewardResult] = []
        for batch in _batches(items, batch_size):
            answered: list[RewardResult] = await self._run(self._core.rewards(experiment, batch))
            out.extend(answered)
        return out

    async def experiments(self) -> list[Experiment]:
        return await self._run(self._core.experiments())

    async def experiment(self, name: str) -> Experiment:
        return await self._run(self._core.experiment(name))

    async def analysis(
        self, name: str, baseline: str | None = None, alpha: float = 0.05, tau: float | None = None
    ) -> Analysis:
        return await self._run(self._core.analysis(name, baseline, alpha, tau))

    async def timeseries(self, name: str, window_seconds: float = 3600.0) -> Timeseries:
        return await self._run(self._core.timeseries(name, window_seconds))

    async def events(
        self, name: str, since: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        return await self._run(self._core.events(name, since, limit))

    async def rollback(self, experiment: str, arm: str, reason: str | None = None) -> ActionResult:
        return await self._run(self._core.arm_action(experiment, arm, "rollback", reason))

    async def restore(self, experiment: str, arm: str, reason: str | None = None) -> ActionResult:
        return await self._run(self._core.arm_action(experiment, arm, "restore", reason))

    async def promote(self, experiment: str, arm: str, reason: str | None = None) -> ActionResult:
        return await self._run(
            self._core.action(experiment, "/promote", f"promote {arm!r}", reason, arm=arm)
        )

    async def pause(self, experiment: str, reason: str | None = None) -> ActionResult:
        return await self._run(self._core.action(experiment, "/pause", "pause", reason))

    async def resume(self, experiment: str, reason: str | None = None) -> ActionResult:
        return await self._run(self._core.action(experiment, "/resume", "resume", reason))

    async def reset(
        self, experiment: str, *, confirm: str, reason: str | None = None
    ) -> ActionResult:
        params = {"confirm": confirm}
        return await self._run(
            self._core.action(experiment, "/reset", "reset", reason, params=params)
        )
