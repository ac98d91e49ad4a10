"""The structural pre-scan of large payloads: walks CBOR headers without building objects, enforcing what cbor2
enforces (depth, definite lengths, our tags only) plus no simple values, no trailing bytes,
the item count and the memory estimate.

The item count is :data:`~.model.MAX_ITEMS`'s, the encoder's own: each array head adds its
length, each map head twice its length, each tag one (its content), so the walk stops at the
first head past the cap, having looked at no more than ~MAX_ITEMS heads (runs of one-byte
items are counted by their array's head and skipped with one regex match). It also finds the
composite map keys (an array or a tag in key position), for the decoder's hash check
(:data:`~.model.COLLISION_CHECK_KEYS`); tracking maps costs map-heavy payloads ~10% more
scanning, map-free ones one test per container. Weights are bytes
of CPython 3.11 objects, each including the 8-byte pointer held by its parent, fitted as upper
bounds to tracemalloc measurements of cbor2 decoding (see
tests/test_codec.py::test_memory_estimate_is_an_upper_bound).
"""

from __future__ import annotations

import re
import struct

from ..._errors import DecodeError
from .model import MAX_CBOR_DEPTH, MAX_ITEMS, MEMORY_FACTOR, TAG_ADDRESS, TAG_MAILBOX_ID, TAG_OBJECT, TAG_TUPLE

__all__ = ["scan", "walk"]


_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_TAG_WEIGHTS = {
    TAG_TUPLE: 8,  # the tuple replaces its array, which is counted as a list
    TAG_MAILBOX_ID: 64,
    TAG_ADDRESS: 160,  # MailboxID + Address (+ whatever make_address keeps)
    TAG_OBJECT: 400,  # a user object, its __dict__ if any
}


def _list_overheads(limit: int) -> list[int]:
    """Bytes of a list of L items built by appending, beyond its items' 8-byte pointers.

    cbor2 appends, so capacity follows CPython 3.11's list growth (``newsize + newsize//8 + 6``
    rounded down to a multiple of 4): a 1-item list has room for 4. 56 bytes of list object,
    8 of pointer in the parent, 8 per spare slot.
    """
    out = [0] * limit
    capacity = 0
    for size in range(1, limit):
        if size > capacity:
            capacity = (size + (size >> 3) + 6) & ~3
        out[size] = 64 + 8 * (capacity - size)
    out[0] = 65
    return out


_LIST_OVERHEAD = _list_overheads(1024)
_NON_ASCII = re.compile(rb"[\x80-\xff]")
# One-byte items that may come in long runs (small ints, empty strings, empty containers,
# booleans, null): scanned with a regex and counted with bytes.count instead of one by one.
_RUN = re.compile(rb"[\x00-\x17\x20-\x37\x40\x60\x80\xa0\xf4-\xf6]+")
_IS_RUN = bytes(1 if _RUN.fullmatch(bytes([b])) else 0 for b in range(256))
_EXPENSIVE_NEGATIVE = bytes(range(0x25, 0x38))  # -6 .. -24: int objects, not cached
#: Bytes of a head's argument after its initial byte, by additional information 0..27.
_ARG_BYTES = (0,) * 24 + (1, 2, 4, 8)


def scan(data: bytes) -> int:
    """:func:`walk`'s estimate (for the encoder's memory check and the tests)."""
    return walk(data)[0]


