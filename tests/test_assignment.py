"""Deterministic assignment (``bandit_serve.assignment``): the hash against the ``mmh3``
package, the documented test vectors, arm and canary splits (shares, exact boundaries,
monotone canary), layer claims (exclusivity, the checker's messages) and independence of
layers and experiment buckets (chi-square tests that a dependent construction fails).

The unit ids are ``user-0`` ... ``user-99999``: sequential ids, the realistic case and the
one a weak hash gets wrong. Everything is deterministic (seeded generators for the random
keys), and the whole module runs in a few seconds.
"""

from __future__ import annotations

import math
import re
from itertools import combinations

import mmh3
import numpy as np
import pytest
from scipy.stats import chi2_contingency, chisquare

import bandit_serve.assignment as assignment
from bandit_serve.assignment import (
    BUCKETS,
    Layer,
    arm_for_bucket,
    bucket,
    canary_arm,
    canary_threshold,
    check_layers,
    experiment_key,
    in_range,
    key_bytes,
    layer_key,
    layer_position,
    murmur3_32,
    split_boundaries,
    unit_bucket,
)

UNITS = [f"user-{i}" for i in range(100_000)]
SALT = "digits-2026-11"
CANARY_SCHEDULE = (0.0, 0.01, 0.05, 0.25, 0.5, 1.0)
SPLITS = (
    (0.5, 0.5),
    (0.9, 0.1),
    (0.05, 0.95),
    (0.25, 0.25, 0.25, 0.25),
    (0.1, 0.2, 0.3, 0.4),
    (0.5, 0.0, 0.3, 0.2),
    (1.0, 3.0),  # weights need not sum to 1
)
# A p-value below this would mean dependence; independent hashes give p ~ U(0, 1), and
# the construction that shares one hash gets p < 1e-300, so the margin is wide both ways.
P_FLOOR = 1e-4
# [lo, hi) code point ranges for random keys: ASCII, 2-byte UTF-8, combining marks, 3-byte
# UTF-8 on both sides of the surrogates, 4-byte UTF-8 (astral, and emoji in particular)
CODE_POINTS = (
    (0x20, 0x7F),
    (0xA0, 0x800),
    (0x300, 0x370),
    (0x800, 0xD800),
    (0xE000, 0x10000),
    (0x10000, 0x110000),
    (0x1F600, 0x1F650),
)


def oracle(data: bytes, seed: int = 0) -> int:
    # bytes only: mmh3.hash(str) with a lone surrogate crashes the interpreter (5.3.1)
    return mmh3.hash(data, seed, signed=False)


@pytest.fixture(scope="module")
def experiment_buckets() -> np.ndarray:
    return np.array([unit_bucket(SALT, u) for u in UNITS])


@pytest.fixture(scope="module")
def ranking_buckets() -> np.ndarray:
    return np.array([round(layer_position("ranking", u) * BUCKETS) for u in UNITS])


@pytest.fixture(scope="module")
def search_buckets() -> np.ndarray:
    return np.array([round(layer_position("search", u) * BUCKETS) for u in UNITS])


def random_text(rng: np.random.Generator, length: int) -> str:
    """Code points from ASCII, two- and three-byte UTF-8, combining marks and emoji
    (four bytes); never a surrogate."""
    chars = []
    for _ in range(length):
        lo, hi = CODE_POINTS[rng.integers(len(CODE_POINTS))]
        chars.append(chr(int(rng.integers(lo, hi))))
    return "".join(chars)


# -- the hash ------------------------------------------------------------------------------


def test_hash_equals_mmh3_on_random_unicode_keys() -> None:
    rng = np.random.default_rng(10)
    keys = [random_text(rng, int(rng.integers(0, 41))) for _ in range(10_000)]
    keys += [experiment_key(SALT, k) for k in keys[:1000]] + [
        layer_key("l", k) for k in keys[:1000]
    ]
    assert sum(any(ord(c) > 0xFFFF for c in k) for k in keys) > 5_000  # astral chars covered
    for key in keys:
        data = key.encode("utf-8")
        assert key_bytes(key) == data
        assert murmur3_32(data) == oracle(data), key
        assert bucket(key) == oracle(data) % BUCKETS


