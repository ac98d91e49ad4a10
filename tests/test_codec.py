"""The strict CBOR codec: round trips, refusals on both sides, hostile input, memory bounds."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import gc
import io
import re
import sys
import threading
import time
import tracemalloc
import typing
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reign._core import codec as _codec
from reign._core.address import Address
from reign._core.codec import MAX_DEPTH, MAX_ITEMS, MEMORY_FACTOR, SCAN_THRESHOLD, decode, encode, register_type
from reign._core.codec import decoder as _decoder
from reign._core.codec import encoder as _encoder
from reign._core.codec import scan as _scan
from reign._core.codec import types as _types
from reign._core.codec.model import COLLISION_CHECK_KEYS, MAX_KEY_COLLISIONS
from reign._core.ids import MailboxID
from reign._core.messages import MailboxClosed, MultipleClaim
from reign._errors import DecodeError, EncodeError

from hashflood_util import colliding_ids, colliding_pairs

NODE = object()  # Address only stores its node; the codec never touches it


def make_address(mid: MailboxID) -> Address:
    return Address(mid, NODE)  # type: ignore[arg-type]


def roundtrip(value: Any) -> Any:
    return decode(encode(value), make_address)


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types all the way down (1 == 1.0 == True, [1] vs (1,))."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        if len(a) != len(b):
            return False
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):  # order is preserved too
            if not (same(ka, kb) and same(va, vb)):
                return False
        return True
    if type(a) is float and a != a:
        return b != b
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


@register_type(name="test.codec.Point")
@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: Any


@register_type
@dataclasses.dataclass
class Mutable:
    items: list[Any]
    label: str = "m"


@register_type(name="test.codec.KwOnly")
@dataclasses.dataclass(frozen=True, kw_only=True)
class KwOnly:
    a: int
    b: str


@register_type(name="test.codec.Empty")
@dataclasses.dataclass(frozen=True)
class Empty:
    pass


class Money:
    """A non-dataclass, registered with hooks."""

    def __init__(self, cents: int, currency: str) -> None:
        self.cents = cents
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return type(other) is Money and (self.cents, self.currency) == (other.cents, other.currency)

    def __hash__(self) -> int:
        return hash((self.cents, self.currency))


register_type(Money, name="test.codec.Money", to_fields=lambda m: [m.cents, m.currency],
              from_fields=lambda f: Money(*f))


# ------------------------------------------------------------------------------ strategies

mailbox_ids = st.builds(
    MailboxID,
    st.integers(0, 255),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
addresses = mailbox_ids.map(make_address)
hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    mailbox_ids,
    addresses,
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(
        st.tuples(inner, inner),
        st.lists(inner, max_size=3).map(tuple),
        st.builds(Point, st.integers(-(2**64), 2**64 - 1), inner),
    ),
    max_leaves=6,
)
values = st.recursive(
    st.one_of(hashable_leaves, st.floats(), st.binary(max_size=10).map(bytearray)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.builds(Point, st.integers(-(2**64), 2**64 - 1), inner),
        st.builds(Mutable, st.lists(inner, max_size=3), st.text(max_size=5)),
        st.builds(Money, st.integers(-(2**63), 2**63), st.text(max_size=3)),
    ),
    max_leaves=25,
)


def expected(value: Any) -> Any:
    """What a value decodes to: bytearray arrives as bytes, everything else as itself."""
    t = type(value)
    if t is bytearray:
        return bytes(value)
    if t is list:
        return [expected(v) for v in value]
    if t is tuple:
        return tuple(expected(v) for v in value)
    if t is dict:
        return {k: expected(v) for k, v in value.items()}
    if t is Point:
        return Point(value.x, expected(value.y))
    if t is Mutable:
        return Mutable([expected(v) for v in value.items], value.label)
    return value


# ------------------------------------------------------------------------------ round trips


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_roundtrip_preserves_values_and_types(value: Any) -> None:
    assert same(roundtrip(value), expected(value))


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, 23, 24, 255, 256, -1, -24, -25, 2**64 - 1, -(2**64), 1.5, -0.0,
        float("inf"), "", "héllo ✓ 😀", b"", b"\x00\xff", [], (), {}, [1, [2, [3]]], (1, (2, (3,))),
        ((),), {(1, 2): "pair", 3: (4,), "k": [], b"b": None, None: 1, 2.5: 2, (): 0},
        MailboxID(0, 0, 0), MailboxID(255, 2**64 - 1, 2**64 - 1), MailboxID(30, 1, 2),
        Point(1, (2, 3)), KwOnly(a=1, b="x"), Empty(), Money(150, "EUR"), Mutable([1, (2,)]),
        MailboxClosed(MailboxID(3, 4, 5)), MultipleClaim("chat"),
        {Point(1, 2): Point(3, {"a": (4,)}), MailboxID(1, 2, 3): Money(1, "x")},
    ],
    ids=repr,
)
def test_roundtrip_examples(value: Any) -> None:
    assert same(roundtrip(value), value)


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5) | st.integers(-(2**64), 2**64 - 1), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain_values, st.floats(allow_nan=False, allow_infinity=False))
def test_encoder_writes_standard_cbor_as_cbor2_does(value: Any, number: float) -> None:
    """Our hand-written encoder against the library: byte for byte on values without tags
    (floats are 8 bytes, as cbor2 writes finite ones; it writes inf and NaN in 2)."""
    assert encode(value) == cbor2.dumps(value)
    assert encode([value, number]) == cbor2.dumps([value, number])
    for special in (float("inf"), float("-inf")):
        assert cbor2.loads(encode(special)) == special
    assert cbor2.loads(encode(float("nan"))) != cbor2.loads(encode(float("nan")))  # NaN


def test_encoder_int_and_length_boundaries_match_cbor2() -> None:
    edges = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
    for n in edges:
        for value in (n, -1 - n):
            assert encode(value) == cbor2.dumps(value) and encode([value]) == cbor2.dumps([value]), value
    for n in (23, 24, 255, 256, 65536):
        for value in ("x" * n, b"x" * n, [0] * n, dict.fromkeys(range(n), 0)):
            assert encode(value) == cbor2.dumps(value), (type(value), n)


def test_atom_cache_is_bounded_and_never_changes_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_encoder, "_ATOMS", {})
    monkeypatch.setattr(_encoder, "ATOM_CACHE_SIZE", 8)
    for round_ in range(3):  # cold, warm, and after the cache started over
        for i in range(20):
            key = f"k{i}" * (1 + i % 3)
            value = {key: i, "x" * 40: (key, "y" * 40)}
            assert encode(value) == cbor2.dumps({key: i, "x" * 40: cbor2.CBORTag(51200, [key, "y" * 40])})
            assert len(_encoder._ATOMS) <= 8
    assert "x" * 40 not in _encoder._ATOMS  # long strings are not kept
    with pytest.raises(EncodeError, match="Unicode"):
        encode({"\ud800": 1})
    with pytest.raises(EncodeError, match="Unicode"):
        encode(("\ud800", 1))


def test_encoding_containers_another_thread_changes_never_writes_bad_cbor() -> None:
    """The walk is Python: a thread switch may come between any two items. Each container is
    written as it was when reached, so the bytes always decode (no length disagreeing with its
    items, no key written twice)."""
    lists = [[1, 2, 3] for _ in range(4)]
    table: dict[Any, Any] = {i: i for i in range(8)}
    message = {"lists": lists, "table": table, "tuple": (lists[0], table)}
    stop = threading.Event()

    def mutate() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for lst in lists:
                lst.append(n)
                lst.pop(0)
                if len(lst) > 6:
                    del lst[:3]
            table[n % 16] = n
            table.pop((n + 5) % 16, None)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=mutate)
    thread.start()
    try:
        for _ in range(3000):
            decoded = decode(encode(message), make_address)  # DecodeError if the bytes were bad
            assert set(decoded) == {"lists", "table", "tuple"}
            assert all(len(lst) <= 6 for lst in decoded["lists"])
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(previous)


def test_encoder_tags_decode_with_cbor2s_tag_hook() -> None:
    value = ("t", [MailboxID(1, 2, 3)], {"p": Point(1, 2)})
    tags: list[int] = []

    def hook(tag: Any, immutable: bool) -> Any:  # cbor2 6.x: (CBORTag, immutable)
        tags.append(tag.tag)
        return tuple(tag.value) if immutable else tag.value

    cbor2.loads(encode(value), tag_hook=hook)
    assert sorted(tags) == [51200, 51201, 51203]


def test_nan_roundtrips() -> None:
    out = roundtrip([float("nan")])
    assert out[0] != out[0]


def test_decoded_tuples_are_tuples_everywhere() -> None:
    value = {"t": (1, [2, (3,)]), (1, (2, 3)): ((4,),), "l": [(), ()]}
    out = roundtrip(value)
    assert type(out["t"]) is tuple and type(out["t"][1]) is list and type(out["t"][1][1]) is tuple
    key = next(k for k in out if type(k) is tuple)
    assert key == (1, (2, 3)) and type(key[1]) is tuple
    assert type(out[key][0]) is tuple
    assert all(type(x) is tuple for x in out["l"])


def test_addresses_are_bound_by_make_address() -> None:
    mid = MailboxID(7, 2**60 + 5, 42)
    made: list[MailboxID] = []

    def bind(m: MailboxID) -> tuple[str, MailboxID]:
        made.append(m)
        return ("bound", m)

    out = decode(encode({"reply_to": Address(mid, NODE), "id": mid}), bind)  # type: ignore[arg-type]
    assert out == {"reply_to": ("bound", mid), "id": mid}
    assert made == [mid] and type(out["id"]) is MailboxID


def test_bytearray_and_memoryview_inputs() -> None:
    data = encode({"a": [1, 2, (3,)]})
    assert decode(bytearray(data), make_address) == {"a": [1, 2, (3,)]}
    assert decode(memoryview(data), make_address) == {"a": [1, 2, (3,)]}
    assert roundtrip(bytearray(b"xy")) == b"xy"
    with pytest.raises(TypeError):
        decode("text", make_address)  # type: ignore[arg-type]


def test_library_messages_have_fixed_wire_names() -> None:
    assert b"reign.MailboxClosed" in encode(MailboxClosed(MailboxID(1, 2, 3)))
    assert b"reign.MultipleClaim" in encode(MultipleClaim("n"))


def test_max_depth_boundary() -> None:
    deepest: Any = Address(MailboxID(1, 2**63, 3), NODE)  # type: ignore[arg-type]
    for _ in range(MAX_DEPTH):
        deepest = (deepest,)  # tuples cost 2 CBOR levels each: the decoder's worst case
    assert roundtrip(deepest) == deepest
    nested: Any = []
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert roundtrip(nested) == nested
    with pytest.raises(EncodeError, match="deeper than 64"):
        encode([nested])


def test_concurrent_use_from_threads() -> None:
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(300):
                value = {"k": k, "i": (i, [Point(i, str(k))]), "a": make_address(MailboxID(k, i, i))}
                assert roundtrip(value) == value
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


# ------------------------------------------------------------------------------ encode refusals


class Color(enum.IntEnum):
    RED = 1


class Pair(NamedTuple):
    a: int
    b: int


class Name(str):
    pass


class Unregistered:
    pass


@dataclasses.dataclass
class UnregisteredDataclass:
    x: int


def _cyclic_list() -> list[Any]:
    x: list[Any] = [1]
    x.append([x])
    return x


def _cyclic_dict() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["self"] = d
    return d


def _cyclic_object() -> Mutable:
    m = Mutable([])
    m.items.append(m)
    return m


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (Unregistered(), "Unregistered"),
        ([UnregisteredDataclass(1)], "UnregisteredDataclass"),
        ({1, 2}, "set"),
        ({"s": frozenset()}, "frozenset"),
        (datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), "datetime"),
        (datetime.date(2024, 1, 1), "date"),
        (decimal.Decimal("1.5"), "Decimal"),
        (fractions.Fraction(1, 3), "Fraction"),
        (uuid.uuid4(), "UUID"),
        (re.compile("x"), "Pattern"),
        (1j, "complex"),
        (memoryview(b"x"), "memoryview"),
        (range(3), "range"),
        (cbor2.CBORTag(2, b"\x01"), "CBORTag"),
        (cbor2.undefined, "Undefined"),
        (2**64, "CBOR integer range"),
        ([-(2**64) - 1], "CBOR integer range"),
        ({"k": 10**30}, "CBOR integer range"),
        ({10**30: 1}, "CBOR integer range"),
        (Color.RED, "Color"),
        (collections.OrderedDict(a=1), "OrderedDict"),
        (Pair(1, 2), "Pair"),
        (Name("x"), "Name"),
        (_cyclic_list(), "cyclic"),
        (_cyclic_dict(), "cyclic"),
        (_cyclic_object(), "cyclic"),
        ("\ud800", "cannot encode"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v[:20],
)
def test_encode_refuses(value: Any, match: str) -> None:
    with pytest.raises(EncodeError, match=match):
        encode(value)


def test_encode_refuses_deep_nesting_without_crashing() -> None:
    deep: Any = 1
    for _ in range(100_000):  # cbor2 itself would overflow the C stack (SIGSEGV) on this
        deep = [deep]
    with pytest.raises(EncodeError, match="deeper than"):
        encode(deep)


def test_encode_refuses_exponential_dag_quickly() -> None:
    x: Any = [1]
    for _ in range(40):
        x = [x, x]  # 2**40 items once expanded, 41 distinct lists
    started = time.perf_counter()
    with pytest.raises(EncodeError, match=f"more than {MAX_ITEMS} items"):
        encode(x)
    assert time.perf_counter() - started < 1


class BadFields:
    pass


class RaisingFields:
    pass


def _explode(obj: Any) -> list[Any]:
    raise RuntimeError("boom")


register_type(BadFields, name="test.codec.Bad", to_fields=lambda b: {1, 2}, from_fields=lambda f: BadFields())
register_type(RaisingFields, name="test.codec.Raising", to_fields=_explode, from_fields=lambda f: RaisingFields())


def test_hook_returning_a_non_list_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="list or tuple"):
        encode(BadFields())
    with pytest.raises(EncodeError, match="boom"):
        encode([RaisingFields()])


# ------------------------------------------------------------------------------ registry


def test_register_type_rules() -> None:
    assert register_type(Point, name="test.codec.Point") is Point  # same again: no-op
    with pytest.raises(ValueError, match="already registered as"):
        register_type(Point, name="test.codec.Other")
    with pytest.raises(ValueError, match="already registered for"):

        @register_type(name="test.codec.Point")
        @dataclasses.dataclass
        class Impostor:
            x: int

    with pytest.raises(TypeError, match="not a dataclass"):
        register_type(Unregistered)
    with pytest.raises(TypeError, match="both"):
        register_type(Unregistered, to_fields=lambda o: [])
    with pytest.raises(TypeError, match="encoded natively"):
        register_type(tuple)
    with pytest.raises(TypeError, match="needs a class"):
        register_type(Point(1, 2))  # type: ignore[call-overload]

    @dataclasses.dataclass
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError, match="init=False"):
        register_type(Derived)


def test_default_name_is_module_and_qualname() -> None:
    assert _types.BY_TYPE[Mutable].name == f"{__name__}.Mutable"
    assert b"test_codec.Mutable" in encode(Mutable([]))


class Span(NamedTuple):
    start: int
    end: int


register_type(Span, name="test.codec.Span", to_fields=list, from_fields=lambda f: Span(*f))


def test_registered_named_tuple_keeps_its_type() -> None:
    out = roundtrip({"s": Span(1, 2)})
    assert type(out["s"]) is Span and out["s"] == Span(1, 2)


# ------------------------------------------------------------------------------ hostile input

PAD = encode("p" * (SCAN_THRESHOLD + 100))


def both_paths(item: bytes) -> list[bytes]:
    """``item`` alone (cbor2 path) and inside [pad, item], over SCAN_THRESHOLD (scan path)."""
    return [item, b"\x82" + PAD + item]


def refused(data: bytes, match: str | None = None) -> None:
    for payload in both_paths(data):
        with pytest.raises(DecodeError, match=match):
            decode(payload, make_address)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("tag", "content"),
    [
        (0, "74 323031332d30332d32315432303a30343a30305a"),  # datetime string
        (1, "00"),  # epoch datetime
        (2, "41 01"),  # positive bignum
        (3, "41 01"),  # negative bignum
        (4, "82 21 19 6ab3"),  # decimal fraction
        (5, "82 20 03"),  # bigfloat
        (25, "00"),  # string reference
        (28, "81 01"),  # shareable
        (29, "00"),  # shared reference
        (30, "82 01 03"),  # rational
        (35, "61 61"),  # regex
        (36, "61 61"),  # MIME
        (37, "50 " + "00" * 16),  # UUID
        (52, "44 01020304"),  # IPv4
        (54, "50 " + "00" * 16),  # IPv6
        (100, "00"),  # epoch date
        (256, "81 01"),  # string-ref namespace
        (258, "82 01 02"),  # set
        (260, "44 01020304"),
        (261, "a1 44 01020304 18 18"),
        (1004, "6a 323032342d30312d3031"),
        (43000, "82 f93c00 f93c00"),  # complex
        (55799, "01"),  # self-described CBOR: we never send it, so refuse it too
        (12345, "01"),  # any unknown tag
        (2**63, "01"),
    ],
)
def test_refused_tags(tag: int, content: str) -> None:
    header = cbor2.dumps(cbor2.CBORTag(tag, None))[:-1]  # the tag's head, minus the null
    refused(header + h(content), "tag" if tag != 55799 else None)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("d9c800 01", "tuple tag must hold an array"),
        ("d9c801 82 01 02", "array of 3"),
        ("d9c802 83 01 02 f5", "out of range"),  # a bool is not an int
        ("d9c802 83 19 0100 01 01", "out of range"),  # node 256
        ("d9c802 83 01 3b 0000000000000000 01", "out of range"),  # negative incarnation
        ("d9c802 a0", "array of 3"),
        ("d9c803 80", "array \\[name"),
        ("d9c803 81 01", "unknown registered type name"),
        ("d9c803 81" + cbor2.dumps("no.such.type").hex(), "unknown registered type name 'no.such.type'"),
        ("d9c803 82" + cbor2.dumps("test.codec.Point").hex() + "01", "2 fields, the message gives 1"),
        ("d9c803 84" + cbor2.dumps("test.codec.Point").hex() + "010203", "2 fields, the message gives 3"),
        ("d9c803 82" + cbor2.dumps("test.codec.KwOnly").hex() + "01", "2 fields, the message gives 1"),
        ("d9c803 82" + cbor2.dumps("test.codec.Money").hex() + "01", "cannot rebuild test.codec.Money"),
        ("d9c803 84" + cbor2.dumps("reign.MultipleClaim").hex() + "010203", "1 fields, the message gives 3"),
    ],
)
def test_refused_tag_contents(data: str, match: str) -> None:
    refused(h(data), match)


def registered(name: str, *fields: Any) -> bytes:
    """The wire form of a registered object ``name`` with these field values, unchecked."""
    assert len(fields) < 23
    return bytes.fromhex("d9c803") + bytes([0x81 + len(fields)]) + encode(name) + b"".join(map(encode, fields))


def replaced(value: Any, old: Any, new: Any) -> bytes:
    """The wire form of ``value`` with the encoding of ``old`` (once in it) replaced by ``new``'s."""
    data, before, after = encode(value), encode(old), encode(new)
    assert data.count(before) == 1
    return data.replace(before, after)


