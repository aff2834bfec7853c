"""The HTTP API (FastAPI). Routes only translate between HTTP and :class:`BanditService`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bandit_serve.errors import (
    ActionRefused,
    InputRejected,
    ModelError,
    StoreError,
    UnknownArmError,
    UnknownExperimentError,
)
from bandit_serve.service import metrics
from bandit_serve.service.core import BanditService, ExperimentRouter
from bandit_serve.store import RewardOutcome

__all__ = ["MAX_REWARD_BATCH", "create_api"]

OPERATOR = "operator"  # the actor of actions taken through the API (until keys name them)

MAX_REWARD_BATCH = 1000
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
    RewardOutcome.UNKNOWN: "no such decision (never made, or its record expired)",
    RewardOutcome.EXPIRED: "the reward wait window has passed; nothing changed",
    RewardOutcome.INVALID: "the reward is not a finite number within the experiment's bounds",
}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: Any = Field(description="What the model takes, e.g. a row of features.")
    unit_id: str | None = Field(None, max_length=256)
    context: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _inputs_given(self) -> PredictRequest:
        if self.inputs is None:
            raise ValueError("inputs is required")
        return self


class PredictResponse(BaseModel):
    event_id: str
    arm: str
    prediction: Any
    propensity: float


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


class RewardItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(max_length=128)
    reward: float  # NaN and infinities are answered 422 "invalid" by the store's check


class RewardBody(BaseModel):
    """Either one reward ``{event_id, reward}`` or a batch ``{rewards: [...]}``."""

    model_config = ConfigDict(extra="forbid")
    event_id: str | None = Field(None, max_length=128)
    reward: float | None = None
    rewards: list[RewardItem] | None = Field(None, max_length=MAX_REWARD_BATCH)

    @model_validator(mode="after")
    def _one_form(self) -> RewardBody:
        single = self.event_id is not None or self.reward is not None
        if single == (self.rewards is not None):
            raise ValueError("send either {event_id, reward} or {rewards: [...]}")
        if single and (self.event_id is None or self.reward is None):
            raise ValueError("a single reward needs both event_id and reward")
        return self


def create_api(get_service: Callable[[], BanditService]) -> FastAPI:
    """The FastAPI app; ``get_service`` returns the service of this process."""
    api = FastAPI(
        title="bandit-serve",
        version="0.1.0",
        description="Model versions as arms of a bandit, with delayed rewards counted once.",
    )

    @api.exception_handler(UnknownExperimentError)
    async def _unknown(_: Request, err: UnknownExperimentError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @api.exception_handler(StoreError)
    async def _store(_: Request, err: StoreError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"state store unavailable, nothing was recorded; retry: {err}"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @api.exception_handler(ModelError)
    async def _model(_: Request, err: ModelError) -> JSONResponse:
        return JSONResponse({"detail": str(err), "arm": err.arm}, status_code=502)

    @api.exception_handler(InputRejected)
    async def _rejected(_: Request, err: InputRejected) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @api.exception_handler(UnknownArmError)
    async def _unknown_arm(_: Request, err: UnknownArmError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @api.exception_handler(ActionRefused)
    async def _refused(_: Request, err: ActionRefused) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=409)

    @api.post(
        "/v1/experiments/{name}/predict",
        response_model=PredictResponse,
        responses={404: {}, 422: {}, 502: {}, 503: {}},
    )
    async def predict(name: str, body: PredictRequest) -> Response:
        started = time.perf_counter()
        router = get_service().router(name)
        p = await router.predict(body.inputs)
        metrics.decision_latency.labels(name).observe(time.perf_counter() - started)
        content = (
            f'{{"event_id":"{p.event_id}","arm":"{p.arm}","prediction":{p.prediction_json},'
            f'"propensity":{p.propensity!r}}}'
        )
        return Response(content, media_type="application/json")

    @api.post(
        "/v1/experiments/{name}/rewards",
        responses={409: {}, 404: {}, 410: {}, 422: {}, 503: {}},
    )
    async def rewards(name: str, body: Annotated[RewardBody, Body()]) -> JSONResponse:
        router = get_service().router(name)
        if body.rewards is None:
            assert body.event_id is not None and body.reward is not None
            (outcome,) = await router.post_rewards([(body.event_id, body.reward)])
            return JSONResponse(
                {"event_id": body.event_id, "status": outcome.value, "detail": REASONS[outcome]},
                status_code=STATUS_CODES[outcome],
            )
        outcomes = await router.post_rewards([(r.event_id, r.reward) for r in body.rewards])
        counts = {o.value: 0 for o in RewardOutcome}
        for o in outcomes:
            counts[o.value] += 1
        return JSONResponse(
            {
                "results": [
                    {"event_id": r.event_id, "status": o.value}
                    for r, o in zip(body.rewards, outcomes, strict=True)
                ],
                "counts": counts,
            }
        )

    @api.get("/v1/experiments")
    async def list_experiments() -> dict[str, Any]:
        service = get_service()
        listed: dict[str, Any] = _finite(
            {"experiments": [await r.describe() for r in service.routers.values()]}
        )
        return listed

    @api.get("/v1/experiments/{name}")
    async def get_experiment(name: str) -> dict[str, Any]:
        described: dict[str, Any] = _finite(await get_service().router(name).describe())
        return described

    @api.get("/v1/experiments/{name}/analysis", responses={404: {}})
    async def get_analysis(
        name: str,
        baseline: str | None = None,
        alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
        tau: Annotated[float | None, Query(gt=0)] = None,
    ) -> JSONResponse:
        router = get_service().router(name)
        report = await router.analysis(baseline=baseline, alpha=alpha, tau=tau)
        return JSONResponse(_finite(report.to_dict()))

    @api.get("/v1/experiments/{name}/timeseries", responses={404: {}})
    async def get_timeseries(
        name: str,
        window_seconds: Annotated[float, Query(gt=0, le=7 * 86400)] = 3600.0,
    ) -> JSONResponse:
        """Traffic, errors, latency, rewards and the posterior per arm and time bucket."""
        data = await get_service().router(name).timeseries(window_seconds)
        return JSONResponse(_finite(data))

    @api.get("/v1/experiments/{name}/events", responses={404: {}})
    async def get_events(
        name: str,
        since: Annotated[str | None, Query(pattern=EVENT_ID, description="An event id.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The audit log, oldest first; ``since`` (exclusive) pages through it."""
        events = await get_service().router(name).events(since, limit)
        return {"events": [_finite(e.public()) for e in events]}

    async def _acted(router: ExperimentRouter, changed: bool) -> ActionResult:
        snap = await router.store.read(router.settings.name)
        ctl = snap.control
        return ActionResult(
            changed=changed,
            state=ctl.state.value,
            arms={a: ctl.status(a).value for a in router.arms},
        )

    @api.post("/v1/experiments/{name}/arms/{arm}/rollback", responses={404: {}, 409: {}, 503: {}})
    async def rollback(name: str, arm: str, body: ActionBody | None = None) -> ActionResult:
        """Stop routing to ``arm`` (its pending rewards still count). Not the baseline."""
        router = get_service().router(name)
        reason = body.reason if body else ""
        return await _acted(router, await router.rollback(arm, OPERATOR, reason))

    @api.post("/v1/experiments/{name}/arms/{arm}/restore", responses={404: {}, 409: {}, 503: {}})
    async def restore(name: str, arm: str, body: ActionBody | None = None) -> ActionResult:
        """Route to a rolled-back arm again; its guardrail statistics start from now."""
        router = get_service().router(name)
        reason = body.reason if body else ""
        return await _acted(router, await router.restore(arm, OPERATOR, reason))

    @api.post("/v1/experiments/{name}/promote", responses={404: {}, 409: {}, 422: {}, 503: {}})
    async def promote(name: str, body: PromoteBody) -> ActionResult:
        """All traffic to one arm; the others retire. Rewards are still accepted."""
        router = get_service().router(name)
        if body.arm is None:
            raise InputRejected('name the arm to promote: {"arm": "..."}')
        return await _acted(router, await router.promote(body.arm, OPERATOR, body.reason))

    @api.post("/v1/experiments/{name}/pause", responses={404: {}, 409: {}, 503: {}})
    async def pause(name: str, body: ActionBody | None = None) -> ActionResult:
        """All traffic to the baseline; every decision is still logged and rewardable."""
        router = get_service().router(name)
        reason = body.reason if body else ""
        return await _acted(router, await router.pause(OPERATOR, reason))

    @api.post("/v1/experiments/{name}/resume", responses={404: {}, 409: {}, 503: {}})
    async def resume(name: str, body: ActionBody | None = None) -> ActionResult:
        router = get_service().router(name)
        reason = body.reason if body else ""
        return await _acted(router, await router.resume(OPERATOR, reason))

    @api.post("/v1/experiments/{name}/reset", responses={404: {}, 422: {}, 503: {}})
    async def reset(
        name: str,
        confirm: Annotated[str | None, Query(max_length=64)] = None,
        body: ActionBody | None = None,
    ) -> ActionResult:
        """A fresh start: a new epoch (statistics from zero; old event ids answer
        unknown). Arm statuses and the audit log survive. Needs ``?confirm={name}``."""
        router = get_service().router(name)
        if confirm != name:
            raise InputRejected(f"reset needs ?confirm={name} (the experiment's name)")
        reason = body.reason if body else ""
        return await _acted(router, await router.reset(OPERATOR, reason))

    @api.get("/metrics")
    async def get_metrics() -> Response:
        views = []
        for r in get_service().routers.values():
            snap = await r.store.read(r.settings.name)
            views.append(metrics.ExperimentMetrics(await r.describe(snap), snap))
        return Response(metrics.render(views), media_type="text/plain; version=0.0.4")

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        service = get_service()
        try:
            await service.store.check()
        except StoreError as err:
            return JSONResponse({"status": "unavailable", "detail": str(err)}, status_code=503)
        return JSONResponse({"status": "ok", "experiments": sorted(service.routers)})

    from bandit_serve.dashboard import mount

    mount(api)
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
