"""Layers: experiments that exclude each other own disjoint ranges of one layer hash.

A unit's position in layer ``L`` is ``bucket(f"layer:{L}:{unit_id}") / 10000``; an
experiment of the layer owns the half-open range ``[lo, hi)`` of positions. Different
layers hash different keys, so a unit's positions in two layers are independent, and
independent of its bucket within an experiment (``f"{salt}:{unit_id}"``) as long as no
salt equals ``f"layer:{L}"`` for a layer ``L`` (that key would be the same string).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

from bandit_serve.assignment.hashing import BUCKETS, layer_position

__all__ = ["Layer", "check_layers", "in_range"]


def in_range(position: float, lo: float, hi: float) -> bool:
    """``lo <= position < hi``: whether a layer position lies in the half-open range.

    Compared in double precision: a position ``b / 10000`` and a bound written with at
    most four decimals compare exactly as ``b`` against ``10000 * bound``.

    Examples
    --------
    >>> in_range(0.5, 0.0, 0.5), in_range(0.5, 0.5, 1.0), in_range(0.9999, 0.5, 1.0)
    (False, True, True)
    """
    return lo <= position < hi


@dataclass(frozen=True, slots=True)
class Layer:
    """An experiment's place in a layer: the layer's name and the range ``[lo, hi)`` it owns.

    A plain value; :func:`check_layers` says what is wrong with a set of them.

    Attributes
    ----------
    name : str
        The layer's name; experiments naming the same layer exclude each other.
    lo, hi : float
        The half-open range of layer positions the experiment owns,
        ``0 <= lo < hi <= 1``.

    Examples
    --------
    >>> layer = Layer("ranking", 0.0, 0.5)
    >>> layer.position("user-42"), layer.contains("user-42")
    (0.3037, True)
    """

    name: str
    lo: float
    hi: float

    def position(self, unit_id: str) -> float:
        """The unit's position in this layer, in ``[0, 1)``."""
        return layer_position(self.name, unit_id)

    def contains(self, unit_id: str) -> bool:
        """Whether the unit's position lies in ``[lo, hi)``."""
        return self.lo <= layer_position(self.name, unit_id) < self.hi

    def __str__(self) -> str:
        return f"layer {self.name!r} range [{self.lo!r}, {self.hi!r})"


def _first_bucket(lo: float) -> int:
    """The smallest bucket ``b`` with ``b / 10000 >= lo`` (``lo`` finite, >= 0)."""
    b = max(0, math.floor(lo * BUCKETS) - 1)
    while b / BUCKETS < lo:
        b += 1
    return b


def _range_problems(experiment: str, layer: Layer) -> list[str]:
    where = f"Experiment {experiment!r}: {layer}"
    if not layer.name:
        return [f"Experiment {experiment!r}: the layer's name is empty."]
    if not (math.isfinite(layer.lo) and math.isfinite(layer.hi)):
        return [f"{where} needs finite bounds."]
    problems = []
    if not (layer.lo >= 0.0 and layer.hi <= 1.0):
        problems.append(f"{where} does not lie within [0, 1].")
    if not layer.lo < layer.hi:
        problems.append(f"{where} is empty: lo must be below hi.")
    if not problems and not _first_bucket(layer.lo) / BUCKETS < layer.hi:
        problems.append(
            f"{where} holds no position b / {BUCKETS}: no unit would ever be in the "
            f"experiment (ranges are resolved to 1/{BUCKETS})."
        )
    return problems


def check_layers(claims: Mapping[str, Layer]) -> list[str]:
    """Every problem with the experiments' layer claims, one whole sentence each.

    Each claim on its own: a non-empty layer name, finite bounds, ``0 <= lo < hi <= 1``,
    and at least one position ``b / 10000`` inside the range. Then every pair of valid
    claims on the same layer: their half-open ranges must not overlap (``[0, 0.5)`` and
    ``[0.5, 1)`` do not). Problems come in the order of ``claims``.

    Parameters
    ----------
    claims : mapping of str to Layer
        Experiment name to its layer claim, for the experiments that have one.

    Returns
    -------
    list of str
        Empty when the claims are valid and disjoint within each layer.

    Examples
    --------
    >>> check_layers({"a": Layer("ranking", 0.0, 0.5), "b": Layer("ranking", 0.5, 1.0)})
    []
    >>> for problem in check_layers(
    ...     {"a": Layer("ranking", 0.0, 0.5), "b": Layer("ranking", 0.4, 1.0),
    ...      "c": Layer("ranking", 0.7, 0.7)}
    ... ):
    ...     print(problem)
    Experiment 'c': layer 'ranking' range [0.7, 0.7) is empty: lo must be below hi.
    Experiments 'a' and 'b' overlap in layer 'ranking': [0.0, 0.5) and [0.4, 1.0) share [0.4, 0.5); the ranges of one layer must be disjoint.
    """  # noqa: E501
    problems: list[str] = []
    valid: list[tuple[str, Layer]] = []
    for experiment, layer in claims.items():
        found = _range_problems(experiment, layer)
        problems.extend(found)
        if not found:
            valid.append((experiment, layer))
    for (a, la), (b, lb) in combinations(valid, 2):
        if la.name == lb.name and la.lo < lb.hi and lb.lo < la.hi:
            lo, hi = max(la.lo, lb.lo), min(la.hi, lb.hi)
            problems.append(
                f"Experiments {a!r} and {b!r} overlap in layer {la.name!r}: "
                f"[{la.lo!r}, {la.hi!r}) and [{lb.lo!r}, {lb.hi!r}) share [{lo!r}, {hi!r}); "
                "the ranges of one layer must be disjoint."
            )
    return problems
