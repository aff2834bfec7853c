"""The assignment hash: 32-bit MurmurHash3 (x86_32) of a key's UTF-8 bytes, and buckets.

Pure Python, no dependency: the reference that other languages reproduce (the test vectors
are in the package docstring). The C package ``mmh3`` computes the same numbers and is the
tests' oracle; it is not used here (and ``mmh3.hash`` given a ``str`` holding a lone
surrogate crashes the interpreter in mmh3 5.3.1, where :func:`key_bytes` refuses it).
"""

from __future__ import annotations

import struct

__all__ = [
    "BUCKETS",
    "bucket",
    "experiment_key",
    "key_bytes",
    "layer_key",
    "layer_position",
    "murmur3_32",
    "unit_bucket",
]

BUCKETS = 10_000
"""Buckets per hash space: a bucket is ``murmur3_32(key) % BUCKETS``, in ``[0, BUCKETS)``."""

_MASK = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32 of ``data``: an unsigned 32-bit integer.

    Austin Appleby's ``MurmurHash3_x86_32`` (public domain), blocks read little-endian.
    About 5 µs for a 30-byte key in CPython (``benchmarks/assignment.py``).

    Parameters
    ----------
    data : bytes
        The bytes to hash (see :func:`key_bytes` for strings).
    seed : int, default 0
        Seed in ``[0, 2**32)``; assignment always uses 0.

    Returns
    -------
    int
        The hash in ``[0, 2**32)``; ``mmh3.hash(data, seed, signed=False)`` gives the same.

    Examples
    --------
    >>> murmur3_32(b"")
    0
    >>> murmur3_32(b"Hello, world!")
    3224780355
    >>> hex(murmur3_32(b"digits-2026-11:user-42"))
    '0x256757dd'
    """
    if not 0 <= seed <= _MASK:
        raise ValueError(f"The seed must lie in [0, 2**32); got {seed}.")
    n = len(data)
    h = seed
    for block in struct.unpack_from(f"<{n >> 2}I", data):
        k = (block * _C1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        k = (k * _C2) & _MASK
        h ^= k
        h = ((h << 13) | (h >> 19)) & _MASK
        h = (h * 5 + 0xE6546B64) & _MASK
    tail = n & 3
    if tail:
        k = int.from_bytes(data[n - tail :], "little")
        k = (k * _C1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        k = (k * _C2) & _MASK
        h ^= k
    h ^= n & _MASK
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    return h ^ (h >> 16)


def key_bytes(key: str) -> bytes:
    """The UTF-8 bytes of ``key``, as given (no Unicode normalization).

    Raises
    ------
    ValueError
        ``key`` holds a lone surrogate (``"\\ud800"``, which JSON's ``\\u`` escapes can
        produce): it has no UTF-8 encoding, and languages disagree on how to replace it.

    Examples
    --------
    >>> key_bytes("café")
    b'caf\\xc3\\xa9'
    """
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"The key {key!r} is not valid Unicode: it holds a lone surrogate at index "
            f"{exc.start}, which has no UTF-8 encoding."
        ) from None


def bucket(key: str) -> int:
    """``murmur3_32(UTF-8 bytes of key) % BUCKETS``: the key's bucket in ``[0, 10000)``.

    Examples
    --------
    >>> bucket("digits-2026-11:user-42")
    9693
    """
    return murmur3_32(key_bytes(key)) % BUCKETS


def experiment_key(salt: str, unit_id: str) -> str:
    """The key hashed to place a unit in an experiment: ``f"{salt}:{unit_id}"``.

    Examples
    --------
    >>> experiment_key("digits-2026-11", "user-42")
    'digits-2026-11:user-42'
    """
    return f"{salt}:{unit_id}"


def layer_key(layer: str, unit_id: str) -> str:
    """The key hashed to place a unit in a layer: ``f"layer:{layer}:{unit_id}"``.

    Examples
    --------
    >>> layer_key("ranking", "user-42")
    'layer:ranking:user-42'
    """
    return f"layer:{layer}:{unit_id}"


def unit_bucket(salt: str, unit_id: str) -> int:
    """The unit's bucket in the experiment with this salt, in ``[0, 10000)``.

    Examples
    --------
    >>> unit_bucket("digits-2026-11", "user-42")
    9693
    """
    return bucket(f"{salt}:{unit_id}")


def layer_position(layer: str, unit_id: str) -> float:
    """The unit's position in a layer: its layer bucket / 10,000, in ``[0, 1)``.

    Examples
    --------
    >>> layer_position("ranking", "user-42")
    0.3037
    """
    return bucket(f"layer:{layer}:{unit_id}") / BUCKETS
