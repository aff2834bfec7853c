"""Reading config files: YAML in, a validated model out, or one line per problem.

:func:`load_config` turns any problem into one :class:`~bandit_serve.errors.ConfigError`
whose message names the file, the field path and what is wrong.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from bandit_serve.config.auth import ApiKeyConfig
from bandit_serve.config.base import Strict
from bandit_serve.config.experiment import AppConfig, ArmConfig
from bandit_serve.config.rollout import ShadowArmConfig
from bandit_serve.errors import ConfigError

__all__ = [
    "ConfigWatch",
    "discriminator_tags",
    "format_validation_error",
    "load_config",
    "parse_config",
    "read_yaml",
]

M = TypeVar("M", bound=BaseModel)
_Hosted = TypeVar("_Hosted", ArmConfig, ShadowArmConfig)


def _walk(annotation: Any, seen: set[type[BaseModel]], tags: set[str], tagged: bool) -> None:
    """Collect the ``kind`` tags of discriminated unions reachable from ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        union = any(isinstance(m, FieldInfo) and m.discriminator for m in meta)
        _walk(inner, seen, tags, tagged or union)
        return
    if origin in (typing.Union, types.UnionType) or origin is not None:
        for arg in typing.get_args(annotation):
            _walk(arg, seen, tags, tagged and origin in (typing.Union, types.UnionType))
        return
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if tagged:
            kind = annotation.model_fields.get("kind")
            if kind is not None:
                tags.update(typing.get_args(kind.annotation))
        if annotation in seen:
            return
        seen.add(annotation)
        for f in annotation.model_fields.values():
            _walk(
                typing.Annotated[f.annotation, f] if f.discriminator else f.annotation,
                seen,
                tags,
                False,
            )


@cache
def discriminator_tags(model: type[BaseModel]) -> frozenset[str]:
    """Every tag of every discriminated union in ``model`` (pydantic puts the tag of the
    union member it tried into an error's location; messages leave it out)."""
    tags: set[str] = set()
    _walk(model, set(), tags, False)
    return frozenset(tags)


def _loc(loc: tuple[int | str, ...], tags: frozenset[str]) -> str:
    out = ""
    prev: int | str | None = None
    for part in loc:
        if prev is not None and isinstance(part, str) and part in tags:
            prev = part
            continue  # the union's tag, not a field
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        prev = part
    return out or "(top level)"


def format_validation_error(
    source: str, err: ValidationError, tags: frozenset[str] = frozenset()
) -> str:
    """One line per problem: ``source: field.path: what is wrong``."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            kind = e["input"].get("kind")
            msg = f"unknown kind {kind!r}; expected one of {e['ctx']['expected_tags']}"
        loc = tuple(e["loc"])
        # a whole-file check names its fields in its own message
        lines.append(f"{source}: {_loc(loc, tags)}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def parse_config(model: type[M], data: Any, source: str) -> M:
    """Validate already-parsed data against ``model``; errors name ``source``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err, discriminator_tags(model))) from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; unreadable files and syntax errors become ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"{p}: cannot read the file: {err.strerror or err}{_what_to_do(p, err)}"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{p}: {at}invalid YAML: {problem}") from None


def _what_to_do(p: Path, err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        where = "" if p.is_absolute() else f" (looked for {p.absolute()})"
        return f"; check the path{where}"
    if isinstance(err, IsADirectoryError):
        return "; name a YAML file, not a directory"
    if isinstance(err, PermissionError):
        return "; check the file's permissions"
    return ""


class _KeysFile(Strict):
    keys: list[ApiKeyConfig]


def _with_keys_file(cfg: AppConfig, base: Path) -> AppConfig:
    """Merge ``auth.keys_file`` (relative to the config file) into ``auth.keys``."""
    if cfg.auth is None or cfg.auth.keys_file is None:
        return cfg
    path = Path(cfg.auth.keys_file)
    path = path if path.is_absolute() else base / path
    extra = parse_config(_KeysFile, read_yaml(path), str(path)).keys
    try:
        auth = cfg.auth.model_validate(
            {**cfg.auth.model_dump(), "keys": [*cfg.auth.keys, *extra], "keys_file": None}
        )
        return cfg.model_validate({**cfg.model_dump(), "auth": auth.model_dump()})
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err)) from None


def load_config(path: str | Path) -> AppConfig:
    """Read and validate an experiment config file.

    Relative model file paths are taken relative to the config file and made absolute
    (model replicas do not share the caller's working directory); an ``auth.keys_file``
    is read and merged into ``auth.keys``.
    """
    cfg = parse_config(AppConfig, read_yaml(path), str(path))
    base = Path(path).resolve().parent
    cfg = _with_keys_file(cfg, base)

    def resolved(arms: Sequence[_Hosted]) -> list[_Hosted]:
        return [a.model_copy(update={"model": a.model.relative_to(base)}) for a in arms]

    experiments = []
    for exp in cfg.experiments:
        update: dict[str, Any] = {"arms": resolved(exp.arms)}
        if exp.shadow is not None:
            update["shadow"] = exp.shadow.model_copy(update={"arms": resolved(exp.shadow.arms)})
        experiments.append(exp.model_copy(update=update))
    return cfg.model_copy(update={"experiments": experiments})


class ConfigWatch:
    """A config file's changes, for the engines that reload it while they serve.

    :meth:`open` reads the file and remembers its modification time *before* reading, so
    a change written while the caller starts up is seen by the first :meth:`poll`.
    """

    def __init__(self, path: str | Path, mtime: float | None) -> None:
        self.path = Path(path)
        self.mtime = mtime

    @classmethod
    def open(cls, path: str | Path) -> tuple[ConfigWatch, AppConfig]:
        """The watch and the config as read now (ConfigError when it does not load)."""
        watch = cls(path, _mtime(Path(path)))
        return watch, load_config(path)

    def poll(self) -> AppConfig | None:
        """The new config when the file changed since it was last read; None when it did
        not (or cannot be read now). A change that does not load raises ConfigError, once:
        the next poll waits for the next change."""
        now = _mtime(self.path)
        if now is None or now == self.mtime:
            return None
        self.mtime = now
        return load_config(self.path)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
