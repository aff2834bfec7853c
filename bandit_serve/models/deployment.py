"""Arms of kind ``deployment``: a Ray Serve deployment that is already running.

The router calls it through its handle (``serve.get_deployment_handle``), so the user's
code, replicas and autoscaling stay the user's: nothing is loaded in this process and no
ModelVersion is deployed for it. Its ``__call__`` takes the inputs and returns the
prediction (numpy arrays and scalars are turned into lists and numbers); raising
:class:`bandit_serve.errors.InputRejected` refuses the inputs (422). It declares no input
contract. The Ray side (finding the deployment, the handle) lives in
:mod:`bandit_serve.service.serve_app`; here is what needs no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bandit_serve.config.models import DeploymentModel

__all__ = ["missing", "plain"]


def missing(ref: DeploymentModel, running: Mapping[str, Sequence[str]]) -> str | None:
    """Why the deployment cannot be called, given the Serve applications running and
    their deployments (None when it is there).

    >>> ref = DeploymentModel(kind="deployment", app="ranking", deployment="RankerV2")
    >>> missing(ref, {"ranking": ["RankerV1"]})
    "Serve application 'ranking' has no deployment 'RankerV2' (it has: RankerV1)"
    >>> missing(ref, {})
    "no Serve application 'ranking' is running (running: none)"
    """
    if ref.app not in running:
        apps = ", ".join(sorted(running)) or "none"
        return f"no Serve application {ref.app!r} is running (running: {apps})"
    names = running[ref.app]
    if ref.deployment not in names:
        has = ", ".join(sorted(names)) or "nothing"
        return f"Serve application {ref.app!r} has no deployment {ref.deployment!r} (it has: {has})"
    return None


def plain(value: Any) -> Any:
    """A deployment's answer with numpy arrays and scalars as lists and numbers."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and type(value).__module__ == "numpy":
        return tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
