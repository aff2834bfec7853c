"""Models called in-process: for tests and single-process use without Ray."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from bandit_serve.config import AppConfig
from bandit_serve.config.models import DeploymentModel
from bandit_serve.errors import ConfigError
from bandit_serve.models import InputContract, LoadedModel

__all__ = ["LocalModels"]


class LocalModels:
    """A :class:`~bandit_serve.service.core.ModelCaller` over models loaded in this process.

    Every kind but ``deployment`` (a Ray Serve deployment needs the Serve engine: a
    ConfigError naming the arm). An HTTP arm's connection pool lives as long as the arm:
    call :meth:`aclose` at the end.
    """

    def __init__(self, cfg: AppConfig) -> None:
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.reconfigure(cfg)

    def reconfigure(self, cfg: AppConfig) -> None:
        for exp in cfg.experiments:
            for arm in exp.hosted:
                if isinstance(arm.model, DeploymentModel):
                    raise ConfigError(
                        f"arm {arm.name!r} of experiment {exp.name!r} is a Ray Serve deployment "
                        f"({arm.model.app}/{arm.model.deployment}); only the Ray Serve engine "
                        "can call it"
                    )
        models = {}
        for exp in cfg.experiments:
            for arm in exp.hosted:
                key = (exp.name, arm.name)
                old = self.models.get(key)
                models[key] = (
                    old if old is not None and old.ref == arm.model else LoadedModel(arm.model)
                )
        dropped = [m for k, m in self.models.items() if models.get(k) is not m]
        self.models = models
        for m in dropped:
            self._close_later(m)

    def _close_later(self, model: LoadedModel) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing is open in one
            task = asyncio.get_running_loop().create_task(model.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def __call__(self, experiment: str, arm: str, inputs: Any) -> Any:
        return await self.models[(experiment, arm)].apredict(inputs)

    async def contracts(
        self, experiment: str, arms: Sequence[str]
    ) -> dict[str, InputContract | None]:
        return {a: self.models[(experiment, a)].contract() for a in arms}

    async def aclose(self) -> None:
        """Close every model's connections."""
        await asyncio.gather(*(m.aclose() for m in self.models.values()))
        await asyncio.gather(*self._closing)
