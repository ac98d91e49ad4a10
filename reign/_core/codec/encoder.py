"""The encoder: a message to its strict CBOR bytes, refusing anything the decoder would refuse.

One pure-Python walk checks each value (exact types, int range, depth, item count) and writes
its CBOR bytes. Measured against the previous walk-then-cbor2 encoder: cbor2 6.x (Rust, via
pyo3) costs ~1 us for a small message, mostly argument conversion and a Python call per value
through its encoders table; this walk does the checks it had to do anyway and writes the bytes
in the same pass: 1.8 -> 1.0 us for {"op": ..., "seq": n} (with the atom cache below). The
output is byte for byte what cbor2.dumps writes for tag-free values (a test checks it), except
infinities and NaN, which cbor2 shortens to 2-byte floats and this writes in 8 like every other
float (it also keeps a NaN's sign and payload). Decoding, the side that meets hostile input,
stays cbor2.
"""

from __future__ import annotations

import struct
from typing import Any

from ..._errors import DecodeError, EncodeError
from ..address import Address
from ..ids import MailboxID
from .model import (
    INT_LIMIT,
    INT_MIN,
    MAX_DEPTH,
    MAX_ITEMS,
    MEMORY_FACTOR,
    SCALAR_KEYS,
    SCAN_THRESHOLD,
    TAG_ADDRESS,
    TAG_MAILBOX_ID,
    TAG_OBJECT,
    TAG_TUPLE,
    KeyGuard,
)
from .scan import scan
from .types import BY_TYPE

__all__ = ["encode", "ATOM_CACHE_SIZE", "ATOM_MAX_CHARS"]


class _TooDeep(Exception):
    """Internal: nesting over MAX_DEPTH; ``path`` collects the containers on the way up."""

    def __init__(self, obj: Any) -> None:
        self.path = [obj]


def _cannot(t: type) -> EncodeError:
    if t is int:
        return EncodeError("int outside the CBOR integer range -2**64 .. 2**64-1 (bignums are not sent)")
    return EncodeError(
        f"cannot encode {t.__module__}.{t.__qualname__}: send None, bool, int, float, str, bytes, "
        "list, tuple, dict, Address, MailboxID or a class registered with reign.register_type"
    )


def _tag_header(tag: int) -> bytes:
    assert 256 <= tag < 65536
    return bytes([0xD9]) + tag.to_bytes(2, "big")


_TUPLE_HEADER = _tag_header(TAG_TUPLE)
_OBJECT_HEADER = _tag_header(TAG_OBJECT)
# Ids are written non-minimally (node as a 1-byte uint, the others as 8-byte uints): legal CBOR,
# one struct.pack, and an incarnation (ms << 16) needs 8 bytes anyway.
_ID_STRUCT = struct.Struct(">5sBBQBQ")
_ADDRESS_PREFIX = _tag_header(TAG_ADDRESS) + b"\x83\x18"
_MAILBOX_ID_PREFIX = _tag_header(TAG_MAILBOX_ID) + b"\x83\x18"
_pack_id = _ID_STRUCT.pack

#: ``_SHORT[major][n]``: the one-byte head of major type ``major`` with argument ``n < 24``.
_SHORT = tuple(tuple(bytes([major << 5 | n]) for n in range(24)) for major in range(8))
_STRING_HEADS = _SHORT[3]
_pack_head8 = struct.Struct(">BB").pack
_pack_head16 = struct.Struct(">BH").pack
_pack_head32 = struct.Struct(">BI").pack
_pack_head64 = struct.Struct(">BQ").pack
_pack_float = struct.Struct(">Bd").pack  # always 8 bytes (as cbor2 writes floats): exact
_FALSE, _TRUE, _NULL = b"\xf4", b"\xf5", b"\xf6"


def _head(major: int, n: int) -> bytes:
    """The head of major type ``major`` with argument ``0 <= n < 2**64`` (shortest form)."""
    if n < 24:
        return _SHORT[major][n]
    bits = major << 5
    if n < 0x100:
        return _pack_head8(bits | 24, n)
    if n < 0x10000:
        return _pack_head16(bits | 25, n)
    if n < 0x100000000:
        return _pack_head32(bits | 26, n)
    return _pack_head64(bits | 27, n)


#: Heads of the ints 0..255 (the value itself for 0..23).
_SMALL_UINTS = tuple(_head(0, n) for n in range(256))


def _int_bytes(value: int) -> bytes:
    """An int outside 0..255 (those are in ``_SMALL_UINTS``)."""
    if value >= 0:
        if value < 0x10000:
            return _pack_head16(0x19, value)
        if value < INT_LIMIT:
            return _head(0, value)
    elif value >= INT_MIN:
        return _head(1, -1 - value)
    raise _cannot(int)