MID = MailboxID(3, 4, 5)


@pytest.mark.parametrize(
    ("value", "good", "bad", "match"),
    [
        (MailboxClosed(MID), MID, "abc", "reign.MailboxClosed.id must be MailboxID, not str"),
        (MailboxClosed(MID), MID, 1, "must be MailboxID, not int"),
        (MailboxClosed(MID), MID, None, "must be MailboxID, not None"),
        (MailboxClosed(MID), MID, (3, 4, 5), "must be MailboxID, not tuple"),
        (MailboxClosed(MID), MID, make_address(MID), "must be MailboxID, not Address"),
        (MailboxClosed(MID), MID, MultipleClaim("x"), "must be MailboxID, not MultipleClaim"),
        (MultipleClaim("chat"), "chat", b"chat", "reign.MultipleClaim.name must be str, not bytes"),
        (MultipleClaim("chat"), "chat", MID, "must be str, not MailboxID"),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_library_messages_with_wrong_field_types_are_refused_on_both_sides(
    value: Any, good: Any, bad: Any, match: str
) -> None:
    """Issue 13, item 9: ``MailboxClosed(id='abc')`` from a peer was delivered as is."""
    refused(replaced(value, good, bad), match)
    refused(replaced(("fwd", value), good, bad), match)  # inside another value too
    with pytest.raises(EncodeError, match=match):
        encode([dataclasses.replace(value, **{dataclasses.fields(value)[0].name: bad})])


@register_type(name="test.codec.Typed", check_fields=True)
@dataclasses.dataclass(frozen=True)
class Typed:
    n: int
    label: str | None
    blob: bytes
    where: Point
    pair: tuple  # type: ignore[type-arg]  # exact class only: items are not checked
    ratio: float
    anything: Any = None


@register_type(name="test.codec.TypedKw", check_fields=True)
@dataclasses.dataclass(frozen=True, kw_only=True)
class TypedKw:
    b: str
    a: MailboxID | Address


GOOD_TYPED = Typed(1, None, b"x", Point(1, 2), (1, "a"), 0.5, {"any": [1]})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n": True}, "test.codec.Typed.n must be int, not bool"),
        ({"n": 1.0}, "n must be int, not float"),
        ({"label": b"x"}, "label must be str or None, not bytes"),
        ({"blob": "x"}, "blob must be bytes, not str"),
        ({"where": Money(1, "x")}, "where must be test_codec.Point, not test_codec.Money"),
        ({"pair": [1, "a"]}, "pair must be tuple, not list"),
        ({"ratio": 1}, "ratio must be float, not int"),
    ],
    ids=repr,
)
def test_check_fields_refuses_other_types_exactly(change: dict[str, Any], match: str) -> None:
    bad = dataclasses.replace(GOOD_TYPED, **change)
    with pytest.raises(EncodeError, match=match):
        encode(bad)
    refused(registered("test.codec.Typed", *(getattr(bad, f.name) for f in dataclasses.fields(Typed))), match)


