"""One side of one connection between two nodes, as a state machine with no I/O (h11-style).

:class:`PeerProtocol` is fed the bytes read from the peer with :meth:`~PeerProtocol.receive_data`,
which returns events; the bytes it wants written (its HELLO, its ACCEPT) are collected with
:meth:`~PeerProtocol.data_to_send`; its other methods return the bytes of one frame for the
caller to write. The frame format is in :mod:`.frames`. The asyncio connection
(``reign._runtime.connection``) owns the socket and nothing of the protocol's state.

Handshake (each side runs the same machine; its state is :attr:`PeerProtocol.state`)::

    handshaking --(valid HELLO from peer: ACCEPT queued)--(ACCEPT from peer)--> established
         |                                                                          |
         +--------------------------- any violation ----> failed <-----------------+

* Construction queues our HELLO: both sides send HELLO first, without waiting. The peer's
  HELLO must be the first frame we receive; it is validated (version, cluster identity, node id
  0..255 and not ours, equal to ``expected_peer`` — the id the peer's certificate proves —
  when given), and the protocol queues our ACCEPT itself.
* ACCEPT is valid only after the peer's HELLO, once. When it arrives the protocol is
  ``established`` and reports :class:`Established` (the peer's node id and incarnation). Every
  other frame type is valid only when established.
* Any violation raises :class:`~reign.ProtocolError` (or its subclasses
  :class:`~reign.DecodeError`, :class:`~reign.HandshakeError` for authentication failures); the
  object is then ``failed`` and every later call raises ``ProtocolError``. Misuse by the caller
  (a MONITOR before established, a DOWN for a mailbox not on this node, ...) raises
  ``RuntimeError``/``ValueError``/``TypeError``.

Limits: the receive buffer holds at most one incomplete frame (so at most
``max_frame_bytes + 3`` bytes) beyond the bytes of the current ``receive_data`` call.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._errors import DecodeError, EncodeError, HandshakeError, IllegalAddressFormatError, ProtocolError
from .codec import decode, encode
from .frames import (
    BODY_SIZES,
    CLUSTER_ID_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    EXIT_HAS_ORIGIN,
    EXIT_LINKED,
    HEADER,
    ID_BODY_SIZE,
    LENGTH,
    LENGTH_LIMIT,
    MAX_HELLO_BODY,
    MESSAGE_HEADER,
    MIN_BODY_SIZES,
    PROTOCOL_VERSION,
    FrameType,
    down_frame,
    empty_frame,
    exit_frame,
    id_frame,
    link_frame,
    message_frame,
    named_frame,
    payload_frame,
)
from .ids import MAX_NODE_ID, UINT64_LIMIT, MailboxID, parse_mailbox_id
from .naming import MAX_NAME_BYTES, name_bytes

__all__ = [
    "PeerProtocol",
    "Established",
    "Message",
    "Messages",
    "Monitor",
    "Demonitor",
    "Down",
    "Link",
    "Unlink",
    "ExitSignal",
    "Named",
    "Tick",
    "Control",
]

# ---------------------------------------------------------------------------------------------
# Events. NamedTuples (built with tuple.__new__ on the hot path: ~0.1 us, where a frozen
# dataclass costs ~1 us) that compare by type *and* fields, so Monitor(t) != Demonitor(t).


class _Event:
    """Mixed in before each event's NamedTuple: equality and hash include the event type."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and super().__eq__(other)  # the NamedTuple's

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, super().__hash__()))


class _EstablishedFields(NamedTuple):
    node: int
    incarnation: int


class Established(_Event, _EstablishedFields):
    """The handshake completed: the peer is node ``node``, run ``incarnation``."""

    __slots__ = ()


class _NoFields(NamedTuple):
    pass


class Tick(_Event, _NoFields):
    """Keepalive: the peer is alive."""

    __slots__ = ()


class _MessageFields(NamedTuple):
    incarnation: int
    serial: int
    payload: bytes


