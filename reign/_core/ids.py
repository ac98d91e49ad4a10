"""Mailbox identity: ``MailboxID(node, incarnation, serial)`` and its two serialized forms.

Invariants:

* ``node`` is 0..255; ``incarnation`` and ``serial`` are 0 <= x < 2**64.
* The incarnation is chosen once per node object (:func:`new_incarnation`): the wall clock in
  milliseconds in the high 48 bits and 16 random bits below, so two starts of the same node id
  (even within one millisecond) get different incarnations with overwhelming probability, and a
  later start normally gets a larger one. An address minted by an earlier run therefore never
  names a mailbox of a later run.

Text form: ``<N.I.S>`` in plain decimal (no sign, no leading zeros, no spaces), like Erlang's
``<0.85.0>``.

Binary form (``bytes(addr)``): exactly 18 bytes, ``b"R"`` (format marker) + node as one
byte + incarnation as 8 bytes big-endian + serial as 8 bytes big-endian. Nothing else parses.
"""

from __future__ import annotations

import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import DecodeError, IllegalAddressFormatError

__all__ = [
    "MailboxID",
    "parse_mailbox_id",
    "mailbox_id_from_parts",
    "new_incarnation",
    "MAX_NODE_ID",
    "UINT64_LIMIT",
    "BINARY_SIZE",
]

MAX_NODE_ID = 255
UINT64_LIMIT = 1 << 64

# At most 3 digits for the node and 20 for the others (2**64 has 20): longer text is refused
# before int() sees it, so no input reaches Python's int-conversion limit.
_TEXT_RE = re.compile(r"<(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,19})\.(0|[1-9][0-9]{0,19})>")
_BINARY = struct.Struct(">1sBQQ")
_BINARY_MAGIC = b"R"
BINARY_SIZE = _BINARY.size


@dataclass(frozen=True, slots=True)
class MailboxID:
    """The identity of a mailbox: which node, which run of that node, which mailbox of the run.

    Frozen and hashable; compares by its three fields. ``str()`` gives the ``<N.I.S>`` text form.
    """

    node: int
    incarnation: int
    serial: int

    def __post_init__(self) -> None:
        for field, value, limit in (
            ("node", self.node, MAX_NODE_ID + 1),
            ("incarnation", self.incarnation, UINT64_LIMIT),
            ("serial", self.serial, UINT64_LIMIT),
        ):
            if type(value) is not int or not 0 <= value < limit:
                raise ValueError(f"MailboxID.{field} must be an int in 0..{limit - 1}, got {value!r}")

    def __str__(self) -> str:
        return f"<{self.node}.{self.incarnation}.{self.serial}>"

    def __bytes__(self) -> bytes:
        return _BINARY.pack(_BINARY_MAGIC, self.node, self.incarnation, self.serial)


def parse_mailbox_id(data: str | bytes | bytearray | memoryview) -> MailboxID:
    """Parse the text or binary form of a mailbox id.

    Raises :class:`IllegalAddressFormatError` for anything that is not exactly one of the two
    documented forms with in-range numbers.
    """
    if isinstance(data, str):
        match = _TEXT_RE.fullmatch(data)
        if match is None:
            raise IllegalAddressFormatError(f"not an address of the form <N.I.S>: {data[:80]!r}")
        node, incarnation, serial = (int(g) for g in match.groups())
        if node > MAX_NODE_ID or incarnation >= UINT64_LIMIT or serial >= UINT64_LIMIT:
            raise IllegalAddressFormatError(f"address numbers out of range: {data[:80]!r}")
        return MailboxID(node, incarnation, serial)
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) != BINARY_SIZE or raw[:1] != _BINARY_MAGIC:
            raise IllegalAddressFormatError(
                f"binary address must be {BINARY_SIZE} bytes starting with {_BINARY_MAGIC!r}, "
                f"got {len(raw)} bytes"
            )
        _, node, incarnation, serial = _BINARY.unpack(raw)
        return MailboxID(node, incarnation, serial)
    raise IllegalAddressFormatError(f"an address is parsed from str or bytes, not {type(data).__name__}")


_last_incarnation = 0
_incarnation_lock = threading.Lock()


def new_incarnation() -> int:
    """A fresh incarnation: milliseconds since the epoch << 16 | 16 random bits (never 0).

    Within one process successive values strictly increase, so nodes created in the same
    millisecond (tests do this) still differ; across processes the clock and the random bits
    separate restarts.
    """
    global _last_incarnation
    candidate = (time.time_ns() // 1_000_000) << 16 | secrets.randbits(16)
    with _incarnation_lock:
        value = max(candidate, _last_incarnation + 1)
        _last_incarnation = value
    return value


# ---------------------------------------------------------------------------------------------
# MailboxIDs from untrusted parts, as the decoder builds them (1.5 us -> 0.3 us: no dataclass __init__).


def _slow_mailbox_id(node: int, incarnation: int, serial: int) -> MailboxID:
    return MailboxID(node, incarnation, serial)


def _make_fast_mailbox_id() -> Callable[[int, int, int], MailboxID]:
    """Build MailboxIDs by setting their three slots directly, for values already validated.

    Used only if MailboxID still has exactly the slots ``node, incarnation, serial`` and the
    result equals a normally constructed one; otherwise the normal constructor is used.
    """
    if getattr(MailboxID, "__slots__", None) != ("node", "incarnation", "serial"):
        return _slow_mailbox_id
    new = object.__new__
    slots: Mapping[str, Any] = vars(MailboxID)  # the slot descriptors
    set_node = slots["node"].__set__
    set_incarnation = slots["incarnation"].__set__
    set_serial = slots["serial"].__set__

    def fast(node: int, incarnation: int, serial: int) -> MailboxID:
        mid = new(MailboxID)
        set_node(mid, node)
        set_incarnation(mid, incarnation)
        set_serial(mid, serial)
        return mid

    probe = (7, (1 << 64) - 1, 12345)
    try:
        ok = fast(*probe) == MailboxID(*probe) and hash(fast(*probe)) == hash(MailboxID(*probe))
    except Exception:  # pragma: no cover - MailboxID changed shape
        ok = False
    return fast if ok else _slow_mailbox_id


_fast_mailbox_id = _make_fast_mailbox_id()


def mailbox_id_from_parts(node: Any, incarnation: Any, serial: Any) -> MailboxID:
    """A MailboxID from untrusted parts; DecodeError unless all three are in-range ints."""
    if (
        type(node) is int
        and type(incarnation) is int
        and type(serial) is int
        and 0 <= node <= MAX_NODE_ID
        and 0 <= incarnation < UINT64_LIMIT
        and 0 <= serial < UINT64_LIMIT
    ):
        return _fast_mailbox_id(node, incarnation, serial)
    raise DecodeError(f"mailbox id parts out of range: {node!r:.30}, {incarnation!r:.30}, {serial!r:.30}")