#: Encoded dict keys and first items of tuples ("atoms": ``{"op": ...}``, ``("inc", n)``), which
#: repeat from message to message: a hit costs one dict lookup instead of encoding the string.
#: Only strings of at most ATOM_MAX_CHARS; the cache starts over past ATOM_CACHE_SIZE entries.
_ATOMS: dict[str, bytes] = {}
ATOM_CACHE_SIZE = 1024
ATOM_MAX_CHARS = 32


def _atom_bytes(text: str) -> bytes:
    """The CBOR text string ``text`` (a cache miss: encode it, and keep it if short)."""
    data = text.encode()
    n = len(data)
    encoded = (_STRING_HEADS[n] if n < 24 else _head(3, n)) + data
    if len(text) <= ATOM_MAX_CHARS:
        if len(_ATOMS) >= ATOM_CACHE_SIZE:
            _ATOMS.clear()
        _ATOMS[text] = encoded
    return encoded


def _put(obj: Any, out: list[bytes], depth: int, budget: list[Any]) -> None:
    """Append the CBOR bytes of ``obj`` to ``out``; raise EncodeError (or _TooDeep).

    ``budget[0]`` is the count of items still allowed (MAX_ITEMS); ``budget[1]``, once the
    message has a composite map key, the :class:`KeyGuard` of its keys.
    """
    t = type(obj)
    append = out.append
    if t is str:
        data = obj.encode()
        n = len(data)
        append(_STRING_HEADS[n] if n < 24 else _head(3, n))
        append(data)
    elif t is int:
        append(_SMALL_UINTS[obj] if 0 <= obj < 256 else _int_bytes(obj))
    elif t is float:
        append(_pack_float(0xFB, obj))
    elif t is bool:
        append(_TRUE if obj else _FALSE)
    elif obj is None:
        append(_NULL)
    elif t is Address:
        mid = obj.id
        append(_pack_id(_ADDRESS_PREFIX, mid.node, 0x1B, mid.incarnation, 0x1B, mid.serial))
        budget[0] -= 4  # its tag's array and the array's 3 ints
        if budget[0] < 0:
            raise EncodeError(f"message has more than {MAX_ITEMS} items")
    elif t is bytes or t is bytearray:
        data = bytes(obj) if t is bytearray else obj  # a snapshot first, then its length
        append(_head(2, len(data)))
        append(data)
    elif t is MailboxID:
        append(_pack_id(_MAILBOX_ID_PREFIX, obj.node, 0x1B, obj.incarnation, 0x1B, obj.serial))
        budget[0] -= 4
        if budget[0] < 0:
            raise EncodeError(f"message has more than {MAX_ITEMS} items")
    else:
        _put_container(obj, t, out, depth, budget)


def _guard_key(key: Any, budget: list[Any]) -> None:
    """Feed a composite map key to the message's hash-flooding check (``budget[1]``, made at the
    first such key); EncodeError when the receiver would refuse the keys so far."""
    if len(budget) == 1:
        budget.append(KeyGuard())
    reason = budget[1].add(key)  # what a key's == raises becomes encode's EncodeError
    if reason is not None:
        raise EncodeError(f"the receiver would refuse this message: {reason}")


