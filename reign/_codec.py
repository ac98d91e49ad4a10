"""The strict CBOR message codec: what crosses between nodes, and nothing else (no asyncio).

Value model (:func:`encode` accepts exactly these, :func:`decode` returns nothing else):
``None``, ``bool``, ``int`` in ``-2**64 <= x < 2**64`` (CBOR major types 0/1 only, never
bignum tags), ``float``, ``str``, ``bytes`` (``bytearray`` is sent as bytes), ``list``,
``tuple``, ``dict`` (keys: any supported hashable value), :class:`~reign.Address`,
:class:`~reign.MailboxID` and instances of classes registered with :func:`register_type`.
Types are matched exactly: a subclass of ``int``/``str``/``dict``/... (an ``IntEnum``, an
``OrderedDict``, a ``NamedTuple``) is refused unless registered itself. Nothing is pickled.

Wire form: plain CBOR (RFC 8949) with four private tags of ours, taken from IANA's
first-come-first-served range (unregistered; meaningful only between reign nodes):

========================  ======  ============================================================
value                      tag     content
========================  ======  ============================================================
tuple                      51200   array of the items
MailboxID                  51201   array ``[node, incarnation, serial]``
Address                    51202   array ``[node, incarnation, serial]``
registered object          51203   array ``[name, field values...]`` (dataclasses: field order)
========================  ======  ============================================================

Decoder invariants (every failure is :class:`~reign.DecodeError` with a short reason; no other
exception escapes :func:`decode` for bytes-like input):

* only the four tags above (cbor2's built-in tags — 0/1 datetimes, 2/3 bignums, 28/29 shared
  references, 35 regex, 36 MIME, 256/25 string references, 258 sets, 55799 self-describe, ... —
  are all refused, through a ``semantic_decoders`` mapping whose lookup raises for any other
  tag); no simple values or ``undefined`` (in small payloads the decoded value is walked for
  them, only when one of their initial bytes occurs at all); no indefinite lengths; no
  duplicate map keys; no map used as a map key; no trailing bytes;
* nesting at most :data:`MAX_CBOR_DEPTH` CBOR levels (arrays, maps and tags each count one);
* a CBOR array in map-key position decodes as a tuple (cbor2 decodes keys immutably). This is
  the one non-canonical form accepted: it yields exactly the value a tagged tuple would.
* memory: payloads over :data:`SCAN_THRESHOLD` bytes are first walked header by header in pure
  Python (:func:`_scan`, no objects built) and refused when the Python objects they would
  decode into are estimated (from CPython 3.11 object sizes, checked by the tests with
  tracemalloc) to exceed :data:`MEMORY_FACTOR` bytes per payload byte. So decoding ``n`` bytes
  builds at most ~``MEMORY_FACTOR * n`` bytes of objects; 1 MiB of empty arrays (65 bytes
  each) or empty maps (72) is refused before anything is built. Smaller payloads cannot
  amplify past ~72 x 4 KiB.
* :func:`encode` refuses (``EncodeError``) any message the decoder would refuse, so a sender
  learns of it instead of its peer dropping the connection.

Registry: :func:`register_type` is process-global (like Go's ``gob.Register``); the registered
name, not the Python class path, identifies the class on the wire.
"""

from __future__ import annotations

import dataclasses
import io
import operator
import re
import struct
from collections.abc import Callable
from typing import Any, TypeVar, overload

from cbor2 import CBORDecoder, CBORSimpleValue, undefined

from ._address import Address
from ._errors import DecodeError, EncodeError
from ._ids import MAX_NODE_ID, UINT64_LIMIT, MailboxID
from ._messages import MailboxClosed, MultipleClaim

__all__ = [
    "register_type",
    "encode",
    "decode",
    "BatchDecoder",
    "MAX_DEPTH",
    "MAX_CBOR_DEPTH",
    "MAX_ITEMS",
    "SCAN_THRESHOLD",
    "MEMORY_FACTOR",
]

#: Deepest nesting of containers (list, tuple, dict, registered object) a message may have;
#: the top-level container is level 1. Erlang's external term format has no such limit, but
#: the receiving decoder needs one (cbor2's Rust code recurses on the C stack: it crashed the
#: process, SIGSEGV, somewhere between 1,000 and 10,000 levels when it still encoded for us),
#: and both the encoder here and the receiver's checks recurse once per level; 64 is far
#: beyond any real message shape and keeps every recursion in this module shallow.
MAX_DEPTH = 64

