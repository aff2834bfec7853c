"""Deterministic assignment of units to arms and to layer ranges (pure Python, no I/O).

Assignment by unit
------------------

A request that carries a `unit_id` (a user, a session, a device: the unit of analysis) is
placed by hashing, so that every router replica, and any other program, puts the unit in
the same place without asking anyone. The algorithm, to reproduce it in another language:

1. **Hash.** `h = MurmurHash3_x86_32(utf8(key), seed=0)`, read as an *unsigned* 32-bit
   integer. `utf8(key)` is the UTF-8 encoding of the key exactly as given: no Unicode
   normalization (a precomposed `é` and `e` + combining accent are different units), and a
   key holding a lone surrogate is refused. Hash the bytes, not a string: Java's
   `Hashing.murmur3_32()` mishandles characters outside the BMP in `hashString` (use
   `murmur3_32_fixed().hashBytes(key.getBytes(UTF_8))`), and Python's `mmh3.hash` and
   Guava return the *signed* value by default (`mmh3.hash(b, 0, signed=False)`;
   `Integer.toUnsignedLong` in Java; `h >>> 0` in JavaScript).
2. **Bucket.** `bucket = h mod 10000`, in `[0, 10000)`.
3. **Keys.** Within an experiment the key is `salt + ":" + unit_id`: its bucket picks the
   arm. The salt is per experiment (configured, or random and kept in Redis), so two
   experiments place a unit independently; a new salt reshuffles every unit. In a layer
   `L` the key is `"layer:" + L + ":" + unit_id`, and the unit's *position* in the layer is
   `bucket / 10000`, in `[0, 1)`. Different layers, and a layer and an experiment's salt,
   hash different strings and so give independent places (a salt must therefore never be
   `"layer:" + L` for a layer `L` in use).
4. **Arms of a fixed split.** With weights `w[0..k-1]` in config order, `c[i] = w[0] + ...
   + w[i]` (IEEE-754 doubles, summed left to right) and `end[i] = floor(10000 * (c[i] /
   c[k-1]) + 0.5)`, arm `i` owns the buckets `[end[i-1], end[i])` (`end[-1] = 0`): the
   first arm with `bucket < end[i]`. The last end is exactly 10,000; an arm of zero weight
   owns no bucket; each arm's size is within one bucket of its exact share.
5. **Canary.** At candidate weight `w` in `[0, 1]` the candidate owns the buckets
   `[0, floor(10000 * w + 0.5))` and the baseline the rest. The candidate's range only
   grows with `w`, so raising the weight (0.05 -> 0.25 -> 0.5 -> 1.0) only moves units from
   the baseline to the candidate, never back. (A two-arm fixed split is monotone the same
   way; with three or more arms, changing one weight shifts the ranges after it.)
6. **Layers.** An experiment in layer `L` with range `[lo, hi)` (half-open, `0 <= lo < hi
   <= 1`) holds the units with `lo <= position < hi`, compared in doubles; the others,
   and requests without a unit id, get the baseline and are not in the experiment. The
   ranges of one layer's experiments must be disjoint, so a unit is in at most one of
   them.

The modulo bias is negligible: `2**32 = 429,496 * 10,000 + 7,296`, so buckets 0 to 7,295
have 429,497 hash values each and the others 429,496. A bucket's probability is
`1/10000 * (1 + 6.3e-7)` or `1/10000 * (1 - 1.7e-6)`, and the share of any set of buckets
(an arm, a layer range) is off by at most `4.6e-7` (0.000046 percentage points): seeing
it would take about 10^12 units, while with a million units the share's own sampling
error is 0.05 percentage points.

Test vectors (`h` unsigned; bucket = `h mod 10000`):

| key | UTF-8 bytes (hex) | h | h (hex) | bucket |
|---|---|---|---|---|
| `""` | | 0 | 0x00000000 | 0 |
| `"a"` | 61 | 1009084850 | 0x3c2569b2 | 4850 |
| `"ab"` | 6162 | 2613040991 | 0x9bbfd75f | 991 |
| `"abc"` | 616263 | 3017643002 | 0xb3dd93fa | 3002 |
| `"abcd"` | 61626364 | 1139631978 | 0x43ed676a | 1978 |
| `"digits-2026-11:user-42"` | | 627529693 | 0x256757dd | 9693 |
| `"digits-2026-11:user-43"` | | 3281817321 | 0xc39c8ee9 | 7321 |
| `"layer:ranking:user-42"` | | 3204513037 | 0xbf00fd0d | 3037 |
| `"layer:search:user-42"` | | 1394688291 | 0x53214123 | 8291 |
| `"digits-2026-11:José"` | ...4a6f73c3a9 | 3838939867 | 0xe4d192db | 9867 |
| `"digits-2026-11:用户-7"` | ...e794a8e688b72d37 | 2125536722 | 0x7eb11dd2 | 6722 |
| `"digits-2026-11:🙂"` | ...f09f9982 | 1531458908 | 0x5b48355c | 8908 |

So with salt `digits-2026-11`, unit `user-42` has bucket 9693: arm 1 of a 50/50 split
(`end = [5000, 10000]`), the baseline of a canary at weight 0.5 (candidate buckets
`[0, 5000)`), and the candidate's from the weight that gives the candidate 9,694 buckets
(0.9694) on. Its position in layer `ranking` is 0.3037: inside an experiment that owns
`[0.0, 0.5)` of that layer.

Examples
--------
>>> from bandit_serve.assignment import (
...     Layer, arm_for_bucket, canary_arm, check_layers, layer_position, unit_bucket)
>>> bucket = unit_bucket("digits-2026-11", "user-42")
>>> bucket, arm_for_bucket(bucket, [0.5, 0.5]), canary_arm(bucket, 0.5)
(9693, 1, False)
>>> layer_position("ranking", "user-42"), Layer("ranking", 0.0, 0.5).contains("user-42")
(0.3037, True)
>>> check_layers({"a": Layer("ranking", 0.0, 0.5), "b": Layer("ranking", 0.5, 1.0)})
[]

The router wires these functions in (sticky assignments of bandit policies live in the
store); this package does no I/O and imports nothing from the rest of bandit-serve.
"""

from __future__ import annotations

from bandit_serve.assignment.hashing import (
    BUCKETS,
    bucket,
    experiment_key,
    key_bytes,
    layer_key,
    layer_position,
    murmur3_32,
    unit_bucket,
)
from bandit_serve.assignment.layers import Layer, check_layers, in_range
from bandit_serve.assignment.split import (
    arm_for_bucket,
    canary_arm,
    canary_threshold,
    split_boundaries,
)

__all__ = [
    "BUCKETS",
    "Layer",
    "arm_for_bucket",
    "bucket",
    "canary_arm",
    "canary_threshold",
    "check_layers",
    "experiment_key",
    "in_range",
    "key_bytes",
    "layer_key",
    "layer_position",
    "murmur3_32",
    "split_boundaries",
    "unit_bucket",
]