def test_check_fields_accepts_the_annotated_types() -> None:
    for value in (
        GOOD_TYPED,
        dataclasses.replace(GOOD_TYPED, label="x", pair=(), anything=make_address(MailboxID(1, 2, 3))),
        TypedKw(b="x", a=MailboxID(1, 2, 3)),
        TypedKw(b="", a=make_address(MailboxID(1, 2, 3))),
    ):
        assert same(roundtrip(value), value)
    # a bytearray is sent as bytes, so a bytes field takes one when sending
    assert roundtrip(dataclasses.replace(GOOD_TYPED, blob=bytearray(b"ab"))) == dataclasses.replace(
        GOOD_TYPED, blob=b"ab")
    refused(registered("test.codec.TypedKw", "x", "not an id"), "TypedKw.a must be Address or MailboxID, not str")


def test_check_fields_registration_rules() -> None:
    T = typing.TypeVar("T")

    def declare(annotation: Any, **kwargs: Any) -> None:
        cls = dataclasses.make_dataclass("Bad", [("x", annotation)], frozen=True)
        register_type(cls, name=f"test.codec.bad.{len(_types.BY_NAME)}", check_fields=True, **kwargs)

    old_union = typing.Union[int, list[int]]  # noqa: UP007 - the typing.Union spelling is resolved too
    for annotation in (list[int], dict[str, Any], T, typing.Literal[1], list[int] | None, old_union):
        with pytest.raises(TypeError, match="check_fields checks exact classes"):
            declare(annotation)
    with pytest.raises(TypeError, match="annotate bytes"):
        declare(bytearray)
    with pytest.raises(TypeError, match="cannot resolve the annotations"):
        declare("NoSuchName")
    with pytest.raises(TypeError, match="check_fields is for dataclasses"):
        register_type(Unregistered, to_fields=lambda o: [], from_fields=lambda f: Unregistered(), check_fields=True)
    with pytest.raises(TypeError, match="must be a bool"):
        register_type(Unregistered, check_fields=1)  # type: ignore[call-overload]
    assert register_type(Typed, name="test.codec.Typed", check_fields=True) is Typed  # same again: no-op
    with pytest.raises(ValueError, match="already registered with check_fields=True"):
        register_type(Typed, name="test.codec.Typed")
    with pytest.raises(ValueError, match="already registered with check_fields=False"):
        register_type(Point, name="test.codec.Point", check_fields=True)
    assert not any(name.startswith("test.codec.bad.") for name in _types.BY_NAME)  # nothing half-registered


