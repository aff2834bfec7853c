"""Model references: what serves an arm. A discriminated union on ``kind``.

``sklearn`` (a joblib file), ``callable`` (an importable function), ``onnx`` (an ONNX file
run by onnxruntime), ``http`` (a model endpoint: plain JSON, KServe v2 or an OpenAI-style
chat completion) and ``deployment`` (a Ray Serve deployment that is already running).

``MODEL_REF`` validates a reference from plain data (what a ModelVersion replica
receives) with the same rules as a config file. A reference never holds a secret: an
endpoint's credentials are named by environment variable (``headers_from_env``) and read
where the arm is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, TypeAdapter, field_validator, model_validator

from bandit_serve.config.base import Strict

__all__ = [
    "MODEL_REF",
    "CallableModel",
    "DeploymentModel",
    "HttpModel",
    "ModelRef",
    "OnnxModel",
    "SklearnModel",
    "model_shorthand",
]

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# body fields of a chat completion that the arm sets itself (or that it cannot read)
CHAT_OWN_FIELDS = ("messages", "model", "temperature", "stream", "n")


def _relative(path: str, base: Path) -> str:
    return path if Path(path).is_absolute() else str(base / path)


class SklearnModel(Strict):
    """A scikit-learn estimator saved with joblib. Unpickles: load trusted files only."""

    kind: Literal["sklearn"]
    path: str = Field(min_length=1)

    def relative_to(self, base: Path) -> Self:
        """The same reference with a relative path taken relative to ``base``."""
        return self.model_copy(update={"path": _relative(self.path, base)})


class OnnxModel(Strict):
    """An ONNX file run by onnxruntime (``pip install "bandit-serve[onnx]"``).

    ``providers``: execution providers in order of preference; those not available on the
    machine are skipped, and none available is a load error.
    """

    kind: Literal["onnx"]
    path: str = Field(min_length=1)
    providers: list[str] = Field(default=["CPUExecutionProvider"], min_length=1)

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*ExecutionProvider", p)]
        if bad:
            raise ValueError(
                f"providers are onnxruntime names like CPUExecutionProvider; got {bad[0]!r}"
            )
        return v

    def relative_to(self, base: Path) -> Self:
        """The same reference with a relative path taken relative to ``base``."""
        return self.model_copy(update={"path": _relative(self.path, base)})


class CallableModel(Strict):
    """An importable Python callable, ``package.module:function``."""

    kind: Literal["callable"]
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

    def relative_to(self, base: Path) -> Self:
        return self


class HttpModel(Strict):
    """A model endpoint over HTTP, one pooled connection set per arm.

    ``protocol``: ``json`` (POST ``{"inputs": ...}``; the answer, or its
    ``output_field``), ``kserve-v2`` (the Open Inference Protocol; ``url`` ends in
    ``/infer``), ``openai-chat`` (a chat completion; ``model`` required, ``temperature``,
    ``system`` and other ``body`` fields per arm). ``headers_from_env`` maps a header to
    the environment variable holding its value: secrets never go in the file.
    """

    kind: Literal["http"]
    url: str = Field(min_length=1)
    protocol: Literal["json", "kserve-v2", "openai-chat"] = "json"
    timeout_s: float = Field(2.0, gt=0, le=600)
    headers_from_env: dict[str, str] = Field(default_factory=dict)
    output_field: str | None = Field(None, min_length=1)
    model: str | None = Field(None, min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    system: str | None = None
    body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be http://HOST[:PORT]/PATH or https://...")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "url must not carry credentials; name an environment variable in "
                "headers_from_env instead"
            )
        if parts.fragment:
            raise ValueError("url must not have a #fragment")
        return v

    @field_validator("headers_from_env")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for header, env in v.items():
            if not HEADER_NAME.fullmatch(header):
                raise ValueError(f"{header!r} is not an HTTP header name")
            if not ENV_NAME.fullmatch(env):
                raise ValueError(
                    f"headers_from_env[{header}] must name an environment variable "
                    f"([A-Za-z_][A-Za-z0-9_]*), not hold a value"
                )
        lowered = [h.lower() for h in v]
        if len(set(lowered)) != len(lowered):
            raise ValueError("headers_from_env names a header twice")
        return v

    @model_validator(mode="after")
    def _protocol_fields(self) -> Self:
        chat = self.protocol == "openai-chat"
        if chat and self.model is None:
            raise ValueError("protocol openai-chat needs model (the name the server knows)")
        if not chat:
            given = [f for f in ("model", "temperature", "system") if getattr(self, f) is not None]
            if self.body:
                given.append("body")
            if given:
                raise ValueError(f"{', '.join(given)}: for protocol openai-chat only")
        if chat and self.output_field is not None:
            raise ValueError("output_field: for protocols json and kserve-v2 only")
        own = [k for k in CHAT_OWN_FIELDS if k in self.body]
        if own:
            raise ValueError(
                f"body must not set {', '.join(own)} (the arm sets messages from the inputs; "
                "model and temperature have fields of their own; answers are not streamed)"
            )
        if self.protocol == "kserve-v2" and not urlsplit(self.url).path.rstrip("/").endswith(
            "/infer"
        ):
            raise ValueError("a kserve-v2 url ends in /v2/models/NAME[/versions/V]/infer")
        return self

    def relative_to(self, base: Path) -> Self:
        return self


class DeploymentModel(Strict):
    """A Ray Serve deployment already running in the same Ray cluster, called through its
    handle: its ``__call__`` takes the inputs and returns the prediction."""

    kind: Literal["deployment"]
    app: str = Field(min_length=1, description="The Serve application's name.")
    deployment: str = Field(min_length=1, description="The deployment's name in that app.")

    def relative_to(self, base: Path) -> Self:
        return self


AnyModel = SklearnModel | CallableModel | OnnxModel | HttpModel | DeploymentModel
ModelRef = Annotated[AnyModel, Field(discriminator="kind")]
MODEL_REF: TypeAdapter[AnyModel] = TypeAdapter(ModelRef)


def model_shorthand(v: Any) -> Any:
    """``model: pkg.mod:fn``, ``model: path/to/file.joblib`` or ``model: path/to/m.onnx``
    as a plain string."""
    if isinstance(v, str):
        if v.endswith((".joblib", ".pkl")):
            return {"kind": "sklearn", "path": v}
        if v.endswith(".onnx"):
            return {"kind": "onnx", "path": v}
        return {"kind": "callable", "target": v}
    return v
