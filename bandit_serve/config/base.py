"""What every config model shares: strict frozen models, names, uniqueness checks."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NAME_PATTERN", "Name", "Strict", "require_unique"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    """Unknown fields are errors (a typo never passes silently); values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def require_unique(names: list[str], what: str) -> None:
    """Raise ValueError naming the repeated entries of ``names``."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(dupes)}")