def test_hash_equals_mmh3_on_random_bytes_of_every_tail_length_and_seeds() -> None:
    rng = np.random.default_rng(11)
    for length in range(0, 70):
        for seed in (0, 1, 0x9747B28C, 2**32 - 1):
            data = rng.bytes(length)
            assert murmur3_32(data, seed) == oracle(data, seed), (length, seed)
    with pytest.raises(ValueError, match="seed"):
        murmur3_32(b"x", 2**32)


def test_a_lone_surrogate_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"lone surrogate at index 5"):
        unit_bucket("s", "abc\ud800")  # key "s:abc\ud800": index 5
    assert unit_bucket("s", "abc\U0001f642") == bucket("s:abc🙂")  # a pair is one character


def test_keys_and_buckets_are_the_documented_strings() -> None:
    assert experiment_key("s", "u") == "s:u" and layer_key("L", "u") == "layer:L:u"
    assert unit_bucket("s", "u") == bucket("s:u")
    assert layer_position("L", "u") == bucket("layer:L:u") / BUCKETS
    # the documented pitfall: a salt "layer:L" hashes the very key of layer L
    assert all(
        unit_bucket("layer:ranking", u) == bucket(layer_key("ranking", u)) for u in UNITS[:100]
    )


def test_vectors_of_the_package_docstring() -> None:
    doc = assignment.__doc__ or ""
    rows = re.findall(
        r'^\| `"(.*)"` \| *([0-9a-f.]*) *\| (\d+) \| (0x[0-9a-f]{8}) \| (\d+) \|$', doc, re.M
    )
    assert len(rows) == 12
    for key, hexbytes, h, hexh, b in rows:
        data = key.encode("utf-8")
        assert data.hex().endswith(hexbytes.removeprefix("...")), key
        assert murmur3_32(data) == int(h) == int(hexh, 16) == oracle(data), key
        assert bucket(key) == int(b) == int(h) % BUCKETS, key
    assert any(ord(c) > 0xFFFF for key, *_ in rows for c in key)


def test_bucket_counts_of_sequential_ids_are_uniform(experiment_buckets: np.ndarray) -> None:
    counts = np.bincount(experiment_buckets, minlength=BUCKETS)
    assert len(counts) == BUCKETS
    assert chisquare(counts).pvalue > P_FLOOR


# -- arms ----------------------------------------------------------------------------------


def test_split_boundaries_exact_values() -> None:
    assert split_boundaries([1.0]) == (10_000,)
    assert split_boundaries([0.5, 0.5]) == (5_000, 10_000)
    assert split_boundaries([0.1, 0.2, 0.7]) == (1_000, 3_000, 10_000)
    assert split_boundaries([1, 1, 1]) == (3_333, 6_667, 10_000)
    assert split_boundaries([0, 2, 0, 1, 0]) == (0, 6_667, 6_667, 10_000, 10_000)
    assert split_boundaries([0.57, 0.43]) == (5_700, 10_000)  # 0.57 * 10000 = 5699.99...


@pytest.mark.parametrize(
    "weights", [[], [0.0, 0.0], [-0.1, 1.1], [math.nan, 1.0], [math.inf, 1.0], [1e308, 1e308]]
)
def test_invalid_weights_are_refused(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="eight"):
        split_boundaries(weights)


