"""The HTTP API (FastAPI). Routes only translate between HTTP and :class:`BanditService`.

Around the routes, in order: :class:`~bandit_serve.service.auth.AuthMiddleware` (keys,
scopes, quotas), :class:`~bandit_serve.service.limits.BodyLimitMiddleware` (body size and
JSON nesting caps), then FastAPI. Every answer is strict JSON with non-ASCII escaped (a
lone surrogate in a client's string cannot break rendering); a 422 never echoes the
input; 5xx answers carry an error id and a fixed message, the detail goes to the log.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from bandit_serve.config import CanaryConfig
from bandit_serve.errors import (
    ActionRefused,
    InputRejected,
    ModelError,
    StoreError,
    UnknownArmError,
    UnknownExperimentError,
)
from bandit_serve.service import metrics
from bandit_serve.service.auth import AuthMiddleware
from bandit_serve.service.core import BanditService, ExperimentRouter
from bandit_serve.service.limits import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware
from bandit_serve.store import RewardOutcome

__all__ = ["MAX_REWARD_BATCH", "create_api"]

log = logging.getLogger("bandit_serve")

OPERATOR = "operator"  # the actor of actions taken through an open API (no keys)
MAX_REWARD_BATCH = 1000
MAX_CONTEXT_KEYS = 64
STATUS_CODES = {
    RewardOutcome.APPLIED: 200,
    RewardOutcome.DUPLICATE: 409,
    RewardOutcome.UNKNOWN: 404,
    RewardOutcome.EXPIRED: 410,
    RewardOutcome.INVALID: 422,
}
REASONS = {
    RewardOutcome.APPLIED: "counted",
    RewardOutcome.DUPLICATE: "this event already has a reward; nothing changed",
    RewardOutcome.UNKNOWN: "no such decision (never made, forged, or its record expired)",
    RewardOutcome.EXPIRED: "the reward wait window has passed; nothing changed",
    RewardOutcome.INVALID: "the reward is not a finite number within the experiment's bounds",
}


class Detail(BaseModel):
    detail: str


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query or path, then the field.")
    msg: str


class Invalid(BaseModel):
    detail: str | list[Problem] = Field(
        description="A sentence, or one entry per invalid field (the input is never echoed)."
    )


class ErrorDetail(Detail):
    error_id: str = Field(description="Quote it when asking about this answer (it is in the log).")


class StoreUnavailable(ErrorDetail):
    may_have_been_recorded: bool = Field(
        description="False: nothing was written, retry freely. True: a write may have been "
        "applied: a retried reward is answered duplicate; a decision is withdrawn."
    )


class ModelFailed(ErrorDetail):
    arm: str


def _documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for every status a route can answer besides 200 (400, 401, 403,
    429 and 500 on every route behind a key: a bad header, no key, a key without the
    scope, a key over its quota, a bug)."""
    models: dict[int, type[BaseModel]] = {
        422: Invalid,
        502: ModelFailed,
        503: StoreUnavailable,
        500: ErrorDetail,
    }
    descriptions = {
        400: "The request could not be read (a body that is not JSON text, a bad header).",
        401: "No valid API key (auth on).",
        403: "The key lacks the route's scope.",
        404: "Unknown experiment, arm or event.",
        409: "The action does not fit the state (or a duplicate reward).",
        410: "The reward's wait window has passed.",
        413: "The body is larger than the cap.",
        422: "The body, a parameter or the inputs are invalid (nothing changed).",
        429: "The key is over its quota; Retry-After says when to try again.",
        500: "A bug; the error id is in the log.",
        502: "The model of the drawn arm failed (counted as its error).",
        503: "The state store is unavailable, or the router's queue is full; Retry-After.",
    }
    return {
        c: {"model": models.get(c, Detail), "description": descriptions[c]}
        for c in sorted({*codes, 400, 401, 403, 429, 500})
    }