def test_unchecked_registered_types_still_take_any_field_values() -> None:
    """Without check_fields (the default) only the value model applies, as dataclasses do."""
    assert roundtrip(Point("not an int", b"y")) == Point("not an int", b"y")  # type: ignore[arg-type]


class Strict:
    pass


def _refuse_fields(fields: list[Any]) -> Any:
    raise ValueError("bad fields")


register_type(Strict, name="test.codec.Strict", to_fields=lambda s: [1], from_fields=_refuse_fields)


def test_from_fields_errors_become_decode_errors() -> None:
    refused(encode(Strict()), "cannot rebuild test.codec.Strict")


@pytest.mark.parametrize(
    "data",
    ["9f 01 ff", "bf 61 61 01 ff", "5f 41 01 ff", "7f 61 61 ff", "9f ff", "81 9f ff"],
)
def test_indefinite_lengths_are_refused(data: str) -> None:
    refused(h(data), "indefinite")


@pytest.mark.parametrize(
    "data", ["f7", "e0", "f3", "f8 20", "f8 ff", "81 f7", "a1 61 61 e5", "d9c800 81 f7", "a1 f7 01"]
)
def test_simple_values_and_undefined_are_refused(data: str) -> None:
    refused(h(data), "simple values")


def test_simple_value_inside_a_registered_object_is_refused() -> None:
    point = bytes.fromhex("d9c803 83 70") + b"test.codec.Point" + bytes.fromhex("01 f7")
    refused(point, "simple values")