def _put_container(obj: Any, t: type, out: list[bytes], depth: int, budget: list[Any]) -> None:
    """:func:`_put` for a dict, list, tuple or registered object (anything else: EncodeError)."""
    # Header and items must agree although the walk is Python and another thread may change a
    # container between two items (a dict can then even yield a key twice): lists and dicts
    # are copied first, one C call each and atomic under the GIL (dict.copy: ~40 ns for a
    # small one); tuples cannot change. ``items``: the data items this container adds, as
    # MAX_ITEMS counts them (its entries, plus its tag's array for a tuple or registered object).
    container = obj
    if t is dict:
        obj = obj.copy()
        items = size = 2 * len(obj)
    elif t is list:
        obj = obj[:]
        items = size = len(obj)
    elif t is tuple:
        size = len(obj)
        items = size + 1
    else:
        reg = BY_TYPE.get(t)
        if reg is None:
            raise _cannot(t)
        obj = reg.fields_of(obj)
        size = len(obj) + 1
        items = size + 1
    if depth >= MAX_DEPTH:
        raise _TooDeep(container)
    budget[0] -= items
    if budget[0] < 0:
        raise EncodeError(f"message has more than {MAX_ITEMS} items")
    depth += 1
    append = out.append
    try:
        if t is dict:
            pairs = size >> 1
            append(_SHORT[5][pairs] if pairs < 24 else _head(5, pairs))
            atoms = _ATOMS
            for key, value in obj.items():
                if type(key) is str:
                    append(atoms.get(key) or _atom_bytes(key))
                else:
                    if type(key) not in SCALAR_KEYS:
                        _guard_key(key, budget)
                    _put(key, out, depth, budget)
                # _put's two commonest branches, inlined here and in the loop below on purpose:
                # a call per item would cost ~0.1 us, a tenth of encoding a small message.
                tv = type(value)
                if tv is str:
                    data = value.encode()
                    n = len(data)
                    append(_STRING_HEADS[n] if n < 24 else _head(3, n))
                    append(data)
                elif tv is int:
                    append(_SMALL_UINTS[value] if 0 <= value < 256 else _int_bytes(value))
                else:
                    _put(value, out, depth, budget)
            return
        if t is tuple:
            append(_TUPLE_HEADER)
            append(_SHORT[4][size] if size < 24 else _head(4, size))
            if size and type(obj[0]) is str:  # an Erlang-style tag: ("inc", n)
                first = obj[0]
                append(_ATOMS.get(first) or _atom_bytes(first))
                obj = obj[1:]
        elif t is list:
            append(_SHORT[4][size] if size < 24 else _head(4, size))
        else:  # a registered object: [name, *fields]
            assert reg is not None
            append(_OBJECT_HEADER)
            append(_head(4, size))
            _put(reg.name, out, depth, budget)
        for value in obj:
            tv = type(value)
            if tv is str:
                data = value.encode()
                n = len(data)
                append(_STRING_HEADS[n] if n < 24 else _head(3, n))
                append(data)
            elif tv is int:
                append(_SMALL_UINTS[value] if 0 <= value < 256 else _int_bytes(value))
            elif tv is Address:  # _put's Address branch, inline (reply-to addresses in tuples)
                mid = value.id
                append(_pack_id(_ADDRESS_PREFIX, mid.node, 0x1B, mid.incarnation, 0x1B, mid.serial))
                budget[0] -= 4
                if budget[0] < 0:
                    raise EncodeError(f"message has more than {MAX_ITEMS} items")
            else:
                _put(value, out, depth, budget)
    except _TooDeep as exc:
        exc.path.append(container)
        raise


def encode(obj: Any) -> bytes:
    """The CBOR bytes of ``obj``.

    Raises :class:`~reign.EncodeError` naming the problem for anything outside the value model
    (an unregistered class, a set, a datetime, an int beyond 64 bits, a subclass of a built-in
    type), a cyclic structure, nesting deeper than :data:`MAX_DEPTH`, more than
    :data:`MAX_ITEMS` items (counted exactly as the receiver counts them), a string that is not
    valid Unicode, or a message the decoder would refuse as too memory-hungry (see
    :data:`MEMORY_FACTOR`) or as hash flooding (see :data:`MAX_KEY_COLLISIONS`).
    Thread-safe: a list, dict or bytearray another thread changes meanwhile is written as it
    was when the walk reached it (each is copied first), so the bytes never announce a length
    that disagrees with the items that follow, nor repeat a key.
    """
    out: list[bytes] = []
    budget: list[Any] = [MAX_ITEMS]
    t = type(obj)
    try:
        if t is dict or t is tuple or t is list:  # the usual message: straight to the container
            _put_container(obj, t, out, 0, budget)
        else:
            _put(obj, out, 0, budget)
    except _TooDeep as exc:
        ids = [id(o) for o in exc.path]
        if len(set(ids)) < len(ids):
            raise EncodeError("cannot encode a cyclic structure (a container contains itself)") from None
        raise EncodeError(f"message nests deeper than {MAX_DEPTH} levels") from None
    except EncodeError:
        raise
    except UnicodeEncodeError as exc:
        raise EncodeError(f"cannot encode message: a str is not valid Unicode ({exc.reason})") from None
    except Exception as exc:  # a to_fields hook failed, a dict changed size meanwhile, ...
        raise EncodeError(f"cannot encode message: {exc!r:.200}") from exc
    data = b"".join(out)
    n = len(data)
    # Run the decoder's memory check unless the item count alone proves it passes: no item
    # is estimated above 400 bytes plus 4 per byte of string content.
    if n > SCAN_THRESHOLD and (MAX_ITEMS - budget[0]) * 400 + 4 * n + 1024 > MEMORY_FACTOR * n:
        try:
            scan(data)
        except DecodeError as exc:
            raise EncodeError(f"the receiver would refuse this message: {exc}") from None
    return data