def walk(data: bytes) -> tuple[int, list[tuple[int, int]] | None]:
    """Check the structure of ``data``, its item count and its decoded-memory estimate.

    Returns the estimate (bytes of Python objects ``decode`` will build) and the ``(start,
    end)`` offsets of every composite map key (an array or a tag in key position: what
    decodes to a tuple, an Address, a MailboxID or a registered object), in order, or None
    when there is none. Raises DecodeError for anything ``decode`` would refuse on its
    structure (tags, depth, lengths, simple values, trailing bytes), for more than MAX_ITEMS
    items and for an estimate over MEMORY_FACTOR bytes per byte of ``data``.
    """
    n = len(data)
    budget = MEMORY_FACTOR * n
    weight = 4096  # fixed costs of one decode: a fresh pooled decoder, the stream, frames
    items = 0  # data items below the top level, counted at their container's head (as encode does)
    i = 0
    stack: list[int] = []
    remaining = 1
    is_run = _IS_RUN
    # Composite map keys: ``maps`` holds the stack depth of each map being walked (its items
    # are walked at that depth); a key starting at depth ``key_depth`` ends when the walk pops
    # back to it (-1: not inside a key). Map-free payloads pay one test per container end.
    spans: list[tuple[int, int]] | None = None  # allocated at the first key (as maps at the first map)
    maps: list[int] | None = None
    key_at = key_depth = -1
    try:
        while True:
            if not remaining:
                if not stack:
                    break
                remaining = stack.pop()
                if maps:
                    depth = len(stack)
                    if depth == key_depth:
                        spans.append((key_at, i))  # type: ignore[union-attr]
                        key_depth = -1
                    if maps[-1] > depth:
                        maps.pop()
                continue
            b = data[i]
            if remaining >= 16 and is_run[b] and is_run[data[i + 1]] and is_run[data[i + 2]]:
                j = _RUN.match(data, i, min(n, i + remaining)).end()  # type: ignore[union-attr]
                chunk = data[i:j]
                k = j - i
                weight += (
                    8 * k
                    + 37 * (k - len(chunk.translate(None, _EXPENSIVE_NEGATIVE)))
                    + 57 * chunk.count(0x80)
                    + 65 * chunk.count(0xA0)
                )
                if weight > budget:
                    raise DecodeError(f"message would decode to more than {MEMORY_FACTOR}x its size")
                remaining -= k
                i = j
                continue
            i += 1
            remaining -= 1
            major = b >> 5
            info = b & 31
            if info < 24:
                arg = info
            elif info == 24:
                arg = data[i]
                i += 1
            elif info == 25:
                arg = (data[i] << 8) | data[i + 1]
                i += 2
            elif info == 26:
                arg = _U32(data, i)[0]
                i += 4
            elif info == 27:
                arg = _U64(data, i)[0]
                i += 8
            elif info == 31:
                if major == 7:
                    raise DecodeError("unexpected CBOR break code")
                raise DecodeError("indefinite-length CBOR items are not allowed")
            else:
                raise DecodeError(f"reserved CBOR additional information {info}")
            if major == 0:
                weight += 8 if arg <= 256 else 45
            elif major == 1:
                weight += 8 if arg <= 4 else 45
            elif major == 3:
                end = i + arg
                if end > n:
                    raise IndexError
                if arg <= 1:
                    weight += 8
                elif _NON_ASCII.search(data, i, end) is None:
                    weight += 58 + arg
                else:
                    weight += 88 + 4 * arg
                i = end
            elif major == 4:
                if maps and remaining & 1 and key_depth < 0 and maps[-1] == len(stack):  # a map key
                    key_at = i - 1 - _ARG_BYTES[info]
                    if spans is None:
                        spans = []
                    if arg:
                        key_depth = len(stack)
                    else:
                        spans.append((key_at, i))
                if arg:
                    items += arg
                    if items > MAX_ITEMS:
                        raise DecodeError(f"message has more than {MAX_ITEMS} items")
                    weight += _LIST_OVERHEAD[arg] if arg < 1024 else 136 + arg
                    stack.append(remaining)
                    remaining = arg
                    if len(stack) > MAX_CBOR_DEPTH:
                        raise DecodeError(f"CBOR nesting deeper than {MAX_CBOR_DEPTH} levels")
                else:
                    weight += 65
            elif major == 5:
                if arg:
                    items += 2 * arg
                    if items > MAX_ITEMS:
                        raise DecodeError(f"message has more than {MAX_ITEMS} items")
                    weight += 73 + max(160 - 16 * arg, 40 * arg)
                    stack.append(remaining)
                    remaining = 2 * arg
                    if maps is None:
                        maps = []
                    maps.append(len(stack))
                    if len(stack) > MAX_CBOR_DEPTH:
                        raise DecodeError(f"CBOR nesting deeper than {MAX_CBOR_DEPTH} levels")
                else:
                    weight += 73
            elif major == 2:
                end = i + arg
                if end > n:
                    raise IndexError
                weight += 8 if arg <= 1 else 44 + arg
                i = end
            elif major == 6:
                tag_weight = _TAG_WEIGHTS.get(arg)
                if tag_weight is None:
                    raise DecodeError(f"CBOR tag {arg} is not allowed")
                items += 1
                if items > MAX_ITEMS:
                    raise DecodeError(f"message has more than {MAX_ITEMS} items")
                weight += tag_weight
                if maps and remaining & 1 and key_depth < 0 and maps[-1] == len(stack):  # a map key
                    key_at = i - 1 - _ARG_BYTES[info]
                    key_depth = len(stack)
                    if spans is None:
                        spans = []
                stack.append(remaining)
                remaining = 1
                if len(stack) > MAX_CBOR_DEPTH:
                    raise DecodeError(f"CBOR nesting deeper than {MAX_CBOR_DEPTH} levels")
            else:  # major 7
                if 20 <= info <= 22:
                    weight += 8
                elif info >= 25:
                    weight += 33
                else:
                    raise DecodeError("CBOR simple values and undefined are not allowed")
            if weight > budget:
                raise DecodeError(f"message would decode to more than {MEMORY_FACTOR}x its size")
    except (IndexError, struct.error):
        raise DecodeError("truncated CBOR data") from None
    if i != n:
        if i > n:
            raise DecodeError("truncated CBOR data")
        raise DecodeError(f"{n - i} trailing bytes after the message")
    return weight, spans
