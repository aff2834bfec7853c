"""Models called in-process: for tests and single-process use without Ray."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bandit_serve.config import AppConfig
from bandit_serve.service.models import InputContract, LoadedModel

__all__ = ["LocalModels"]


class LocalModels:
    """A :class:`~bandit_serve.service.core.ModelCaller` over models loaded in this process."""

    def __init__(self, cfg: AppConfig) -> None:
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self.reconfigure(cfg)

    def reconfigure(self, cfg: AppConfig) -> None:
        models = {}
        for exp in cfg.experiments:
            for arm in exp.arms:
                key = (exp.name, arm.name)
                old = self.models.get(key)
                models[key] = (
                    old if old is not None and old.ref == arm.model else LoadedModel(arm.model)
                )
        self.models = models

    async def __call__(self, experiment: str, arm: str, inputs: Any) -> Any:
        return await self.models[(experiment, arm)].apredict(inputs)

    async def contracts(
        self, experiment: str, arms: Sequence[str]
    ) -> dict[str, InputContract | None]:
        return {a: self.models[(experiment, a)].contract() for a in arms}