class SafeJSONResponse(JSONResponse):
    """Strict JSON, non-ASCII escaped: renders whatever strings a client sent."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def _depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests containers no deeper than ``limit``."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d >= limit:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: Annotated[
        Any,
        Field(
            description="What the model takes, e.g. a row of features (not null).",
            json_schema_extra={"not": {"type": "null"}},
        ),
    ]
    unit_id: str | None = Field(None, min_length=1, max_length=256)
    context: dict[str, Any] | None = Field(
        None, description=f"Up to {MAX_CONTEXT_KEYS} keys, nested at most 4 deep."
    )

    @model_validator(mode="after")
    def _inputs_given(self) -> PredictRequest:
        if self.inputs is None:
            raise ValueError("inputs is required")
        return self

    @field_validator("context")
    @classmethod
    def _small_context(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and (len(v) > MAX_CONTEXT_KEYS or not _depth(v, 4)):
            raise ValueError(f"context takes at most {MAX_CONTEXT_KEYS} keys, 4 levels deep")
        return v


class PredictResponse(BaseModel):
    event_id: str | None = Field(description="Null for a unit outside the experiment.")
    arm: str
    prediction: Any
    propensity: float | None = Field(description="Null for a unit outside the experiment.")
    in_experiment: bool = Field(
        description="False: a unit outside the experiment's layer range (or without a "
        "unit_id in a layered experiment), served by the baseline, not logged."
    )


class ActionBody(BaseModel):
    """An optional reason, kept in the audit log."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class PromoteBody(ActionBody):
    arm: str | None = Field(None, max_length=64, description="The arm that gets all traffic.")


class ActionResult(BaseModel):
    changed: bool = Field(description="False when the experiment was already in that state.")
    state: str
    arms: dict[str, str] = Field(description="Each arm's status.")


EVENT_ID = r"^\d{1,20}-\d{1,20}$"
Reward = Annotated[float, Strict()]  # a JSON number: "1" and true are refused


class RewardItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(max_length=128)
    reward: Reward  # NaN and infinities are answered 422 "invalid" by the store's check


class RewardBody(BaseModel):
    """Either one reward ``{event_id, reward}`` or a batch ``{rewards: [...]}``."""

    model_config = ConfigDict(extra="forbid")
    event_id: str | None = Field(None, max_length=128)
    reward: Reward | None = None
    rewards: list[RewardItem] | None = Field(None, max_length=MAX_REWARD_BATCH)

    @model_validator(mode="after")
    def _one_form(self) -> RewardBody:
        single = self.event_id is not None or self.reward is not None
        if single == (self.rewards is not None):
            raise ValueError("send either {event_id, reward} or {rewards: [...]}")
        if single and (self.event_id is None or self.reward is None):
            raise ValueError("a single reward needs both event_id and reward")
        return self


def _error_id() -> str:
    return secrets.token_hex(8)


def _plain(part: Any) -> str | int:
    """A location part as safe text: ints stay, strings are escaped and shortened."""
    if isinstance(part, int):
        return part
    text = str(part).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 64 else text[:61] + "..."


def _validation_answer(err: RequestValidationError) -> list[dict[str, Any]]:
    """Where and what, never the input (it may be huge, or not encodable)."""
    out = []
    for e in err.errors()[:20]:
        msg = str(e.get("msg", "invalid")).encode("ascii", "backslashreplace").decode("ascii")
        out.append({"loc": [_plain(p) for p in e.get("loc", ())], "msg": msg[:300]})
    return out


def _actor(request: Request) -> str:
    name = getattr(request.state, "key_name", None)
    return name if isinstance(name, str) else OPERATOR