#: Deepest CBOR nesting :func:`decode` accepts (cbor2 counts non-empty arrays, non-empty maps
#: and tags): a tuple or registered object is a tag plus an array (2 levels), and an Address or
#: MailboxID at the bottom adds 2 more, so the deepest encodable message needs 2*64+2.
MAX_CBOR_DEPTH = 2 * MAX_DEPTH + 2

#: Most container items (list/tuple items, dict keys and values, fields) one message may hold.
#: A DAG that reuses a sublist can be exponentially larger than its object graph; this stops
#: its walk (~0.5 s). Checking and writing an item costs ~0.1-0.3 us on each side, so 4 Mi
#: items already stall an event loop for a second; bulk data belongs in ``bytes``.
MAX_ITEMS = 1 << 22

#: Payloads larger than this are scanned (:func:`_scan`) before decoding. Below it the worst
#: amplification (empty maps, 72 bytes of objects per byte) stays under 300 KiB, and skipping
#: the pure-Python scan keeps small messages at cbor2's speed.
SCAN_THRESHOLD = 4096

#: Largest estimated decoded size per payload byte. Measured with tracemalloc on CPython 3.11
#: (see tests): empty arrays cost 65 bytes per byte, empty maps 72, one-entry maps with a
#: 2-letter key ~57, pairs ``[1, 2]`` 32, records of three short fields ~19, small ints 8.
#: 60 refuses the pure "empty containers" bombs while accepting every realistic shape.
MEMORY_FACTOR = 60

_TAG_TUPLE = 51200
_TAG_MAILBOX_ID = 51201
_TAG_ADDRESS = 51202
_TAG_OBJECT = 51203

_INT_MIN = -(1 << 64)
_INT_LIMIT = 1 << 64

_NoneType = type(None)
#: Exact types that contain nothing to check (Address and MailboxID are valid by construction).
_LEAVES = frozenset({_NoneType, bool, float, str, bytes, bytearray, Address, MailboxID})
#: Types register_type refuses: the codec already has a meaning for them.
_BUILTIN_TYPES = frozenset({*_LEAVES, int, list, tuple, dict})

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# MailboxID construction without the dataclass __init__ (1.5 us -> 0.3 us on the decode path).


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
    set_node = MailboxID.node.__set__  # type: ignore[attr-defined]
    set_incarnation = MailboxID.incarnation.__set__  # type: ignore[attr-defined]
    set_serial = MailboxID.serial.__set__  # type: ignore[attr-defined]

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


# ---------------------------------------------------------------------------------------------
# The registry of user types.


class _Registration:
    """How one registered class crosses the wire."""

    __slots__ = ("cls", "name", "fields_of", "build", "nfields", "kw_names")

    def __init__(
        self,
        cls: type,
        name: str,
        fields_of: Callable[[Any], Any],
        build: Callable[..., Any],
        nfields: int | None,
        kw_names: tuple[str, ...] | None,
    ) -> None:
        self.cls = cls
        self.name = name
        self.fields_of = fields_of  # obj -> list/tuple of field values
        self.build = build  # dataclass: cls; hooks: from_fields
        self.nfields = nfields  # None for hook-based classes (any count)
        self.kw_names = kw_names  # dataclasses with kw_only fields are built by keyword

    def rebuild(self, value: list[Any] | tuple[Any, ...]) -> Any:
        """The object for a decoded ``[name, fields...]``; DecodeError on any failure."""
        fields = value[1:]
        try:
            if self.nfields is None:
                return self.build(list(fields))
            if len(fields) != self.nfields:
                raise DecodeError(
                    f"{self.name} has {self.nfields} fields, the message gives {len(fields)}"
                )
            if self.kw_names is not None:
                return self.build(**dict(zip(self.kw_names, fields)))
            return self.build(*fields)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot rebuild {self.name}: {exc!r:.200}") from exc


_BY_NAME: dict[str, _Registration] = {}
_BY_TYPE: dict[type, _Registration] = {}


