"""Input contracts: what a model takes, checked by the router before the draw.

A request that one arm which could be drawn cannot take is refused (422) before any
decision is logged, so whether a request is refused never depends on the draw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["DTYPES", "InputContract"]

# element types a tensor contract knows (numpy's names), with the word used in messages
_FLOATS = {"float16": 65504.0, "float32": 3.4028234663852886e38, "float64": math.inf}
_INTS = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
DTYPES = (*_FLOATS, *_INTS, "bool", "string")

_CHAT = "a prompt string or a list of messages, each {role, content}"


def _word(dtype: str) -> str:
    if dtype in _FLOATS:
        return "numbers"
    if dtype in _INTS:
        return "integers"
    return "booleans" if dtype == "bool" else "strings"


def _dims(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("any" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class InputContract:
    """What a model takes.

    ``form="tensor"`` (scikit-learn and ONNX arms): a request's inputs are one item or a
    non-empty list of items, each a (nested) list of ``shape`` (the model's input shape
    without its batch axis; None where any size goes, the same for every item) holding
    elements of ``dtype`` (numbers are finite and fit the type; booleans are not
    numbers). ``n_features`` is the shorthand for rows, ``shape == (n_features,)``: one
    row of that many numbers or a list of such rows. ``rows``: a model whose batch axis
    has a fixed size takes exactly that many items per request.

    ``form="chat"`` (OpenAI-style chat arms): a prompt string, or a non-empty list of
    messages ``{"role": str, "content": ...}``.

    >>> InputContract(3).problem([1.0, 2.0])
    'inputs must be one row of 3 numbers or a list of such rows; the row has 2'
    >>> InputContract(shape=(2, 2), dtype="int64").problem([[[1, 2], [3, 4]]]) is None
    True
    """

    n_features: int | None = None
    shape: tuple[int | None, ...] | None = None
    dtype: str = "float64"
    rows: int | None = None
    form: Literal["tensor", "chat"] = "tensor"

    def __post_init__(self) -> None:
        shape = self.shape
        if shape is None and self.n_features is not None:
            shape = (self.n_features,)
        if shape is not None:
            shape = tuple(None if d is None else int(d) for d in shape)
            if len(shape) == 1 and shape[0] is not None:
                object.__setattr__(self, "n_features", shape[0])
        object.__setattr__(self, "shape", shape)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.form == "tensor" and shape is None:
            raise ValueError("a tensor contract needs n_features or shape")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a model replica sends the router)."""
        d = asdict(self)
        d["shape"] = None if self.shape is None else list(self.shape)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> InputContract:
        shape = raw.get("shape")
        return cls(**{**raw, "shape": None if shape is None else tuple(shape)})

    # -- the check ---------------------------------------------------------------------

    def want(self) -> str:
        """What the model takes, in words."""
        if self.form == "chat":
            return _CHAT
        assert self.shape is not None
        elems = _word(self.dtype)
        if len(self.shape) == 0:
            one, kind = f"one {elems[:-1]}", elems
        elif len(self.shape) == 1:
            n = self.shape[0]
            one = f"one row of {elems}" if n is None else f"one row of {n} {elems}"
            kind = "such rows"
        else:
            one = f"one item of shape {_dims(self.shape)} ({elems})"
            kind = "such items"
        if self.rows is not None and self.rows != 1:
            return f"a list of {self.rows} {kind}" + ("" if len(self.shape) == 0 else f": {one}")
        return f"{one} or a list of {kind}"

    def problem(self, inputs: Any) -> str | None:
        """Why ``inputs`` do not fit (None when they do). Never echoes the inputs."""
        if self.form == "chat":
            return None if _is_chat(inputs) else f"inputs must be {_CHAT}"
        assert self.shape is not None
        want = f"inputs must be {self.want()}"
        rank = len(self.shape)
        if rank == 0:  # one element, or a list of them
            items = inputs if isinstance(inputs, list) else [inputs]
            single = not isinstance(inputs, list)
        else:
            if not isinstance(inputs, list) or not inputs:
                return want
            single = _depth(inputs) <= rank
            items = [inputs] if single else inputs
        if self.rows is not None and (len(items) != self.rows or (single and self.rows != 1)):
            return want if single else f"{want}; there are {len(items)}"
        if not items:
            return want
        seen: list[int | None] = list(self.shape)
        for i, item in enumerate(items):
            # in rows: "the row" for one row sent alone, "row i" in a list
            where = (
                ("the row" if rank == 1 else "the item")
                if single
                else (f"row {i}" if rank == 1 else f"item {i}")
            )
            problem = self._check(item, 0, seen)
            if problem is not None:
                return f"{want}{problem if problem.startswith(' (') else f'; {where} {problem}'}"
        return None

    def _check(self, value: Any, axis: int, seen: list[int | None]) -> str | None:
        """Why one item does not fit: "has N" for a wrong size, " (...)" for elements."""
        assert self.shape is not None
        if axis == len(self.shape):
            return None if self._element_fits(value) else f" ({self._elements()} only)"
        if not isinstance(value, list):
            return f"has {type(value).__name__}" + ("" if axis == 0 else f" along axis {axis}")
        if seen[axis] is None:
            seen[axis] = len(value)  # any size, but the same throughout (one tensor)
        if len(value) != seen[axis]:
            return (
                f"has {len(value)}"
                + ("" if axis == 0 else f" along axis {axis}")
                + ("" if self.shape[axis] is not None else f", not {seen[axis]} as before")
            )
        for v in value:
            problem = self._check(v, axis + 1, seen)
            if problem is not None:
                return problem
        return None

    def _element_fits(self, x: Any) -> bool:
        d = self.dtype
        if d in _FLOATS:
            return (
                isinstance(x, int | float)
                and not isinstance(x, bool)
                and math.isfinite(x)
                and abs(x) <= _FLOATS[d]
            )
        if d in _INTS:
            lo, hi = _INTS[d]
            return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi
        return isinstance(x, bool) if d == "bool" else isinstance(x, str)

    def _elements(self) -> str:
        d = self.dtype
        if d == "float64":
            return "finite numbers"
        if d in _FLOATS:
            return f"finite numbers within {d}'s range"
        if d in _INTS:
            return f"integers within {d}'s range"
        return _word(d)


def _depth(value: Any) -> int:
    """How deeply lists nest along the first elements (a scalar is 0)."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


def _is_chat(inputs: Any) -> bool:
    if isinstance(inputs, str):
        return True
    if not isinstance(inputs, list) or not inputs:
        return False
    return all(  # content: text, a list of parts, or None beside tool calls
        isinstance(m, dict)
        and isinstance(m.get("role"), str)
        and "content" in m
        and (isinstance(m["content"], str | list) or (m["content"] is None and "tool_calls" in m))
        for m in inputs
    )