def test_split_sizes_are_within_one_bucket_of_the_exact_share() -> None:
    rng = np.random.default_rng(12)
    for _ in range(2_000):
        k = int(rng.integers(1, 9))
        w = rng.random(k) * (rng.random(k) > 0.2)  # some zero weights
        if w.sum() == 0:
            continue
        ends = split_boundaries(w.tolist())
        sizes = np.diff((0, *ends))
        assert ends[-1] == BUCKETS and np.all(sizes >= 0)
        assert np.all(np.abs(sizes - BUCKETS * w / w.sum()) <= 1.0)
        assert np.all(sizes[w == 0] == 0)


@pytest.mark.parametrize("weights", SPLITS)
def test_arm_for_bucket_exhaustive(weights: tuple[float, ...]) -> None:
    ends = split_boundaries(weights)
    arms = [arm_for_bucket(b, weights) for b in range(BUCKETS)]
    assert np.array_equal(np.bincount(arms, minlength=len(weights)), np.diff((0, *ends)))
    assert arms == sorted(arms)  # consecutive ranges in config order
    assert all(weights[a] > 0 for a in arms)


@pytest.mark.parametrize("b", [-1, BUCKETS])
def test_buckets_outside_the_space_are_refused(b: int) -> None:
    with pytest.raises(ValueError, match="bucket"):
        arm_for_bucket(b, [1.0])
    with pytest.raises(ValueError, match="bucket"):
        canary_arm(b, 0.5)


@pytest.mark.parametrize("weights", SPLITS)
def test_shares_of_100k_units_are_within_1pct_of_the_weights(
    weights: tuple[float, ...], experiment_buckets: np.ndarray
) -> None:
    arms = np.array([arm_for_bucket(int(b), weights) for b in experiment_buckets])
    shares = np.bincount(arms, minlength=len(weights)) / len(UNITS)
    expected = np.array(weights) / sum(weights)
    assert np.max(np.abs(shares - expected)) < 0.01


# -- canary --------------------------------------------------------------------------------


def test_canary_threshold_exact_and_non_decreasing() -> None:
    for n in range(BUCKETS + 1):  # every weight with four decimals gets exactly n buckets
        assert canary_threshold(float(f"{n / BUCKETS:.4f}")) == n
    rng = np.random.default_rng(13)
    weights = np.sort(np.concatenate([rng.random(100_000), np.linspace(0, 1, 10_001)]))
    thresholds = [canary_threshold(float(w)) for w in weights]
    assert thresholds == sorted(thresholds)
    for bad in (-0.01, 1.01, math.nan):
        with pytest.raises(ValueError, match="canary weight"):
            canary_threshold(bad)


@pytest.mark.parametrize("weight", [0.05, 0.25, 0.5, 0.9])
def test_canary_share_of_100k_units_is_within_1pct(
    weight: float, experiment_buckets: np.ndarray
) -> None:
    share = np.mean([canary_arm(int(b), weight) for b in experiment_buckets])
    assert abs(share - weight) < 0.01


def test_canary_is_monotone_over_every_bucket_for_every_weight_increase() -> None:
    candidate = {w: [canary_arm(b, w) for b in range(BUCKETS)] for w in CANARY_SCHEDULE}
    for w in CANARY_SCHEDULE:
        assert sum(candidate[w]) == round(w * BUCKETS)
    for low, high in combinations(CANARY_SCHEDULE, 2):  # every increase, not only steps
        moved_back = [b for b in range(BUCKETS) if candidate[low][b] and not candidate[high][b]]
        assert moved_back == [], (low, high)


def test_canary_is_monotone_over_100k_units(experiment_buckets: np.ndarray) -> None:
    candidate = {
        w: np.array([canary_arm(int(b), w) for b in experiment_buckets]) for w in CANARY_SCHEDULE
    }
    assert not candidate[0.0].any() and candidate[1.0].all()
    for low, high in combinations(CANARY_SCHEDULE, 2):
        assert not np.any(candidate[low] & ~candidate[high]), (low, high)  # no unit moves back
        assert np.sum(candidate[high] & ~candidate[low]) > 0  # and some move forward


