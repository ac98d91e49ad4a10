"""Hash flooding: distinct keys with one hash value, computed as an attacker would, offline.

CPython randomises the hashes of str and bytes, but ``hash(n) == n`` for ints
``0 <= n < 2**61 - 1`` and a tuple's hash is its items' hashes mixed by invertible steps
(xxHash's round: add, rotate, multiply), so the last item of a tuple can be solved for to give
any chosen hash. MailboxID (a frozen dataclass) hashes as the tuple of its fields. Used by
``test_codec.py`` and ``bench/decode_bounds.py``; valid for 64-bit CPython 3.8+.
"""

from __future__ import annotations

from reign._core.ids import MailboxID

_M64 = 1 << 64
_XX1, _XX2, _XX5 = 11400714785074694791, 14029467366897019727, 2870177450012600261  # CPython's tuplehash
_P = (1 << 61) - 1  # hash(n) == n for 0 <= n < _P (64-bit CPython)


def _lane(acc: int, lane: int) -> int:
    acc = (acc + lane * _XX2) % _M64
    return (((acc << 31) | (acc >> 33)) % _M64) * _XX1 % _M64


def _last_lane(acc: int, target: int) -> int:
    """The lane that takes ``acc`` to ``target`` (inverting the rotation and multiplications)."""
    before = target * pow(_XX1, -1, _M64) % _M64
    before = ((before >> 31) | (before << 33)) % _M64
    return (before - acc) * pow(_XX2, -1, _M64) % _M64


def colliding_pairs(n: int) -> list[tuple[int, int]]:
    """``n`` distinct pairs of ints with one hash value: what an attacker can compute offline."""
    pairs = []
    a = 0
    while len(pairs) < n:
        a += 1
        b = _last_lane(_lane(_XX5, a), 12345)
        if b < _P:
            pairs.append((a, b))
    return pairs


def colliding_ids(n: int) -> list[MailboxID]:
    """``n`` distinct MailboxIDs of node 3 with one hash value (their hash is their fields')."""
    out = []
    incarnation = 0
    while len(out) < n:
        incarnation += 1
        serial = _last_lane(_lane(_lane(_XX5, 3), incarnation), 12345)
        if serial < _P:
            out.append(MailboxID(3, incarnation, serial))
    return out
