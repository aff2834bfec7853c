"""Moved to :mod:`bandit_serve.models` (one module per arm kind). Kept so that configs and
scripts naming ``bandit_serve.service.models:identity`` still load."""

from __future__ import annotations

from bandit_serve.models import InputContract, LoadedModel, identity

__all__ = ["InputContract", "LoadedModel", "identity"]