def test_a_two_arm_fixed_split_is_monotone_too() -> None:
    second = {
        w: [arm_for_bucket(b, [1 - w, w]) == 1 for b in range(BUCKETS)] for w in CANARY_SCHEDULE
    }
    for low, high in combinations(CANARY_SCHEDULE, 2):
        assert not any(a and not b for a, b in zip(second[low], second[high], strict=True))


# -- layers --------------------------------------------------------------------------------

RANKING = {
    "a": Layer("ranking", 0.0, 0.3),
    "b": Layer("ranking", 0.3, 0.7),
    "c": Layer("ranking", 0.7, 1.0),
    "d": Layer("search", 0.0, 0.5),  # another layer may reuse any range
}


def test_layer_exclusivity_is_exact_over_every_position_and_100k_units(
    ranking_buckets: np.ndarray,
) -> None:
    assert check_layers(RANKING) == []
    ranking = [layer for layer in RANKING.values() if layer.name == "ranking"]
    for b in range(BUCKETS):  # the three ranges tile [0, 1): every position in exactly one
        assert sum(in_range(b / BUCKETS, x.lo, x.hi) for x in ranking) == 1, b
    memberships = np.zeros(len(UNITS), dtype=int)
    for x in ranking:
        memberships += [in_range(b / BUCKETS, x.lo, x.hi) for b in ranking_buckets]
    assert np.all(memberships == 1)
    for u in UNITS[:2_000]:  # Layer.contains agrees with in_range of the position
        assert [x.contains(u) for x in ranking] == [
            in_range(layer_position("ranking", u), x.lo, x.hi) for x in ranking
        ]


def test_overlapping_claims_are_refused_and_would_share_units(ranking_buckets: np.ndarray) -> None:
    claims = {"a": Layer("ranking", 0.0, 0.5), "b": Layer("ranking", 0.4, 1.0)}
    assert check_layers(claims) == [
        "Experiments 'a' and 'b' overlap in layer 'ranking': [0.0, 0.5) and [0.4, 1.0) "
        "share [0.4, 0.5); the ranges of one layer must be disjoint."
    ]
    both = [
        in_range(b / BUCKETS, 0.0, 0.5) and in_range(b / BUCKETS, 0.4, 1.0) for b in ranking_buckets
    ]
    assert 0.09 < np.mean(both) < 0.11  # what the checker prevents


def test_check_layers_gives_one_message_per_problem() -> None:
    claims = {
        "first": Layer("ranking", 0.0, 0.25),
        "nan": Layer("ranking", math.nan, 0.5),
        "below": Layer("x", -0.1, 0.5),
        "both": Layer("x", 0.9, 1.5),
        "empty": Layer("ranking", 0.6, 0.6),
        "reversed": Layer("ranking", 0.8, 0.7),
        "tiny": Layer("y", 0.12341, 0.12342),
        "noname": Layer("", 0.0, 1.0),
        "second": Layer("ranking", 0.2, 0.3),
        "wide": Layer("ranking", 0.1, 0.9),
        "touching": Layer("ranking", 0.9, 1.0),
        "other-layer": Layer("search", 0.0, 1.0),
    }
    problems = check_layers(claims)
    assert problems == [
        "Experiment 'nan': layer 'ranking' range [nan, 0.5) needs finite bounds.",
        "Experiment 'below': layer 'x' range [-0.1, 0.5) does not lie within [0, 1].",
        "Experiment 'both': layer 'x' range [0.9, 1.5) does not lie within [0, 1].",
        "Experiment 'empty': layer 'ranking' range [0.6, 0.6) is empty: lo must be below hi.",
        "Experiment 'reversed': layer 'ranking' range [0.8, 0.7) is empty: lo must be below hi.",
        "Experiment 'tiny': layer 'y' range [0.12341, 0.12342) holds no position b / 10000: "
        "no unit would ever be in the experiment (ranges are resolved to 1/10000).",
        "Experiment 'noname': the layer's name is empty.",
        "Experiments 'first' and 'second' overlap in layer 'ranking': [0.0, 0.25) and "
        "[0.2, 0.3) share [0.2, 0.25); the ranges of one layer must be disjoint.",
        "Experiments 'first' and 'wide' overlap in layer 'ranking': [0.0, 0.25) and "
        "[0.1, 0.9) share [0.1, 0.25); the ranges of one layer must be disjoint.",
        "Experiments 'second' and 'wide' overlap in layer 'ranking': [0.2, 0.3) "
        "and [0.1, 0.9) share [0.2, 0.3); the ranges of one layer must be disjoint.",
    ]
    # a range narrower than 1/10000 that holds a position is fine, and so is the full range
    assert check_layers({"n": Layer("y", 0.12345, 0.12351), "f": Layer("z", 0.0, 1.0)}) == []
    assert check_layers({"r": Layer("y", 0.0, 1.0), "s": Layer("y", 0.0, 1.0)}) != []


