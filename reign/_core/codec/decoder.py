"""The strict decoder: bytes from a peer to a value of the model, or DecodeError.

Decoding uses cbor2 (Rust) with an allow-list of our tags (``semantic_decoders`` whose lookup
raises for any other tag), bounded depth, no indefinite lengths or duplicate keys, and checks
of its own for what cbor2 accepts: trailing bytes, simple values, maps as map keys, and (for
payloads over :data:`~reign._core.codec.model.SCAN_THRESHOLD`) the structure, item count and
memory estimate of :func:`~reign._core.codec.scan.scan`, then, for a payload with more than
COLLISION_CHECK_KEYS composite map keys, the hash values of those keys (decoded once more,
alone, beforehand: a message with many tuple or address keys decodes about twice as slowly
as before, in exchange for linear time; measured 155 -> 320 ms for 50,000 address keys).
:func:`decode` decodes one payload; :class:`BatchDecoder` decodes the payloads of one read in
place.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from cbor2 import CBORDecoder, CBORSimpleValue, undefined

from ..._errors import DecodeError
from ..ids import MailboxID, mailbox_id_from_parts
from .model import (
    COLLISION_CHECK_KEYS,
    LEAVES,
    MAX_CBOR_DEPTH,
    SCAN_THRESHOLD,
    TAG_ADDRESS,
    TAG_MAILBOX_ID,
    TAG_OBJECT,
    TAG_TUPLE,
    key_collisions,
)
from .scan import walk
from .types import BY_NAME, BY_TYPE

__all__ = ["decode", "BatchDecoder", "ADDRESS_CACHE_SIZE"]


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
    reg = BY_NAME.get(name) if type(name) is str else None
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

    # cbor2's own protocol attributes on the decoder callable, not a private member of ours:
    begin._cbor2_name = None  # type: ignore[attr-defined]  # noqa: SLF001
    begin._cbor2_immutable = False  # type: ignore[attr-defined]  # noqa: SLF001
    return begin


class _Decoder:
    """A reusable cbor2 decoder (0.9 us to construct) bound to one call's ``make_address``."""

    __slots__ = ("cbor", "make_address", "addresses")

    def __init__(self, read_size: int = 1 << 62) -> None:
        self.make_address: Callable[[MailboxID], Any] | None = None
        #: (node, incarnation, serial) -> Address, when the decoder serves one node (batch).
        self.addresses: dict[tuple[int, int, int], Any] | None = None
        tags = _TagTable({
            TAG_TUPLE: _tag_decoder(_decode_tuple),
            TAG_MAILBOX_ID: _tag_decoder(_decode_mailbox_id),
            TAG_ADDRESS: _tag_decoder(self._decode_address),
            TAG_OBJECT: _tag_decoder(_decode_object),
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


_PLAIN = LEAVES | {int}


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
    reg = BY_TYPE.get(t)
    if reg is not None:
        return _has_simple(list(reg.fields_of(value)))
    return False  # an address from make_address, or a plain value


def _check_keys(data: bytes, keys: list[tuple[int, int]], make_address: Callable[[MailboxID], Any]) -> None:
    """DecodeError if the composite map keys at ``keys`` in ``data`` (found by the pre-scan)
    are hash flooding (:func:`~.model.key_collisions`); nothing for COLLISION_CHECK_KEYS or fewer."""
    if len(keys) <= COLLISION_CHECK_KEYS:
        return
    # Each key is decoded alone in key position, as the one key of a map {key: null}: then
    # cbor2 builds exactly the object the real decode will hash (arrays as tuples). The maps
    # are decoded back to back from one stream, each at the depth of a top-level map.
    stream = io.BytesIO(b"".join(b"\xa1" + data[start:end] + b"\xf6" for start, end in keys))
    decoder = _Decoder(_BATCH_READ_SIZE)
    decoder.make_address = make_address
    decoder.cbor.fp = stream
    decode_next = decoder.cbor.decode
    try:
        reason = key_collisions(next(iter(decode_next())) for _ in range(len(keys)))
    except DecodeError:
        raise
    except Exception as exc:  # an invalid or unhashable key: the real decode would fail too
        raise DecodeError(_reason(exc)) from exc
    if reason is not None:
        raise DecodeError(reason)


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
                payload = self._data[start:end]
                keys = walk(payload)[1]  # refuses simple values too
                if keys is not None:
                    _check_keys(payload, keys, self._make_address)
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
        keys = walk(data)[1]
        if keys is not None:
            _check_keys(data, keys, dec.make_address)  # type: ignore[arg-type]
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


# Fail at import, not on the first message, if cbor2 lacks what the strict decoder needs
# (semantic_decoders, allow_indefinite and allow_duplicate_keys: cbor2 >= 6.1; tested on 6.2.1).
try:
    _DECODER_POOL.append(_Decoder())
except TypeError as _exc:  # pragma: no cover - depends on the installed cbor2
    raise ImportError(f"reign needs cbor2 >= 6.2 (the Rust rewrite): {_exc}") from _exc