@pytest.mark.parametrize("data", ["ff", "81 ff", "fc", "1c", "5c", "f8 18"])
def test_ill_formed_items_are_refused(data: str) -> None:
    refused(h(data))


def test_duplicate_map_keys_are_refused() -> None:
    refused(h("a2 01 01 01 02"), "[Dd]uplicate")
    refused(h("a2 61 61 01 61 61 02"), "[Dd]uplicate")
    refused(h("a2 d9c800 82 01 02 01 d9c800 82 01 02 02"), "[Dd]uplicate")


def test_trailing_bytes_are_refused() -> None:
    for payload in both_paths(encode({"a": 1})):
        with pytest.raises(DecodeError, match="trailing"):
            decode(payload + b"\x00", make_address)
    with pytest.raises(DecodeError, match="trailing"):
        decode(h("01 02"), make_address)


def test_maps_as_map_keys_are_refused_and_arrays_as_keys_decode_as_tuples() -> None:
    refused(h("a1 a1 01 02 03"), "map key")
    refused(h("a1 a0 01"), "map key")
    refused(h("a1 d9c800 81 a0 01"), "map key")
    for payload in both_paths(h("a1 82 01 02 03")):
        out = decode(payload, make_address)
        assert {(1, 2): 3} in (out, out[-1] if type(out) is list else None)


def test_truncated_input_is_refused_at_every_cut() -> None:
    value = {"a": [1, (2, 3.5)], "b": Point(1, "x"), "c": make_address(MailboxID(3, 2**62, 9)), "d": b"xyz"}
    data = encode(value)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:cut], make_address)
    big = encode([value, "p" * SCAN_THRESHOLD])
    for cut in list(range(200)) + [len(big) - 1, len(big) - 5]:
        with pytest.raises(DecodeError):
            decode(big[:cut], make_address)


def test_deep_nesting_is_refused_fast() -> None:
    for depth in (200, 1000, 100_000):
        started = time.perf_counter()
        with pytest.raises(DecodeError, match="depth|deeper"):
            decode(b"\x81" * depth + b"\x01", make_address)
        assert time.perf_counter() - started < 1
    with pytest.raises(DecodeError, match="depth|deeper"):
        decode(h("d9c800") * 2000 + b"\x80", make_address)


@pytest.mark.parametrize("filler", [b"\x80", b"\xa0"], ids=["empty-arrays", "empty-maps"])
def test_one_mib_of_empty_containers_is_refused_fast_and_small(filler: bytes) -> None:
    count = 1 << 20
    data = b"\x9a" + count.to_bytes(4, "big") + filler * count
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeError, match="more than"):
            decode(data, make_address)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1
    assert peak < 4 * len(data)  # cbor2 alone would build ~65-72 MB here


def test_encode_refuses_what_the_decoder_would_refuse() -> None:
    with pytest.raises(EncodeError, match="receiver would refuse"):
        encode([[] for _ in range(10_000)])
    records = [{"id": i % 20} for i in range(10_000)]  # ~57 bytes per byte: accepted
    assert roundtrip(records) == records


# Shapes near the memory limit, each over SCAN_THRESHOLD: the estimate must be an upper bound
# of what decoding really allocates (tracemalloc), and stay within MEMORY_FACTOR per byte.
NEAR_LIMIT_SHAPES = {
    "pairs": [[1, 2]] * 3000,
    "tuples": [(1, 2)] * 3000,
    "negative-ints": [-20] * 20_000,
    "big-ints": [2**40 + i for i in range(3000)],
    "two-letter-strings": ["ab"] * 5000,
    "non-ascii-strings": ["é😀"] * 3000,
    "one-entry-maps": [{"id": i % 20} for i in range(3000)],
    "records": [{"id": i, "name": "bob", "tags": ["a", "b"]} for i in range(1000)],
    "floats": [i / 7 for i in range(3000)],
    "bytes": [b"xy"] * 5000,
    "addresses": [make_address(MailboxID(3, 2**62 + i, i)) for i in range(1000)],
    "mailbox-ids": [MailboxID(3, 2**62 + i, i) for i in range(1000)],
    "points": [Point(i, (i,)) for i in range(1000)],
    "nested": [[[[i]]] for i in range(2000)],
    "dicts-of-6": [{str(k): k for k in range(6)} for _ in range(300)],
    "dicts-of-100": [dict.fromkeys(range(100)) for _ in range(20)],
}


@pytest.mark.parametrize("shape", list(NEAR_LIMIT_SHAPES), ids=str)
def test_memory_estimate_is_an_upper_bound(shape: str) -> None:
    data = encode(NEAR_LIMIT_SHAPES[shape])
    assert len(data) > SCAN_THRESHOLD
    estimate = _scan.scan(data)
    assert estimate <= MEMORY_FACTOR * len(data)
    gc.collect()
    tracemalloc.start()
    try:
        value = decode(data, make_address)
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert value == NEAR_LIMIT_SHAPES[shape]
    assert kept <= estimate, f"{shape}: decoded {kept} bytes, estimated {estimate}"


# ------------------------------------------------------------------------------ item count

#: Seconds the receive path's decoder may take for the dearest message MAX_ITEMS accepts. The
#: requirement (issue 13, item 7) is "well under a second of loop time"; measured 0.1-0.3 s on
#: the 2-vCPU machine; this bound is generous for a machine shared with other test runs.
WORST_DECODE_SECONDS = 2.0
#: Bytes (tracemalloc peak) the dearest accepted messages may cost to decode. The requirement is
#: "at most a few hundred MiB" for a maximum-size message; measured at most 42 MiB.
WORST_DECODE_BYTES = 64 * 1024 * 1024


@contextmanager
def max_items(limit: int) -> Iterator[None]:
    """MAX_ITEMS set to ``limit`` on both sides (the encoder's and the pre-scan's copies)."""
    saved = _encoder.MAX_ITEMS, _scan.MAX_ITEMS
    _encoder.MAX_ITEMS = _scan.MAX_ITEMS = limit
    try:
        yield
    finally:
        _encoder.MAX_ITEMS, _scan.MAX_ITEMS = saved