class Message(_Event, _MessageFields):
    """A message for mailbox (receiving node, ``incarnation``, ``serial``); payload is CBOR.

    :meth:`PeerProtocol.receive_data` reports messages as :class:`Messages` runs;
    :meth:`Messages.messages` gives them in this form.
    """

    __slots__ = ()


class Messages:
    """A run of consecutive MESSAGE frames from one :meth:`PeerProtocol.receive_data` call.

    ``frames`` lists each message as ``(incarnation, serial, start, end)``; its CBOR payload is
    ``data[start:end]``. ``data`` is one immutable copy of the call's complete frames, shared by
    every run of that call, so no payload is copied out on its own: the receiver decodes each
    one in place (:mod:`.inbound`). Compares equal to another run with the same messages.
    """

    __slots__ = ("data", "frames")

    def __init__(self, data: bytes, frames: list[tuple[int, int, int, int]]) -> None:
        self.data = data
        self.frames = frames

    def messages(self) -> list[Message]:
        """The run as :class:`Message` events, payloads copied out."""
        data = self.data
        return [Message(inc, serial, data[start:end]) for inc, serial, start, end in self.frames]

    def __eq__(self, other: object) -> bool:
        if type(other) is not Messages:
            return NotImplemented
        return self.messages() == other.messages()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Messages({self.messages()!r})"


class _TargetFields(NamedTuple):
    target: MailboxID


class Monitor(_Event, _TargetFields):
    """The peer wants :class:`Down` for ``target`` (a mailbox on this node) when it closes."""

    __slots__ = ()


class Demonitor(_Event, _TargetFields):
    """The peer cancels its :class:`Monitor` on ``target``."""

    __slots__ = ()


class _DownFields(NamedTuple):
    target: MailboxID
    reason: Any


class Down(_Event, _DownFields):
    """``target`` (a mailbox on the peer's node) closed with ``reason``.

    The protocol reports ``reason`` as its CBOR bytes; :mod:`.inbound` decodes it.
    """

    __slots__ = ()


class _LinkFields(NamedTuple):
    origin: MailboxID
    target: MailboxID


class Link(_Event, _LinkFields):
    """``origin`` (a mailbox on the peer's node) linked itself to ``target`` (one of ours)."""

    __slots__ = ()


class Unlink(_Event, _LinkFields):
    """``origin`` removed its link to ``target``."""

    __slots__ = ()


class _ExitFields(NamedTuple):
    target: MailboxID
    origin: MailboxID | None
    reason: Any
    linked: bool


class ExitSignal(_Event, _ExitFields):
    """An exit signal for ``target`` (ours) from ``origin`` (on the peer's node, or None).

    ``linked``: it comes from a link (``origin`` closed with ``reason``); otherwise from
    ``reign.exit``. The protocol reports ``reason`` as CBOR bytes; :mod:`.inbound` decodes it.
    """

    __slots__ = ()


class _NamedFields(NamedTuple):
    name: str
    payload: bytes


class Named(_Event, _NamedFields):
    """A message for the mailbox registered locally as ``name``; ``payload`` is CBOR."""

    __slots__ = ()


class _PayloadFields(NamedTuple):
    payload: bytes


class Control(_Event, _PayloadFields):
    """A registry frame; ``payload`` is CBOR (:mod:`.registry_wire` says what it holds)."""

    __slots__ = ()


def _refuse_address(mailbox_id: MailboxID) -> Any:
    raise DecodeError("HELLO must not contain addresses")


_KNOWN = frozenset(int(t) for t in FrameType)
_NAMES = {int(t): t.name for t in FrameType}
_HELLO_KEYS = frozenset({"v", "node", "inc", "cluster"})
_MESSAGE = int(FrameType.MESSAGE)