def create_api(
    get_service: Callable[[], BanditService], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> FastAPI:
    """The FastAPI app; ``get_service`` returns the service of this process."""
    api = FastAPI(
        title="bandit-serve",
        version="0.1.0",
        description="Model versions as arms of a bandit, with delayed rewards counted once.",
        default_response_class=SafeJSONResponse,
    )

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> Response:
        return SafeJSONResponse({"detail": _validation_answer(err)}, status_code=422)

    @api.exception_handler(UnknownExperimentError)
    async def _unknown(_: Request, err: UnknownExperimentError) -> Response:
        return SafeJSONResponse({"detail": str(err)}, status_code=404)

    @api.exception_handler(StoreError)
    async def _store(request: Request, err: StoreError) -> Response:
        error_id = _error_id()
        log.warning("503 %s on %s %s: %s", error_id, request.method, request.url.path, err)
        detail = (
            "the state store is unavailable; this may have been recorded: retry (a retried "
            "reward is answered duplicate if the first one counted)"
            if err.maybe_written
            else "the state store is unavailable; nothing was recorded: retry"
        )
        return SafeJSONResponse(
            {"detail": detail, "error_id": error_id, "may_have_been_recorded": err.maybe_written},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @api.exception_handler(ModelError)
    async def _model(_: Request, err: ModelError) -> Response:
        error_id = _error_id()
        log.warning("502 %s: %s", error_id, err)
        kind = err.reason.split(":", 1)[0] if ":" in err.reason else err.reason
        return SafeJSONResponse(
            {
                "detail": f"the model of arm {err.arm!r} failed ({kind})",
                "arm": err.arm,
                "error_id": error_id,
            },
            status_code=502,
        )

    @api.exception_handler(InputRejected)
    async def _rejected(_: Request, err: InputRejected) -> Response:
        return SafeJSONResponse({"detail": str(err)}, status_code=422)

    @api.exception_handler(UnknownArmError)
    async def _unknown_arm(_: Request, err: UnknownArmError) -> Response:
        return SafeJSONResponse({"detail": str(err)}, status_code=404)

    @api.exception_handler(ActionRefused)
    async def _refused(_: Request, err: ActionRefused) -> Response:
        return SafeJSONResponse({"detail": str(err)}, status_code=409)

    @api.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> Response:
        error_id = _error_id()
        log.exception("500 %s on %s %s", error_id, request.method, request.url.path)
        return SafeJSONResponse(
            {"detail": "internal error; it is in the log", "error_id": error_id},
            status_code=500,
        )

    @api.post(
        "/v1/experiments/{name}/predict",
        response_model=PredictResponse,
        responses=_documented(404, 413, 422, 429, 502, 503),
    )
    async def predict(name: str, body: PredictRequest) -> Response:
        started = time.perf_counter()
        router = get_service().router(name)
        p = await router.predict(body.inputs, body.unit_id)
        metrics.decision_latency.labels(name).observe(time.perf_counter() - started)
        if p.in_experiment:
            content = (
                f'{{"event_id":"{p.event_id}","arm":"{p.arm}","prediction":{p.prediction_json},'
                f'"propensity":{p.propensity!r},"in_experiment":true}}'
            )
        else:
            content = (
                f'{{"event_id":null,"arm":"{p.arm}","prediction":{p.prediction_json},'
                f'"propensity":null,"in_experiment":false}}'
            )
        return Response(content, media_type="application/json")

    @api.post(
        "/v1/experiments/{name}/rewards",
        responses=_documented(404, 409, 410, 413, 422, 429, 503),
    )
    async def rewards(name: str, body: Annotated[RewardBody, Body()]) -> Response:
        router = get_service().router(name)
        if body.rewards is None:
            assert body.event_id is not None and body.reward is not None
            (outcome,) = await router.post_rewards([(body.event_id, body.reward)])
            return SafeJSONResponse(
                {"event_id": body.event_id, "status": outcome.value, "detail": REASONS[outcome]},
                status_code=STATUS_CODES[outcome],
            )
        outcomes = await router.post_rewards([(r.event_id, r.reward) for r in body.rewards])
        counts = {o.value: 0 for o in RewardOutcome}
        for o in outcomes:
            counts[o.value] += 1
        return SafeJSONResponse(
            {
                "results": [
                    {"event_id": r.event_id, "status": o.value}
                    for r, o in zip(body.rewards, outcomes, strict=True)
                ],
                "counts": counts,
            }
        )

    @api.get("/v1/experiments", responses=_documented(503))
    async def list_experiments() -> Response:
        service = get_service()
        return SafeJSONResponse(
            _finite({"experiments": [await r.describe() for r in service.routers.values()]})
        )

    @api.get("/v1/experiments/{name}", responses=_documented(404, 503))
    async def get_experiment(name: str) -> Response:
        return SafeJSONResponse(_finite(await get_service().router(name).describe()))

    @api.get("/v1/experiments/{name}/analysis", responses=_documented(404, 422, 503))
    async def get_analysis(
        name: str,
        baseline: Annotated[str | None, Query(max_length=64)] = None,
        alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
        tau: Annotated[float | None, Query(gt=0)] = None,
    ) -> Response:
        router = get_service().router(name)
        report = await router.analysis(baseline=baseline, alpha=alpha, tau=tau)
        return SafeJSONResponse(_finite(report.to_dict()))

    @api.get("/v1/experiments/{name}/timeseries", responses=_documented(404, 422, 503))
    async def get_timeseries(
        name: str,
        window_seconds: Annotated[float, Query(gt=0, le=7 * 86400)] = 3600.0,
    ) -> Response:
        """Traffic, errors, latency, rewards and the posterior per arm and time bucket."""
        data = await get_service().router(name).timeseries(window_seconds)
        return SafeJSONResponse(_finite(data))

    @api.get("/v1/experiments/{name}/events", responses=_documented(404, 422, 503))
    async def get_events(
        name: str,
        since: Annotated[str | None, Query(pattern=EVENT_ID, description="An event id.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        """The audit log, oldest first; ``since`` (exclusive) pages through it."""
        events = await get_service().router(name).events(since, limit)
        return SafeJSONResponse({"events": [_finite(e.public()) for e in events]})

    async def _acted(router: ExperimentRouter, changed: bool) -> ActionResult:
        snap = await router.store.read(router.settings.name)
        ctl = snap.control
        return ActionResult(
            changed=changed,
            state=ctl.state.value,
            arms={a: ctl.status(a).value for a in router.arms},
        )

    actions = _documented(404, 409, 413, 422, 429, 503)

    @api.post("/v1/experiments/{name}/arms/{arm}/rollback", responses=actions)
    async def rollback(
        name: str, arm: str, request: Request, body: ActionBody | None = None
    ) -> ActionResult:
        """Stop routing to ``arm`` (its pending rewards still count). Not the baseline."""
        router = get_service().router(name)
        reason = body.reason if body else ""
        return await _acted(router, await router.rollback(arm, _actor(request), reason))

    @api.post("/v1/experiments/{name}/arms/{arm}/restore", responses=actions)
    async def restore(
        name: str, arm: str, request: Request, body: ActionBody | None = None
    ) -> ActionResult:
        """Route to a rolled-back arm again; its guardrail statistics start from now."""
        router = get_service().router(name)
        reason = body.reason if body else ""
        return await _acted(router, await router.restore(arm, _actor(request), reason))

    @api.post("/v1/experiments/{name}/promote", responses=actions)
    async def promote(name: str, request: Request, body: PromoteBody | None = None) -> ActionResult:
        """All traffic to one arm; the others retire. Rewards are still accepted. A
        canary's promote may omit the arm (or the whole body): its candidate."""
        router = get_service().router(name)
        arm = body.arm if body is not None else None
        if arm is None:
            if not isinstance(router.cfg.policy, CanaryConfig):
                raise InputRejected('name the arm to promote: {"arm": "..."}')
            arm = router.cfg.policy.candidate  # a canary promotes its candidate
        reason = body.reason if body is not None else ""
        return await _acted(router, await router.promote(arm, _actor(request), reason))

    @api.post("/v1/experiments/{name}/pause", responses=actions)
    async def pause(name: str, request: Request, body: ActionBody | None = None) -> ActionResult:
        """All traffic to the baseline; every decision is still logged and rewardable."""
        router = get_service().router(name)
        reason = body.reason if body else ""
        return await _acted(router, await router.pause(_actor(request), reason))

    @api.post("/v1/experiments/{name}/resume", responses=actions)
    async def resume(name: str, request: Request, body: ActionBody | None = None) -> ActionResult:
        router = get_service().router(name)
        reason = body.reason if body else ""
        return await _acted(router, await router.resume(_actor(request), reason))

    @api.post("/v1/experiments/{name}/reset", responses=actions)
    async def reset(
        name: str,
        request: Request,
        confirm: Annotated[str | None, Query(max_length=64)] = None,
        body: ActionBody | None = None,
    ) -> ActionResult:
        """A fresh start: a new epoch (statistics from zero; old event ids answer
        unknown). Arm statuses and the audit log survive. Needs ``?confirm={name}``."""
        router = get_service().router(name)
        if confirm != name:
            raise InputRejected(f"reset needs ?confirm={name} (the experiment's name)")
        reason = body.reason if body else ""
        return await _acted(router, await router.reset(_actor(request), reason))

    @api.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **_documented(503),
        },
    )
    async def get_metrics() -> Response:
        """Prometheus text exposition (see the README's metrics)."""
        views = []
        for r in get_service().routers.values():
            snap = await r.store.read(r.settings.name)
            views.append(metrics.ExperimentMetrics(await r.describe(snap), snap))
        return Response(metrics.render(views), media_type="text/plain; version=0.0.4")

    @api.get("/healthz", responses={503: {"model": Detail}})
    async def healthz() -> Response:
        service = get_service()
        try:
            await service.store.check()
        except StoreError as err:
            log.warning("healthz: %s", err)
            return SafeJSONResponse(
                {"status": "unavailable", "detail": "the state store does not answer"},
                status_code=503,
            )
        return SafeJSONResponse({"status": "ok", "experiments": sorted(service.routers)})

    from bandit_serve.dashboard import mount

    mount(api)
    api.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    api.add_middleware(
        AuthMiddleware,
        get_auth=lambda: get_service().authenticator,
        limiter=lambda: get_service().rate_limiter,
    )
    return api


def _finite(obj: Any) -> Any:
    """JSON has no NaN: replace non-finite floats by null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