def items_of(value: Any) -> int:
    """The data items below ``value``, from MAX_ITEMS's definition (independent of both sides)."""
    t = type(value)
    if t is list:
        return len(value) + sum(items_of(v) for v in value)
    if t is tuple:
        return 1 + len(value) + sum(items_of(v) for v in value)
    if t is dict:
        return sum(2 + items_of(k) + items_of(v) for k, v in value.items())
    if t is Address or t is MailboxID:
        return 4
    reg = _types.BY_TYPE.get(t)
    if reg is not None:
        fields = list(reg.fields_of(value))
        return 2 + len(fields) + sum(items_of(f) for f in fields)
    return 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_encoder_and_receiver_count_items_alike(value: Any) -> None:
    message = [value, "p" * SCAN_THRESHOLD]  # over SCAN_THRESHOLD, so the receiver scans it
    count = items_of(message)
    with max_items(count):
        data = encode(message)
        assert same(decode(data, make_address), expected(message))
    with max_items(count - 1):
        with pytest.raises(EncodeError, match=f"more than {count - 1} items"):
            encode(message)
        with pytest.raises(DecodeError, match=f"more than {count - 1} items"):
            decode(data, make_address)


def test_max_items_boundary_on_both_sides() -> None:
    assert roundtrip([0] * MAX_ITEMS) == [0] * MAX_ITEMS
    with pytest.raises(EncodeError, match=f"more than {MAX_ITEMS} items"):
        encode([0] * (MAX_ITEMS + 1))
    with pytest.raises(EncodeError, match=f"more than {MAX_ITEMS} items"):  # charged after the walk
        encode([make_address(MailboxID(1, 2, 3))] * (MAX_ITEMS // 5 + 1))
    crafted = b"\x9a" + (MAX_ITEMS + 1).to_bytes(4, "big") + b"\x00" * (MAX_ITEMS + 1)
    with pytest.raises(DecodeError, match=f"more than {MAX_ITEMS} items"):
        decode(crafted, make_address)


def test_maximum_size_message_of_small_records_is_refused_fast_and_small() -> None:
    """Issue 13, item 7: 16 MiB (the default max_message_bytes) of ``[{"ab": 0}, ...]`` was
    delivered after 3.1-3.7 s of blocked loop and +862 MiB; the pre-scan now stops at its head."""
    count = (16 * 1024 * 1024 - 5) // 5
    data = b"\x9a" + count.to_bytes(4, "big") + b"\xa1\x62ab\x00" * count
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeError, match=f"more than {MAX_ITEMS} items"):
            _decoder.BatchDecoder(make_address).start(data)(0, len(data))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < WORST_DECODE_SECONDS
    assert peak < len(data) // 4  # nothing decoded (the stream shares the read's bytes)


#: The dearest messages MAX_ITEMS accepts, per kind of item (bench/decode_bounds.py measures
#: the same shapes, and their 16 MiB versions, through the whole receive path).
WORST_ACCEPTED: dict[str, Callable[[], Any]] = {
    "records [{'ab': 0}, ...]": lambda: [{"ab": 0}] * (MAX_ITEMS // 3),
    "one-item lists": lambda: [[0] for _ in range(MAX_ITEMS // 2)],
    "empty tuples": lambda: [()] * (MAX_ITEMS // 2),
    "two-letter strings": lambda: ["ab"] * MAX_ITEMS,
    "non-ascii strings": lambda: ["éé"] * MAX_ITEMS,
    "one big map": lambda: {2**20 + i: 0 for i in range(MAX_ITEMS // 2)},
    "uncached ints": lambda: [-20] * MAX_ITEMS,
    "distinct addresses": lambda: [make_address(MailboxID(3, 2**62 + i, i)) for i in range(MAX_ITEMS // 5)],
    "MailboxClosed": lambda: [MailboxClosed(MailboxID(3, 2**62 + i, i))
                              for i in range(MAX_ITEMS // (1 + items_of(MailboxClosed(MID))))],
}


@pytest.mark.parametrize("shape", list(WORST_ACCEPTED), ids=str)
def test_dearest_accepted_messages_decode_within_budget(shape: str) -> None:
    """Each decodes in time, and its memory estimate (an upper bound of what decoding keeps, see
    test_memory_estimate_is_an_upper_bound) is within budget; the issue's own shape is also
    measured with tracemalloc (slow: ~4 s under tracemalloc instead of 0.15 s)."""
    value = WORST_ACCEPTED[shape]()
    data = encode(value)  # accepted by the sender, so by the receiver too
    del value
    assert _scan.scan(data) < WORST_DECODE_BYTES
    gc.collect()
    started = time.perf_counter()
    values, error = _decoder.BatchDecoder(make_address).decode_all([data])
    elapsed = time.perf_counter() - started
    assert error is None and len(values) == 1
    assert elapsed < WORST_DECODE_SECONDS, f"{shape}: {elapsed:.2f} s"
    if not shape.startswith("records"):
        return
    del values
    gc.collect()
    tracemalloc.start()
    try:
        _decoder.BatchDecoder(make_address).decode_all([data])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < WORST_DECODE_BYTES, f"{shape}: {peak / 2**20:.1f} MiB"


_BULK = 16 * 1024 * 1024 - 9  # the default max_message_bytes, less the string's head


@pytest.mark.parametrize(
    ("value", "peak_per_byte"),
    [
        # cbor2 reads a byte string into its own buffer: kept 1x, peak 1.1x (measured).
        (bytes(_BULK), 2),
        # CPython's UTF-8 decoder sizes its buffer by the byte count: peaks measured 2x the
        # payload for ASCII, 3x for 2-byte, 4x for 3-byte and 6x for 4-byte characters.
        ("a" * _BULK, 3),
        ("é" * (_BULK // 2), 4),
        ("€" * (_BULK // 3), 5),
        ("😀" * (_BULK // 4), 7),
    ],
    ids=["bytes", "ascii", "2-byte chars", "3-byte chars", "4-byte chars"],
)
def test_bulk_bytes_and_strings_stay_cheap_at_the_default_maximum_size(value: Any, peak_per_byte: int) -> None:
    data = encode(value)
    del value
    gc.collect()
    started = time.perf_counter()
    _decoder.BatchDecoder(make_address).decode_all([data])
    elapsed = time.perf_counter() - started
    gc.collect()
    tracemalloc.start()
    try:
        _decoder.BatchDecoder(make_address).decode_all([data])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < WORST_DECODE_SECONDS
    assert peak < peak_per_byte * len(data), f"{peak / len(data):.1f} bytes per byte"


# ------------------------------------------------------------------------------ hash flooding

def _map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"\xba" + len(pairs).to_bytes(4, "big") + b"".join(k + v for k, v in pairs)


def _untagged(key: tuple[int, ...]) -> bytes:
    return cbor2.dumps(list(key))  # an array in key position: decodes as a tuple too


needs_tuplehash = pytest.mark.skipif(
    sys.hash_info.width != 64 or len({hash(p) for p in colliding_pairs(3)}) != 1,
    reason="the collisions are computed for 64-bit CPython's tuple hash",
)


@needs_tuplehash
def test_colliding_map_keys_are_refused_fast_on_both_sides() -> None:
    """16,000 colliding pairs (219 KiB) blocked the decoder for 3.2 s; MAX_ITEMS allows 131,072."""
    pairs = colliding_pairs(16_000)
    assert len({hash(p) for p in pairs}) == 1
    for data in (
        _map([(_untagged(p), b"\x00") for p in pairs]),
        _map([(encode(p), b"\x00") for p in pairs]),  # tagged tuples
        _map([(encode(m), b"\x00") for m in colliding_ids(16_000)]),
        _map([(encode(make_address(m)), b"\x00") for m in colliding_ids(16_000)]),
        _map([(encode(Point(p[0], p[1])), b"\x00") for p in pairs]),  # a frozen dataclass: its fields' hash
    ):
        started = time.perf_counter()
        with pytest.raises(DecodeError, match=f"more than {MAX_KEY_COLLISIONS} distinct map keys share one hash"):
            decode(data, make_address)
        assert time.perf_counter() - started < WORST_DECODE_SECONDS
    few = dict.fromkeys(pairs[:200], 0)  # the sender's dict of 200 is still cheap to build
    with pytest.raises(EncodeError, match="share one hash value"):
        encode(few)
    with pytest.raises(EncodeError, match="share one hash value"):
        encode([{m: 0} for m in colliding_ids(200)])  # across maps too: each key is hashed once


@needs_tuplehash
def test_key_collisions_boundary() -> None:
    pad = [((1 << 40) + i, i) for i in range(COLLISION_CHECK_KEYS)]  # distinct hashes
    for limit_ok, count in ((True, MAX_KEY_COLLISIONS), (False, MAX_KEY_COLLISIONS + 1)):
        value = dict.fromkeys(pad + colliding_pairs(count), 0)
        value["p"] = "p" * SCAN_THRESHOLD  # scanned by the receiver
        if limit_ok:
            assert roundtrip(value) == value
        else:
            with pytest.raises(EncodeError, match="share one hash"):
                encode(value)
            refused_bytes = _map([(_untagged(k), b"\x00") for k in pad + colliding_pairs(count)]
                                 + [(encode("p"), encode("p" * SCAN_THRESHOLD))])
            with pytest.raises(DecodeError, match="share one hash"):
                decode(refused_bytes, make_address)
    # Up to COLLISION_CHECK_KEYS composite keys are not checked at all (their cost is bounded).
    few = dict.fromkeys(colliding_pairs(COLLISION_CHECK_KEYS), 0)
    assert decode(_map([(_untagged(k), b"\x00") for k in few] + [(encode("p"), PAD)]), make_address) == {
        **few, "p": "p" * (SCAN_THRESHOLD + 100)}


def test_equal_keys_and_natural_collisions_are_not_flooding() -> None:
    # hash(-1) == hash(-2): (-1, 0) and (-2, 0) collide, naturally, in every map of the list.
    maps = [{(-1, 0): i, (-2, 0): i, MailboxID(1, 2, i): i, make_address(MailboxID(1, 2, 3)): i} for i in range(500)]
    assert len(encode(maps)) > SCAN_THRESHOLD
    assert roundtrip(maps) == maps
    many = {make_address(MailboxID(3, 2**62 + i, i)): i for i in range(20_000)}
    assert roundtrip(many) == many


def test_scan_and_cbor2_agree_on_depth_limit() -> None:
    limit = _codec.MAX_CBOR_DEPTH
    small_ok = b"\x81" * limit + b"\x01"
    small_deep = b"\x81" * (limit + 1) + b"\x01"
    big_ok = b"\x82" + PAD + b"\x81" * (limit - 1) + b"\x01"  # the outer array is level 1
    big_deep = b"\x82" + PAD + b"\x81" * limit + b"\x01"
    assert len(small_deep) < SCAN_THRESHOLD < len(big_ok)
    nested: Any = 1
    for _ in range(limit):
        nested = [nested]
    assert decode(small_ok, make_address) == nested
    assert decode(big_ok, make_address)[1] == nested[0]
    for payload in (small_deep, big_deep):
        with pytest.raises(DecodeError, match="depth|deeper"):
            decode(payload, make_address)


# ------------------------------------------------------------------------------ fuzz


def _outcome(data: bytes) -> tuple[str, Any]:
    try:
        return ("ok", decode(data, make_address))
    except DecodeError as exc:
        return ("error", str(exc))


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    kind, value = _outcome(data)  # anything but DecodeError propagates and fails the test
    if kind == "ok":  # what decodes, decodes the same way every time (no hidden state)
        assert same(_outcome(data)[1], value)
    else:
        assert value  # a refusal always says why


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(values)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data.insert(i, draw(st.integers(0, 255)))
        else:
            del data[i]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_encodings())
def test_fuzz_mutated_messages_and_both_decode_paths_agree(data: bytes) -> None:
    """With the scan forced on (threshold 0), decode accepts and refuses exactly the same."""
    plain = _outcome(data)
    saved = _decoder.SCAN_THRESHOLD
    _decoder.SCAN_THRESHOLD = -1
    try:
        scanned = _outcome(data)
    finally:
        _decoder.SCAN_THRESHOLD = saved
    if scanned[0] == "error" and "more than" in scanned[1]:
        assume(False)  # the memory budget is the scan's own rule
    assert plain[0] == scanned[0], (plain, scanned)
    if plain[0] == "ok":
        assert same(plain[1], scanned[1])


class Fragile:
    pass


def _key_error(fields: list[Any]) -> Any:
    raise KeyError("nope")


register_type(Fragile, name="test.codec.Fragile", to_fields=lambda f: [], from_fields=_key_error)


def test_decode_never_leaks_other_exceptions_for_hostile_registered_hooks() -> None:
    with pytest.raises(DecodeError, match="cannot rebuild test.codec.Fragile: KeyError"):
        decode(encode([Fragile()]), make_address)

    def bad_address(mid: MailboxID) -> Any:
        raise LookupError("unknown node")

    with pytest.raises(DecodeError):
        decode(encode(make_address(MailboxID(1, 2, 3))), bad_address)


def test_pooled_decoders_do_not_keep_large_payloads_alive() -> None:
    data = encode(b"x" * (1 << 20))
    decode(data, make_address)
    for dec in _decoder._DECODER_POOL:
        stream = dec.cbor.fp
        assert isinstance(stream, io.BytesIO) and len(stream.getbuffer()) < (1 << 20)


def test_batch_decoder_decodes_in_place_between_foreign_bytes() -> None:
    """Payloads are decoded at their offsets; bytes between them (frame headers) are never
    read, even ones that look like simple values, while a payload holding one is refused."""
    from reign._core.codec import BatchDecoder

    batch = BatchDecoder(lambda mid: mid)
    header = b"\xf7\xf8\xe0" * 7  # what would be 'undefined' and simple values in a payload
    values = [{"seq": 0xF7F8}, ("x", -1), [0xE0, b"\xf7"], "\u00f7"]
    data = b""
    spans = []
    for value in values:
        data += header
        payload = encode(value)
        spans.append((len(data), len(data) + len(payload)))
        data += payload
    decode_at = batch.start(data)
    assert [decode_at(start, end) for start, end in spans] == values
    batch.finish()
    bad = header + b"\x82\x01\xf7" + header  # [1, undefined]
    decode_at = batch.start(bad)
    with pytest.raises(DecodeError, match="simple values"):
        decode_at(len(header), len(header) + 3)
    batch.finish()


def test_batch_decoder_finds_simple_values_in_any_payload_of_a_large_read() -> None:
    """Small payloads are checked through windows of the read; large ones by the scan; a
    simple value is refused wherever it is, and values around it are not refused."""
    from reign._core.codec.decoder import _MARK_WINDOW, BatchDecoder

    good = encode({"k": [1, "\u00f7", b"\xf7\xf8"]})  # marked bytes inside strings: fine
    bad_small = b"\x82\x01\xf7"  # [1, undefined]
    bad_large = b"\x82\x59\x10\x00" + b"\xf7" * 4096 + b"\xf7"  # [bytes(4096), undefined]
    for bad in (bad_small, bad_large):
        for position in (0, 1, _MARK_WINDOW // len(good), 3 * _MARK_WINDOW // len(good)):
            payloads = [good] * (3 * _MARK_WINDOW // len(good) + 2)
            payloads[position] = bad
            batch = BatchDecoder(make_address)
            values, failure = batch.decode_all(payloads)
            assert len(values) == position and isinstance(failure, DecodeError), (len(bad), position)
            assert "simple values" in str(failure)
    batch = BatchDecoder(make_address)
    values, failure = batch.decode_all([good, encode(bytes(5000)), good] * 20)
    assert failure is None and len(values) == 60


def test_batch_decoder_reuses_addresses_but_keeps_their_checks() -> None:
    from reign._core.codec import ADDRESS_CACHE_SIZE, BatchDecoder

    made: list[MailboxID] = []

    def make(mid: MailboxID) -> tuple[str, MailboxID]:
        made.append(mid)
        return ("address", mid)

    batch = BatchDecoder(make)
    mid = MailboxID(3, 2**40, 77)
    payload = encode((make_address(mid), 1))
    first, _ = batch.decode_all([payload])
    second, _ = batch.decode_all([payload])
    assert first[0][0] is second[0][0] and made == [mid]  # built once, then reused
    # the same id with a float part hashes like the cached key: still refused
    forged = payload.replace(b"\x18\x03", b"\xf9\x42\x00", 1)  # node 3 -> half-float 3.0
    values, failure = batch.decode_all([forged])
    assert values == [] and isinstance(failure, DecodeError)
    # bounded: past ADDRESS_CACHE_SIZE ids the cache starts over
    payloads = [encode(make_address(MailboxID(3, 1, n))) for n in range(ADDRESS_CACHE_SIZE + 10)]
    values, failure = batch.decode_all(payloads)
    assert failure is None and [v[1].serial for v in values] == list(range(ADDRESS_CACHE_SIZE + 10))
    assert len(batch._decoder.addresses) <= ADDRESS_CACHE_SIZE


def test_batch_decoder_does_not_keep_a_large_read_alive() -> None:
    from reign._core.codec import BatchDecoder

    batch = BatchDecoder(make_address)
    values, failure = batch.decode_all([encode(b"x" * (1 << 20)), encode("small")])
    assert failure is None and values[1] == "small"
    assert len(batch._stream.getbuffer()) < (1 << 16)
    values, failure = batch.decode_all([encode("a"), encode("b")])  # a small read stays
    assert values == ["a", "b"] and 0 < len(batch._stream.getbuffer()) < 100
    # nor after a payload that fails to decode
    values, failure = batch.decode_all([encode(b"x" * (1 << 20)), b"\xff"])
    assert len(values) == 1 and isinstance(failure, DecodeError)
    assert len(batch._data) < (1 << 16) and len(batch._stream.getbuffer()) < (1 << 16)


def test_batch_decoder_matches_decode_and_checks_every_boundary() -> None:
    from reign._core.codec import BatchDecoder

    def make_address(mid: MailboxID) -> MailboxID:
        return mid

    batch = BatchDecoder(make_address)
    messages = [{"k": (1, "two", [3.0, None])}, "x" * 5000, (), 2**63, [b"\x00" * 10]]
    payloads = [encode(m) for m in messages]
    values, failure = batch.decode_all(payloads)
    assert failure is None and values == [decode(p, make_address) for p in payloads] == messages
    good = encode("ok")
    cases = [
        [b"\x82\x01", b"\x02"],  # an item that runs into the next payload
        [b"\x01\x02"],  # trailing bytes
        [b"\x9f\x01\xff"],  # indefinite length
        [b"\xa2\x01\x01\x01\x02"],  # duplicate keys
        [b"\xf7"],  # undefined
    ]
    for bad in cases:
        values, failure = batch.decode_all([good, *bad, good])
        assert values == ["ok"] and isinstance(failure, DecodeError), bad
        values, failure = batch.decode_all([good, good])  # a fresh decoder took over
        assert values == ["ok", "ok"] and failure is None


def test_the_inlined_container_branches_write_what_put_writes() -> None:
    """The encoder's container loop inlines _put's str, int and Address branches for speed;
    each item must come out exactly as _put writes it alone."""
    address = make_address(MailboxID(3, (1 << 64) - 1, 12345))
    for item in ("x", "é" * 30, 7, 300, -5, 1 << 40, address):
        alone = encode(item)
        assert encode([item]) == b"\x81" + alone
        assert encode((item, item))[3:] == b"\x82" + alone + alone  # tag 51200, then the array