class PeerProtocol:
    """One side of one connection: the handshake state and the frame parser.

    Keyword arguments: ``local_node`` (0..255) and ``local_incarnation`` describe this node,
    ``cluster_id`` is the 32-byte cluster identity, ``expected_peer`` the node id proven by the
    peer's certificate (or None to accept any other node id), ``max_frame_bytes`` the largest
    frame length N accepted and produced. Raises ``ValueError`` for out-of-range arguments.
    Our HELLO is queued for :meth:`data_to_send` at once.
    """

    __slots__ = (
        "_local_node", "_local_incarnation", "_cluster_id", "_expected_peer", "_max_frame",
        "_buffer", "_state", "_failure", "_got_hello", "_got_accept", "_outgoing", "peer_node",
        "peer_incarnation",
    )

    def __init__(
        self,
        *,
        local_node: int,
        local_incarnation: int,
        cluster_id: bytes,
        expected_peer: int | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if type(local_node) is not int or not 0 <= local_node <= MAX_NODE_ID:
            raise ValueError(f"local_node must be 0..{MAX_NODE_ID}, got {local_node!r}")
        if type(local_incarnation) is not int or not 0 <= local_incarnation < UINT64_LIMIT:
            raise ValueError(f"local_incarnation must be 0 <= x < 2**64, got {local_incarnation!r}")
        if not isinstance(cluster_id, bytes) or len(cluster_id) != CLUSTER_ID_BYTES:
            raise ValueError(f"cluster_id must be {CLUSTER_ID_BYTES} bytes")
        if expected_peer is not None and (
            type(expected_peer) is not int or not 0 <= expected_peer <= MAX_NODE_ID
        ):
            raise ValueError(f"expected_peer must be None or 0..{MAX_NODE_ID}, got {expected_peer!r}")
        if type(max_frame_bytes) is not int or not 64 <= max_frame_bytes < LENGTH_LIMIT:
            raise ValueError(f"max_frame_bytes must be 64 <= x < 2**32, got {max_frame_bytes!r}")
        self._local_node = local_node
        self._local_incarnation = local_incarnation
        self._cluster_id = bytes(cluster_id)
        self._expected_peer = expected_peer
        self._max_frame = max_frame_bytes
        self._buffer = bytearray()
        self._state = "handshaking"
        self._failure: ProtocolError | None = None
        self._got_hello = False
        self._got_accept = False
        #: The peer's node id and incarnation, set once its HELLO was validated.
        self.peer_node: int | None = None
        self.peer_incarnation: int | None = None
        body = encode({
            "v": PROTOCOL_VERSION,
            "node": local_node,
            "inc": local_incarnation,
            "cluster": self._cluster_id,
        })
        self._outgoing = [payload_frame(FrameType.HELLO, body)]

    # ----------------------------------------------------------------------- state

    @property
    def state(self) -> str:
        """``"handshaking"``, ``"established"`` or ``"failed"``."""
        return self._state

    @property
    def handshake_completed(self) -> bool:
        """True once the handshake completed, and still True after a later failure."""
        return self._got_hello and self._got_accept

    @property
    def max_frame_bytes(self) -> int:
        return self._max_frame

    @property
    def local_node(self) -> int:
        return self._local_node

    @property
    def local_incarnation(self) -> int:
        return self._local_incarnation

    def data_to_send(self) -> bytes:
        """The handshake bytes the protocol produced by itself (HELLO, ACCEPT) since the last
        call, for the caller to write before anything else; ``b""`` when there are none."""
        out, self._outgoing = self._outgoing, []
        return b"".join(out)

    def _check_alive(self) -> None:
        if self._state == "failed":
            raise ProtocolError(f"connection already failed: {self._failure}")

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._state = "failed"
        self._failure = exc
        self._buffer = bytearray()
        self._outgoing = []
        return exc

    # ----------------------------------------------------------------------- outbound

    def _check_established(self, what: str) -> None:
        if self._state != "established":
            self._check_alive()
            raise RuntimeError(f"cannot send {what} before the handshake completed")

    def message(self, target: MailboxID, payload: bytes) -> bytes:
        """A MESSAGE frame for ``target`` (a mailbox on the peer's node).

        Raises :class:`EncodeError` if the frame would exceed ``max_frame_bytes``.
        """
        if self._state != "established":
            self._check_established("MESSAGE")
        if 17 + len(payload) > self._max_frame:
            raise EncodeError(
                f"message payload of {len(payload)} bytes exceeds the frame limit "
                f"({self._max_frame - 17} bytes)"
            )
        return message_frame(target.incarnation, target.serial, payload)

    def _id_frame(self, frame_type: FrameType, target: MailboxID, node: int | None, whose: str) -> bytes:
        self._check_established(frame_type.name)
        if type(target) is not MailboxID:
            raise TypeError(f"target must be a MailboxID, not {type(target).__name__}")
        if target.node != node:
            raise ValueError(f"{frame_type.name} target {target} is not on {whose} ({node})")
        return id_frame(frame_type, target)

    def monitor(self, target: MailboxID) -> bytes:
        """A MONITOR frame: ask for DOWN(target) when ``target`` (on the peer) closes."""
        return self._id_frame(FrameType.MONITOR, target, self.peer_node, "the peer's node")

    def demonitor(self, target: MailboxID) -> bytes:
        """A DEMONITOR frame cancelling :meth:`monitor`."""
        return self._id_frame(FrameType.DEMONITOR, target, self.peer_node, "the peer's node")

    def down(self, target: MailboxID, reason: bytes) -> bytes:
        """A DOWN frame: ``target`` (a mailbox on this node) closed with ``reason`` (CBOR).

        Raises :class:`EncodeError` if the frame would exceed ``max_frame_bytes``.
        """
        self._check_ids(FrameType.DOWN, target, self._local_node, "this node")
        self._check_size(FrameType.DOWN, 1 + ID_BODY_SIZE + len(reason))
        return down_frame(target, reason)

    def link(self, origin: MailboxID, target: MailboxID) -> bytes:
        """A LINK frame from ``origin`` (on this node) to ``target`` (on the peer's)."""
        self._check_ids(FrameType.LINK, origin, self._local_node, "this node")
        self._check_ids(FrameType.LINK, target, self.peer_node, "the peer's node")
        return link_frame(FrameType.LINK, origin, target)

    def unlink(self, origin: MailboxID, target: MailboxID) -> bytes:
        """An UNLINK frame cancelling :meth:`link`."""
        self._check_ids(FrameType.UNLINK, origin, self._local_node, "this node")
        self._check_ids(FrameType.UNLINK, target, self.peer_node, "the peer's node")
        return link_frame(FrameType.UNLINK, origin, target)

    def exit(self, target: MailboxID, origin: MailboxID | None, reason: bytes, *, linked: bool) -> bytes:
        """An EXIT frame: an exit signal for ``target`` (on the peer) from ``origin`` (on this
        node, or None), with ``reason`` (CBOR); ``linked`` if it comes from a link.

        Raises :class:`EncodeError` if the frame would exceed ``max_frame_bytes``.
        """
        self._check_ids(FrameType.EXIT, target, self.peer_node, "the peer's node")
        if origin is not None:
            self._check_ids(FrameType.EXIT, origin, self._local_node, "this node")
        elif linked:
            raise ValueError("a link's exit signal always has an origin")
        size = 2 + ID_BODY_SIZE * (2 if origin is not None else 1) + len(reason)
        self._check_size(FrameType.EXIT, size)
        return exit_frame(target, origin, reason, linked)

    def named(self, name: str, payload: bytes) -> bytes:
        """A NAMED frame: ``payload`` (CBOR) for the mailbox registered as ``name`` on the peer.

        Raises ValueError for a name that is empty, not UTF-8 encodable or longer than
        :data:`~.frames.MAX_NAME_BYTES` bytes, :class:`EncodeError` over the frame limit.
        """
        self._check_established("NAMED")
        raw = name_bytes(name)
        self._check_size(FrameType.NAMED, 3 + len(raw) + len(payload))
        return named_frame(raw, payload)

    def _check_ids(self, frame_type: FrameType, mid: MailboxID, node: int | None, whose: str) -> None:
        self._check_established(frame_type.name)
        if type(mid) is not MailboxID:
            raise TypeError(f"{frame_type.name} needs MailboxIDs, not {type(mid).__name__}")
        if mid.node != node:
            raise ValueError(f"{frame_type.name} id {mid} is not on {whose} ({node})")

    def _check_size(self, frame_type: FrameType, n: int) -> None:
        if n > self._max_frame:
            raise EncodeError(f"{frame_type.name} frame of {n} bytes exceeds the frame limit ({self._max_frame})")

    def tick(self) -> bytes:
        """A TICK (keepalive) frame."""
        self._check_established("TICK")
        return empty_frame(FrameType.TICK)

    def control(self, payload: bytes) -> bytes:
        """A CONTROL frame; :class:`EncodeError` if it would exceed ``max_frame_bytes``."""
        self._check_established("CONTROL")
        if 1 + len(payload) > self._max_frame:
            raise EncodeError(
                f"control payload of {len(payload)} bytes exceeds the frame limit ({self._max_frame - 1} bytes)"
            )
        return payload_frame(FrameType.CONTROL, payload)

    # ----------------------------------------------------------------------- inbound

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Buffer ``data`` and return the events of every complete frame, in order.

        Consecutive MESSAGE frames come as one :class:`Messages` event; every other frame is
        one event of its own type (HELLO and ACCEPT produce none: the handshake's completion is
        :class:`Established`). Raises :class:`ProtocolError` (or
        :class:`DecodeError`/:class:`HandshakeError`) on any violation, as soon as the offending
        header arrives when the header alone shows it (length, type, state, body size); the
        object is then failed. Events of frames before the bad one in the same call are lost
        with it: the connection is closed anyway.
        """
        if self._state == "failed":
            self._check_alive()
        buf = self._buffer
        if buf:
            buf += data
            source: Any = buf
        else:  # the usual case: parse the caller's bytes, keep only an incomplete tail
            source = data
            if type(data) is bytearray:
                source = bytes(data)  # the caller may reuse it: runs need bytes of their own
            elif type(data) is memoryview and data.itemsize != 1:
                source = data.cast("B")  # lengths and offsets count bytes
        end = len(source)
        events: list[Any] = []
        pos = 0
        if end < 5:
            if end == 4:
                self._check_length(LENGTH.unpack_from(source, 0)[0])
        else:
            append = events.append
            max_frame = self._max_frame
            unpack_message = MESSAGE_HEADER.unpack_from
            established = self._state == "established"
            runs: list[Messages] = []
            frames: list[tuple[int, int, int, int]] | None = None
            view = memoryview(source)
            try:
                while end - pos >= 5:
                    if end - pos >= 21:  # room for a MESSAGE header: read it all at once
                        n, frame_type, incarnation, serial = unpack_message(source, pos)
                    else:
                        n, frame_type = HEADER.unpack_from(source, pos)
                    frame_end = pos + 4 + n
                    if frame_type == 3 and established and 17 <= n <= max_frame:
                        if frame_end > end:
                            break
                        if frames is None:
                            frames = []
                            run = Messages(b"", frames)
                            runs.append(run)
                            append(run)
                        frames.append((incarnation, serial, pos + 21, frame_end))
                    else:
                        self._check_header(n, frame_type)
                        if frame_end > end:
                            break
                        event = self._frame(frame_type, view[pos + 5 : frame_end])
                        if event is not None:
                            append(event)
                        frames = None
                        established = self._state == "established"
                    pos = frame_end
                else:
                    if end - pos == 4:
                        self._check_length(LENGTH.unpack_from(source, pos)[0])
                if runs:
                    snapshot = source if pos == end and type(source) is bytes else view[:pos].tobytes()
                    for run in runs:
                        run.data = snapshot
            finally:
                view.release()
        if source is buf:
            del buf[:pos]  # cheap: a bytearray drops a prefix by moving its start
        elif pos < end:
            buf += source[pos:]
        return events

    def _check_length(self, n: int) -> None:
        if n == 0:
            raise self._fail(ProtocolError("frame with length 0"))
        if n > self._max_frame:
            raise self._fail(
                ProtocolError(f"frame of {n} bytes announced, over the limit of {self._max_frame}")
            )

    def _check_header(self, n: int, frame_type: int) -> None:
        """Refuse a frame from its header alone (before its body is buffered)."""
        self._check_length(n)
        if frame_type not in _KNOWN:
            raise self._fail(ProtocolError(f"unknown frame type {frame_type}"))
        name = _NAMES[frame_type]
        body = n - 1
        if frame_type == FrameType.HELLO:
            if self._got_hello:
                raise self._fail(ProtocolError("second HELLO"))
            if body > MAX_HELLO_BODY:
                raise self._fail(ProtocolError(f"HELLO body of {body} bytes (at most {MAX_HELLO_BODY})"))
            return
        if not self._got_hello:
            raise self._fail(ProtocolError(f"{name} frame before the peer's HELLO"))
        if frame_type == FrameType.ACCEPT:
            if self._got_accept:
                raise self._fail(ProtocolError("second ACCEPT"))
        elif self._state != "established":
            raise self._fail(ProtocolError(f"{name} frame before the peer's ACCEPT"))
        expected = BODY_SIZES.get(frame_type)  # type: ignore[call-overload]
        if expected is not None and body != expected:
            raise self._fail(ProtocolError(f"{name} body must be {expected} bytes, got {body}"))
        least = MIN_BODY_SIZES.get(frame_type)  # type: ignore[call-overload]
        if least is not None and body < least:
            raise self._fail(ProtocolError(f"{name} body of {body} bytes is shorter than {least}"))

    def _frame(self, frame_type: int, body: memoryview) -> Any:
        """The event (or None) of one complete frame whose header passed :meth:`_check_header`."""
        if frame_type == FrameType.HELLO:
            self._receive_hello(body)
            return None
        if frame_type == FrameType.ACCEPT:
            self._got_accept = True
            self._state = "established"
            assert self.peer_node is not None and self.peer_incarnation is not None
            return Established(self.peer_node, self.peer_incarnation)
        if frame_type == _MESSAGE:  # pragma: no cover - a MESSAGE that passed _check_header is fast-pathed
            raise AssertionError("MESSAGE frames are parsed in receive_data")
        if frame_type == FrameType.TICK:
            return Tick()
        if frame_type == FrameType.CONTROL:
            return Control(body.tobytes())
        name = _NAMES[frame_type]
        if frame_type == FrameType.NAMED:
            length = int.from_bytes(body[:2], "big")
            if not 1 <= length <= MAX_NAME_BYTES or 2 + length >= len(body):
                raise self._fail(ProtocolError(f"NAMED frame with a name of {length} bytes in {len(body)}"))
            try:
                text = body[2 : 2 + length].tobytes().decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail(ProtocolError("NAMED frame name is not UTF-8")) from None
            return Named(text, body[2 + length :].tobytes())
        if frame_type == FrameType.EXIT:
            flags = body[0]
            if flags & ~(EXIT_HAS_ORIGIN | EXIT_LINKED):
                raise self._fail(ProtocolError(f"EXIT frame with unknown flags {flags:#x}"))
            target = self._id_at(body, 1, name, self._local_node, "this node")
            end = 1 + ID_BODY_SIZE
            origin = None
            if flags & EXIT_HAS_ORIGIN:
                origin = self._id_at(body, end, name, self.peer_node, "the peer's node")
                end += ID_BODY_SIZE
            elif flags & EXIT_LINKED:
                raise self._fail(ProtocolError("EXIT from a link without its origin"))
            if end >= len(body):
                raise self._fail(ProtocolError("EXIT frame without a reason"))
            return ExitSignal(target, origin, body[end:].tobytes(), bool(flags & EXIT_LINKED))
        if frame_type == FrameType.LINK or frame_type == FrameType.UNLINK:
            origin = self._id_at(body, 0, name, self.peer_node, "the peer's node")
            target = self._id_at(body, ID_BODY_SIZE, name, self._local_node, "this node")
            return Link(origin, target) if frame_type == FrameType.LINK else Unlink(origin, target)
        if frame_type == FrameType.DOWN:
            target = self._id_at(body, 0, name, self.peer_node, "the peer's node")
            return Down(target, body[ID_BODY_SIZE:].tobytes())
        # MONITOR, DEMONITOR: the body is 18 bytes
        target = self._id_at(body, 0, name, self._local_node, "this node")
        return Monitor(target) if frame_type == FrameType.MONITOR else Demonitor(target)

    def _id_at(self, body: memoryview, start: int, name: str, node: int | None, whose: str) -> MailboxID:
        """The mailbox id at ``body[start:start+18]``, which must be on ``node``."""
        try:
            mid = parse_mailbox_id(body[start : start + ID_BODY_SIZE])
        except IllegalAddressFormatError:
            raise self._fail(ProtocolError(f"{name} body is not a mailbox id")) from None
        if mid.node != node:
            raise self._fail(ProtocolError(f"{name} for {mid}, which is not on {whose}"))
        return mid

    def _receive_hello(self, body: memoryview) -> None:
        try:
            hello = decode(body, _refuse_address)
        except DecodeError as exc:
            raise self._fail(DecodeError(f"bad HELLO: {exc}")) from None
        if type(hello) is not dict:
            raise self._fail(ProtocolError("HELLO body is not a map"))
        version = hello.get("v")
        if type(version) is not int:
            raise self._fail(ProtocolError("HELLO has no integer version"))
        if version != PROTOCOL_VERSION:
            raise self._fail(HandshakeError(
                f"unsupported protocol version {version} (this node speaks {PROTOCOL_VERSION})"
            ))
        if hello.keys() != _HELLO_KEYS:
            keys = sorted(map(repr, hello))
            raise self._fail(ProtocolError(f"HELLO keys must be {sorted(_HELLO_KEYS)}, got {keys}"[:300]))
        node, incarnation, cluster = hello["node"], hello["inc"], hello["cluster"]
        if type(cluster) is not bytes:
            raise self._fail(ProtocolError("HELLO cluster must be bytes"))
        if cluster != self._cluster_id:
            raise self._fail(HandshakeError("peer is from another cluster"))
        if type(node) is not int or not 0 <= node <= MAX_NODE_ID:
            raise self._fail(ProtocolError(f"HELLO node must be 0..{MAX_NODE_ID}, got {node!r:.40}"))
        if type(incarnation) is not int or not 0 <= incarnation < UINT64_LIMIT:
            raise self._fail(ProtocolError(f"HELLO incarnation must be 0 <= x < 2**64, got {incarnation!r:.40}"))
        if node == self._local_node:
            raise self._fail(HandshakeError(f"peer claims to be node {node}, which is this node"))
        if self._expected_peer is not None and node != self._expected_peer:
            raise self._fail(HandshakeError(
                f"peer claims node {node} but its certificate proves node {self._expected_peer}"
            ))
        self._got_hello = True
        self.peer_node = node
        self.peer_incarnation = incarnation
        self._outgoing.append(empty_frame(FrameType.ACCEPT))