def test_in_range_compares_like_integer_bucket_bounds() -> None:
    """A bound written with four decimals, n / 10000, admits exactly the buckets >= n."""
    for n in range(BUCKETS + 1):
        bound = float(f"{n / BUCKETS:.4f}")
        if n > 0:
            assert not in_range((n - 1) / BUCKETS, bound, 1.0)
            assert in_range((n - 1) / BUCKETS, 0.0, bound)
        if n < BUCKETS:
            assert in_range(n / BUCKETS, bound, 1.0)
            assert not in_range(n / BUCKETS, 0.0, bound)


# -- independence --------------------------------------------------------------------------


def quartile_table(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """4x4 contingency table of the quarter of [0, 10000) each bucket falls in."""
    table = np.zeros((4, 4), dtype=int)
    np.add.at(table, (x * 4 // BUCKETS, y * 4 // BUCKETS), 1)
    return table


def two_by_two(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    table = np.zeros((2, 2), dtype=int)
    np.add.at(table, (x.astype(int), y.astype(int)), 1)
    return table


def p_value(table: np.ndarray) -> float:
    return float(chi2_contingency(table, correction=False).pvalue)


def test_the_chi_square_check_catches_dependence(ranking_buckets: np.ndarray) -> None:
    """The tests below could fail: one hash used for both places is caught at once."""
    assert p_value(quartile_table(ranking_buckets, ranking_buckets)) < 1e-300
    shifted = (ranking_buckets + 1_000) % BUCKETS
    assert p_value(quartile_table(ranking_buckets, shifted)) < 1e-300


def test_two_layers_are_independent(
    ranking_buckets: np.ndarray, search_buckets: np.ndarray
) -> None:
    assert p_value(quartile_table(ranking_buckets, search_buckets)) > P_FLOOR
    in_a = ranking_buckets < 3_000  # experiment "a": [0.0, 0.3) of ranking
    in_d = search_buckets < 5_000  # experiment "d": [0.0, 0.5) of search
    assert p_value(two_by_two(in_a, in_d)) > P_FLOOR


def test_layer_position_and_experiment_bucket_are_independent(
    ranking_buckets: np.ndarray, experiment_buckets: np.ndarray
) -> None:
    assert p_value(quartile_table(ranking_buckets, experiment_buckets)) > P_FLOOR
    in_b = (ranking_buckets >= 3_000) & (ranking_buckets < 7_000)  # experiment "b"
    candidate = experiment_buckets < canary_threshold(0.25)
    assert p_value(two_by_two(in_b, candidate)) > P_FLOOR
    # within the layer range, the arms still get their weights
    arms = np.array(
        [arm_for_bucket(int(b), (0.1, 0.2, 0.3, 0.4)) for b in experiment_buckets[in_b]]
    )
    assert np.max(np.abs(np.bincount(arms, minlength=4) / len(arms) - (0.1, 0.2, 0.3, 0.4))) < 0.01