def _dataclass_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return operator.attrgetter(*names)  # type: ignore[return-value]


def _checked_hook_fields(to_fields: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    def fields_of(obj: Any) -> Any:
        fields = to_fields(obj)
        if type(fields) is tuple:
            return fields
        if type(fields) is not list:
            raise EncodeError(f"to_fields of {name} must return a list or tuple, not {type(fields).__name__}")
        return tuple(fields)  # a snapshot: the hook may hand out a list another thread changes

    return fields_of


@overload
def register_type(cls: type[_T], /, *, name: str | None = ..., to_fields: Callable[[Any], Any] | None = ...,
                  from_fields: Callable[[list[Any]], Any] | None = ...) -> type[_T]: ...
@overload
def register_type(cls: None = ..., /, *, name: str | None = ..., to_fields: Callable[[Any], Any] | None = ...,
                  from_fields: Callable[[list[Any]], Any] | None = ...) -> Callable[[type[_T]], type[_T]]: ...


def register_type(
    cls: type[Any] | None = None,
    /,
    *,
    name: str | None = None,
    to_fields: Callable[[Any], Any] | None = None,
    from_fields: Callable[[list[Any]], Any] | None = None,
) -> Any:
    """Let instances of ``cls`` cross between nodes, identified on the wire by ``name``.

    Usable as ``@register_type``, ``@register_type(name="chat.Message")`` or
    ``register_type(cls, name=...)``; returns ``cls``. A dataclass is sent as its fields in
    field order and rebuilt with ``cls(*fields)`` (every field must be an ``init`` field). Any
    other class needs both hooks: ``to_fields(obj) -> list`` (may be called more than once per
    send, so it must not have side effects) and ``from_fields(list) -> obj``. The default name
    is ``f"{cls.__module__}.{cls.__qualname__}"``; every node must register the same name.

    Registering the same class under the same name again does nothing. Raises ``ValueError``
    when the name is taken by another class or the class is registered under another name,
    ``TypeError`` for a non-class, a built-in type the codec already handles, a non-dataclass
    without hooks, or only one hook.
    """
    if cls is None:
        def decorator(c: type[_T]) -> type[_T]:
            return register_type(c, name=name, to_fields=to_fields, from_fields=from_fields)

        return decorator
    if not isinstance(cls, type):
        raise TypeError(f"register_type needs a class, not {cls!r:.80}")
    if cls in _BUILTIN_TYPES:
        raise TypeError(f"{cls.__qualname__} is encoded natively and cannot be registered")
    if name is None:
        name = f"{cls.__module__}.{cls.__qualname__}"
    if type(name) is not str or not name:
        raise TypeError("name must be a non-empty str")
    if (to_fields is None) != (from_fields is None):
        raise TypeError("give both to_fields and from_fields, or neither (dataclasses)")
    existing = _BY_TYPE.get(cls)
    if existing is not None:
        if existing.name == name:
            return cls
        raise ValueError(f"{cls.__qualname__} is already registered as {existing.name!r}")
    other = _BY_NAME.get(name)
    if other is not None:
        raise ValueError(f"the name {name!r} is already registered for {other.cls.__module__}.{other.cls.__qualname__}")

    if to_fields is not None and from_fields is not None:
        if not callable(to_fields) or not callable(from_fields):
            raise TypeError("to_fields and from_fields must be callable")
        reg = _Registration(cls, name, _checked_hook_fields(to_fields, name), from_fields, None, None)
    else:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(
                f"{cls.__qualname__} is not a dataclass: pass to_fields= and from_fields= to register it"
            )
        fields = dataclasses.fields(cls)
        not_init = [f.name for f in fields if not f.init]
        if not_init:
            raise TypeError(
                f"{cls.__qualname__} has init=False fields {not_init}: pass to_fields= and from_fields="
            )
        names = tuple(f.name for f in fields)
        kw_only = any(getattr(f, "kw_only", False) is True for f in fields)
        reg = _Registration(cls, name, _dataclass_getter(names), cls, len(names), names if kw_only else None)

    _BY_NAME[name] = reg
    _BY_TYPE[cls] = reg
    return cls


# ---------------------------------------------------------------------------------------------
# Encoding: one pure-Python walk checks each value (exact types, int range, depth, item count)
# and writes its CBOR bytes. Measured against the previous walk-then-cbor2 encoder: cbor2 6.x
# (Rust, via pyo3) costs ~1 us for a small message, mostly argument conversion and a Python
# call per value through its encoders table; this walk does the checks it had to do anyway and
# writes the bytes in the same pass: 1.8 -> 1.0 us for {"op": ..., "seq": n} (with the atom
# cache below). The output is byte for byte what cbor2.dumps writes for tag-free values (a
# test checks it), except infinities and NaN, which cbor2 shortens to 2-byte floats and this
# writes in 8 like every other float (it also keeps a NaN's sign and payload). Decoding, the side that meets hostile input, stays cbor2.


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


_TUPLE_HEADER = _tag_header(_TAG_TUPLE)
_OBJECT_HEADER = _tag_header(_TAG_OBJECT)
# Ids are written non-minimally (node as a 1-byte uint, the others as 8-byte uints): legal CBOR,
# one struct.pack, and an incarnation (ms << 16) needs 8 bytes anyway.
_ID_STRUCT = struct.Struct(">5sBBQBQ")
_ADDRESS_PREFIX = _tag_header(_TAG_ADDRESS) + b"\x83\x18"
_MAILBOX_ID_PREFIX = _tag_header(_TAG_MAILBOX_ID) + b"\x83\x18"
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
        if value < _INT_LIMIT:
            return _head(0, value)
    elif value >= _INT_MIN:
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


def _put(obj: Any, out: list[bytes], depth: int, budget: list[int]) -> None:
    """Append the CBOR bytes of ``obj`` to ``out``; raise EncodeError (or _TooDeep)."""
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
    elif t is bytes or t is bytearray:
        data = bytes(obj) if t is bytearray else obj  # a snapshot first, then its length
        append(_head(2, len(data)))
        append(data)
    elif t is MailboxID:
        append(_pack_id(_MAILBOX_ID_PREFIX, obj.node, 0x1B, obj.incarnation, 0x1B, obj.serial))
    else:
        _put_container(obj, t, out, depth, budget)


def _put_container(obj: Any, t: type, out: list[bytes], depth: int, budget: list[int]) -> None:
    """:func:`_put` for a dict, list, tuple or registered object (anything else: EncodeError)."""
    # Header and items must agree although the walk is Python and another thread may change a
    # container between two items (a dict can then even yield a key twice): lists and dicts
    # are copied first, one C call each and atomic under the GIL (dict.copy: ~40 ns for a
    # small one); tuples cannot change.
    container = obj
    if t is dict:
        obj = obj.copy()
        size = 2 * len(obj)
    elif t is list:
        obj = obj[:]
        size = len(obj)
    elif t is tuple:
        size = len(obj)
    else:
        reg = _BY_TYPE.get(t)
        if reg is None:
            raise _cannot(t)
        obj = reg.fields_of(obj)
        size = len(obj) + 1
    if depth >= MAX_DEPTH:
        raise _TooDeep(container)
    budget[0] -= size
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
    :data:`MAX_ITEMS` items, a string that is not valid Unicode, or a message the decoder would
    refuse as too memory-hungry (see :data:`MEMORY_FACTOR`). Thread-safe: a list, dict or bytearray
    another thread changes meanwhile is written as it was when the walk reached it (each is
    copied first), so the bytes never announce a length that disagrees with the items that
    follow, nor repeat a key.
    """
    out: list[bytes] = []
    budget = [MAX_ITEMS]
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
            _scan(data)
        except DecodeError as exc:
            raise EncodeError(f"the receiver would refuse this message: {exc}") from None
    return data


# ---------------------------------------------------------------------------------------------
# Decoding.


class _TagTable(dict):  # type: ignore[type-arg]
    """cbor2's ``semantic_decoders``: our tags; any other tag raises instead of cbor2's default."""

    def __missing__(self, tag: int) -> Any:
        raise DecodeError(f"CBOR tag {tag} is not allowed")


def _decode_tuple(value: Any) -> tuple[Any, ...]:
    t = type(value)
    if t is list:
        return tuple(value)
    if t is tuple:  # in a map key, cbor2 already decoded the array as a tuple
        return value  # type: ignore[no-any-return]
    raise DecodeError("the tuple tag must hold an array")


def _id_parts(value: Any) -> MailboxID:
    t = type(value)
    if (t is list or t is tuple) and len(value) == 3:
        return mailbox_id_from_parts(*value)
    raise DecodeError("a mailbox id must be an array of 3 integers")


def _decode_mailbox_id(value: Any) -> MailboxID:
    return _id_parts(value)


def _decode_object(value: Any) -> Any:
    t = type(value)
    if (t is not list and t is not tuple) or not value:
        raise DecodeError("a registered object must be an array [name, fields...]")
    name = value[0]
    reg = _BY_NAME.get(name) if type(name) is str else None
    if reg is None:
        raise DecodeError(f"unknown registered type name {name!r:.100}")
    return reg.rebuild(value)


def _object_hook(value: Any, immutable: bool) -> Any:
    if immutable:  # cbor2 would return a frozendict: a map inside a map key
        raise DecodeError("a map cannot be (part of) a map key")
    return value


def _tag_decoder(build: Callable[[Any], Any]) -> Callable[[bool], tuple[None, Callable[[Any], Any]]]:
    """One of our tags' decoders for cbor2's ``semantic_decoders``, in cbor2's "shareable"
    form: ``begin(immutable)`` returns ``(None, build)`` and cbor2 calls ``build(item)``.

    cbor2 6.x looks up ``_cbor2_name`` (and ``_cbor2_immutable``) on every semantic decoder it
    calls; on a plain function the failed lookup builds and discards an AttributeError for each
    tagged item (measured: about a third of the decode time of a message carrying an address).
    With both attributes present nothing is raised. ``_cbor2_immutable = False``: the tagged
    item itself is decoded as usual (a map inside a map key is still refused by the object hook).
    """
    answer = (None, build)

    def begin(immutable: bool) -> tuple[None, Callable[[Any], Any]]:
        return answer

    begin._cbor2_name = None  # type: ignore[attr-defined]
    begin._cbor2_immutable = False  # type: ignore[attr-defined]
    return begin


class _Decoder:
    """A reusable cbor2 decoder (0.9 us to construct) bound to one call's ``make_address``."""

    __slots__ = ("cbor", "make_address", "addresses")

    def __init__(self, read_size: int = 1 << 62) -> None:
        self.make_address: Callable[[MailboxID], Any] | None = None
        #: (node, incarnation, serial) -> Address, when the decoder serves one node (batch).
        self.addresses: dict[tuple[int, int, int], Any] | None = None
        tags = _TagTable({
            _TAG_TUPLE: _tag_decoder(_decode_tuple),
            _TAG_MAILBOX_ID: _tag_decoder(_decode_mailbox_id),
            _TAG_ADDRESS: _tag_decoder(self._decode_address),
            _TAG_OBJECT: _tag_decoder(_decode_object),
        })
        self.cbor = CBORDecoder(
            io.BytesIO(b""),
            semantic_decoders=tags,
            object_hook=_object_hook,
            max_depth=MAX_CBOR_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            # Default: one read() of the whole payload (excess is what it seeks back). The
            # batch decoder reads small chunks instead, since its stream holds many payloads.
            read_size=read_size,
        )

    def _decode_address(self, value: Any) -> Any:
        if type(value) is list and len(value) == 3:  # the common case
            cache = self.addresses
            if cache is None:
                return self.make_address(mailbox_id_from_parts(*value))  # type: ignore[misc]
            node, incarnation, serial = value
            key = (node, incarnation, serial)
            address = cache.get(key)
            # (1.0, 2, 3) would find (1, 2, 3): the types must be exact as well
            if address is not None and type(node) is int is type(incarnation) is type(serial):
                return address
            address = self.make_address(mailbox_id_from_parts(node, incarnation, serial))  # type: ignore[misc]
            if len(cache) >= ADDRESS_CACHE_SIZE:
                cache.clear()
            cache[key] = address
            return address
        return self.make_address(_id_parts(value))  # type: ignore[misc]


_DECODER_POOL: list[_Decoder] = []
_EMPTY_STREAM = io.BytesIO(b"")
#: Every byte except the initial bytes of simple values 0..19, undefined (0xf7) and 1-byte
#: simple values (0xf8). If ``payload.translate(None, _NOT_SIMPLE)`` is not empty (such a byte
#: occurs anywhere, maybe inside a string or an int), the decoded value of a small payload is
#: walked for CBORSimpleValue / undefined. (translate: 0.2 us for 50 bytes, a regex 0.4.)
_NOT_SIMPLE = bytes(b for b in range(256) if not (0xE0 <= b <= 0xF3 or b in (0xF7, 0xF8)))


_PLAIN = _LEAVES | {int}


def _has_simple(value: Any) -> bool:
    """Whether a decoded value holds a CBORSimpleValue or undefined anywhere."""
    t = type(value)
    if t is dict:
        for k, v in value.items():
            if (type(k) not in _PLAIN and _has_simple(k)) or (type(v) not in _PLAIN and _has_simple(v)):
                return True
        return False
    if t is list or t is tuple:
        for v in value:
            if type(v) not in _PLAIN and _has_simple(v):
                return True
        return False
    if t is CBORSimpleValue or value is undefined:
        return True
    reg = _BY_TYPE.get(t)
    if reg is not None:
        return _has_simple(list(reg.fields_of(value)))
    return False  # an address from make_address, or a plain value


def _reason(exc: BaseException) -> str:
    """Our own DecodeError's message if cbor2 wrapped one, else cbor2's message."""
    seen = exc
    while seen is not None:
        if isinstance(seen, DecodeError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(exc) or type(exc).__name__
    return f"invalid CBOR: {text[:200]}"


def decode(data: bytes | bytearray | memoryview, make_address: Callable[[MailboxID], Any]) -> Any:
    """The value encoded in ``data`` (exactly one CBOR item, nothing after it).

    Addresses are built with ``make_address(mailbox_id)``, so the caller binds them to its
    node. Raises :class:`~reign.DecodeError` with a short reason for anything
    :func:`encode` would not have produced (see the module docstring); nothing else escapes
    for bytes-like ``data``. Thread-safe.
    """
    try:
        dec = _DECODER_POOL.pop()
    except IndexError:
        dec = _Decoder()
    dec.make_address = make_address
    value = _decode_with(dec, data)  # on error the decoder is dropped: cbor2 may be mid-item
    dec.make_address = None
    _DECODER_POOL.append(dec)
    return value


#: Read size of the batch decoder: it reads this much per refill from a stream of many
#: payloads (and seeks back what it did not use). Measured for 5,000 small messages: 1.9 us per
#: message at 64-256 bytes, 4.4 us when each decode read the whole rest of the stream.
_BATCH_READ_SIZE = 256
#: Translation table: 1 for the initial bytes of simple values and undefined (see
#: ``_NOT_SIMPLE``), 0 for every other byte. One ``translate`` of a whole read marks where a
#: payload may hold one (0.4 ns per byte, where a per-payload check cost 0.2 us per message).
_SIMPLE_MARKS = bytes(0 if b in _NOT_SIMPLE else 1 for b in range(256))
#: Addresses a batch decoder keeps to hand out again for a repeated id (a reply-to address
#: in every request): at most this many, then it starts over.
ADDRESS_CACHE_SIZE = 4096
#: A batch decoder copies a read up to this size into its stream (and keeps the copy until the
#: next read); a larger read gets a stream of its own, dropped at :meth:`BatchDecoder.finish`.
_KEEP_READ_BYTES = 64 * 1024
#: Bytes translated at a time to find simple-value bytes in small payloads.
_MARK_WINDOW = 16 * 1024


class BatchDecoder:
    """Decodes the message payloads of one read in place, from one stream over the read's bytes.

    Call :meth:`start` with the read's bytes, then the function it returns with each payload's
    ``(start, end)`` offsets, in increasing order. Each payload must hold exactly one CBOR item
    under the same rules as :func:`decode`; the stream position is checked at every payload
    end, so an item can neither stop short of its payload nor run into the next one. Decoding
    a read from one stream saves the per-message set-up (about half the cost of decoding a
    small message) and every payload copy. Addresses are bound with ``make_address``; the
    Address of an id seen recently is reused (addresses are immutable). For one thread (the
    connector's loop).
    """

    __slots__ = (
        "_make_address", "_decoder", "_stream", "_seek", "_tell", "_decode_next", "_data",
        "_marks", "_mark", "_window_start", "_window_end",
    )

    def __init__(self, make_address: Callable[[MailboxID], Any]) -> None:
        self._make_address = make_address
        self._data = self._marks = b""
        self._mark = self._window_start = self._window_end = -1
        self._fresh()

    def _fresh(self) -> _Decoder:
        decoder = _Decoder(_BATCH_READ_SIZE)
        decoder.make_address = self._make_address
        decoder.addresses = {}
        self._decoder = decoder
        self._use_stream(io.BytesIO())
        self._data = self._marks = b""  # after an error, nothing of the failed read is kept
        return decoder

    def _use_stream(self, stream: io.BytesIO) -> None:
        # Setting cbor2's fp costs ~0.35 us (it calls readable() and seekable()), so a small
        # read refills the one small stream instead (~0.1 us); a large read gets a stream of
        # its own, which shares its bytes instead of copying them. cbor2 seeks back and drops
        # its read-ahead at the end of every successful decode(), so a refill never meets
        # stale buffered bytes; after a failed one the decoder is replaced anyway.
        cbor = self._decoder.cbor
        cbor.fp = stream
        self._stream = stream
        self._seek, self._tell, self._decode_next = stream.seek, stream.tell, cbor.decode

    def start(self, data: bytes) -> Callable[[int, int], Any]:
        """Begin decoding payloads inside ``data``; returns ``decode_at(start, end)``.

        ``decode_at`` returns the value of ``data[start:end]`` or raises :class:`DecodeError`;
        calls must come in increasing offset order, and after an error it must not be called
        again (the next :meth:`start` uses a fresh cbor2 decoder, since cbor2 may be left
        mid-item). Call :meth:`finish` when done. Call ``start`` once per read: every
        :class:`~reign._wire.Messages` run of one ``receive_data`` call shares the same
        ``data``, and restarting per run would copy and re-scan the read each time.
        """
        if len(data) > _KEEP_READ_BYTES:
            self._use_stream(io.BytesIO(data))
        else:
            stream = self._stream
            stream.seek(0)
            stream.write(data)
            stream.truncate()
        self._data = data
        self._mark = self._window_end = -1  # windows are translated as small payloads need them
        return self._decode_at

    def _next_mark(self, start: int, end: int) -> int:
        """Where the first simple-value byte at or after ``start`` is, or the end of the
        translated window when there is none before it (the window always covers ``end``).

        Windows of at least _MARK_WINDOW bytes: one ``translate`` serves many small payloads,
        and large payloads (checked by ``_scan``) are never translated.
        """
        if end > self._window_end:
            data = self._data
            window_end = start + _MARK_WINDOW
            if window_end < end:
                window_end = end
            if window_end > len(data):
                window_end = len(data)
            self._marks = data[start:window_end].translate(_SIMPLE_MARKS)
            self._window_start, self._window_end = start, window_end
        found = self._marks.find(1, start - self._window_start)
        mark = self._window_start + found if found >= 0 else self._window_end
        self._mark = mark
        return mark

    def _decode_at(self, start: int, end: int) -> Any:
        try:
            if end - start > SCAN_THRESHOLD:
                _scan(self._data[start:end])  # refuses simple values too
                check_simple = False
            else:
                mark = self._mark
                if mark < start or end > self._window_end:
                    mark = self._next_mark(start, end)
                check_simple = mark < end
            self._seek(start)
            value = self._decode_next()
            position = self._tell()
            if position != end:
                if position < end:
                    raise DecodeError(f"{end - position} trailing bytes after the message")
                raise DecodeError("message runs past the end of its frame")
            if check_simple and _has_simple(value):
                raise DecodeError("CBOR simple values and undefined are not allowed")
        except Exception as exc:
            self._fresh()  # cbor2 may be mid-item: never reuse it
            if isinstance(exc, DecodeError):
                raise
            raise DecodeError(_reason(exc)) from exc
        return value

    def finish(self) -> None:
        """Done with this read: a large read's bytes are released now, a small one's stay
        until the next read overwrites them."""
        if self._stream.seek(0, io.SEEK_END) > _KEEP_READ_BYTES:
            self._data = self._marks = b""
            self._use_stream(io.BytesIO())

    def decode_all(self, payloads: list[bytes]) -> tuple[list[Any], DecodeError | None]:
        """The values of ``payloads`` in order, up to the first that fails, and that failure.

        Returns ``(values, None)`` when every payload decoded, else ``(values decoded before
        the bad payload, its DecodeError)``. Never raises for bytes payloads.
        """
        decode_at = self.start(b"".join(payloads))
        values: list[Any] = []
        end = 0
        try:
            for payload in payloads:
                start, end = end, end + len(payload)
                values.append(decode_at(start, end))
        except DecodeError as exc:
            return values, exc
        finally:
            self.finish()
        return values, None


def _decode_with(dec: _Decoder, data: bytes | bytearray | memoryview) -> Any:
    if type(data) is not bytes:
        if not isinstance(data, (bytearray, memoryview)):
            raise TypeError(f"decode needs bytes, bytearray or memoryview, not {type(data).__name__}")
        data = bytes(data)
    n = len(data)
    check_simple = False
    if n > SCAN_THRESHOLD:
        _scan(data)
    elif data.translate(None, _NOT_SIMPLE):
        check_simple = True
    cbor = dec.cbor
    try:
        stream = io.BytesIO(data)
        cbor.fp = stream
        value = cbor.decode()
        end = stream.tell()
        if end != n:
            raise DecodeError(f"{n - end} trailing bytes after the message")
        if check_simple and _has_simple(value):
            raise DecodeError("CBOR simple values and undefined are not allowed")
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(_reason(exc)) from exc
    if n > SCAN_THRESHOLD:
        cbor.fp = _EMPTY_STREAM  # do not keep a large payload alive
    return value


# ---------------------------------------------------------------------------------------------
# The structural pre-scan: walks CBOR headers without building objects, enforcing what cbor2
# enforces (depth, definite lengths, our tags only) plus no simple values, no trailing bytes,
# and the memory estimate. Weights are bytes of CPython 3.11 objects, each including the
# 8-byte pointer held by its parent, fitted as upper bounds to tracemalloc measurements of
# cbor2 decoding (see tests/test_codec.py::test_memory_estimate_is_an_upper_bound).

_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_TAG_WEIGHTS = {
    _TAG_TUPLE: 8,  # the tuple replaces its array, which is counted as a list
    _TAG_MAILBOX_ID: 64,
    _TAG_ADDRESS: 160,  # MailboxID + Address (+ whatever make_address keeps)
    _TAG_OBJECT: 400,  # a user object, its __dict__ if any
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


def _scan(data: bytes) -> int:
    """Check the structure of ``data`` and its decoded-memory estimate; raise DecodeError.

    Returns the estimate (bytes of Python objects ``decode`` will build).
    """
    n = len(data)
    budget = MEMORY_FACTOR * n
    weight = 4096  # fixed costs of one decode: a fresh pooled decoder, the stream, frames
    i = 0
    stack: list[int] = []
    remaining = 1
    is_run = _IS_RUN
    try:
        while True:
            if not remaining:
                if not stack:
                    break
                remaining = stack.pop()
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
                if arg:
                    weight += _LIST_OVERHEAD[arg] if arg < 1024 else 136 + arg
                    stack.append(remaining)
                    remaining = arg
                    if len(stack) > MAX_CBOR_DEPTH:
                        raise DecodeError(f"CBOR nesting deeper than {MAX_CBOR_DEPTH} levels")
                else:
                    weight += 65
            elif major == 5:
                if arg:
                    weight += 73 + max(160 - 16 * arg, 40 * arg)
                    stack.append(remaining)
                    remaining = 2 * arg
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
                weight += tag_weight
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
    return weight


register_type(MailboxClosed, name="reign.MailboxClosed")
register_type(MultipleClaim, name="reign.MultipleClaim")

# Fail at import, not on the first message, if cbor2 lacks what the strict decoder needs
# (semantic_decoders, allow_indefinite and allow_duplicate_keys: cbor2 >= 6.1; tested on 6.2.1).
try:
    _DECODER_POOL.append(_Decoder())
except TypeError as _exc:  # pragma: no cover - depends on the installed cbor2
    raise ImportError(f"reign needs cbor2 >= 6.2 (the Rust rewrite): {_exc}") from _exc
