"""One TLS connection to a peer: the socket side of a :class:`~reign._core.protocol.PeerProtocol`.

The connection owns the transport and nothing of the protocol: it checks the certificate the
peer proved, feeds every read to the node's :class:`~reign._core.inbound.Inbound` (the one
receive path), writes what the protocol and the node produce, and reports its end.

Invariants:

* Frames are written in the order they were produced; writes made in one loop iteration are
  joined into one ``transport.write`` (one write per frame is ~10x slower, FACTS.md).
  The protocol's own handshake bytes (HELLO, ACCEPT) always go out before anything else.
* Nothing a peer sends can raise out of this module: protocol, decode and handshake errors
  close this one connection and are logged once with the peer and the reason; a bug in the
  node's handling closes the connection too, logged as ``peer.internal_error``.
* ``abort()`` and ``close_gracefully()`` report the end to the owner before they return.
* The outbound buffer is bounded (the owner's ``outbound_bytes``, a spec field): what waits for
  the peer is the unwritten frames plus the transport's buffer. One counter, ``room``, is what
  may still be queued: each frame lowers it, a flush leaves it as it is (the transport's buffer
  grew by at most what was written), and only when a frame seems not to fit is the transport's
  buffer read and ``room`` recomputed. So the estimate never exceeds the truth and the send hot
  path makes one subtraction for it. A MESSAGE that would take it past
  ``outbound_bytes`` is refused (``write_message`` returns False; the caller counts and logs
  the drop). Frames the node makes by itself (DOWN, MONITOR, CONTROL, ticks) are never dropped
  alone, because the peer's view would then be wrong for good: they may use a second
  ``outbound_bytes`` of headroom, and one that does not fit even there closes the connection
  (``peer.outbound.overflow``), which tells the peer the truth (everything it watches on this
  node is down; the reconnection resends watches and the registry). Nothing written after
  that reaches the peer, so it sees a prefix of what was sent, never a stream with a hole.
* Before our ACCEPT goes out the owner's ``check_hello`` sees the peer's node id and
  incarnation and may refuse it (a duplicate node id); the peer never becomes "established".
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol, cast

from .._config.certs import node_id_from_certificate
from .._core.codec import encode
from .._core.frames import MESSAGE_HEADER, MESSAGE_OVERHEAD, FrameType
from .._core.ids import MailboxID
from .._core.inbound import Inbound
from .._core.messages import Crash
from .._core.protocol import Established, PeerProtocol
from .._errors import HandshakeError, ProtocolError, ReignError

if TYPE_CHECKING:
    from .peer import Peer

__all__ = ["Connection", "ConnectionOwner", "HELLO_TIMEOUT", "WRITE_HIGH_WATER", "WRITE_LOW_WATER", "reason_bytes"]

#: Seconds from TCP accept/connect to a completed HELLO exchange.
HELLO_TIMEOUT = 10.0
#: Outbound high-water mark per connection: past it the peer is "busy" (``wait_drained``).
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024
#: Largest single ``transport.write`` of a flush. The TLS transport reports only what it holds
#: itself, not what it passed on to the socket transport below it (which takes one write whole
#: before it pushes back), so what one write hands over is invisible to the outbound bound;
#: writing in chunks keeps that to about one chunk. Each chunk beyond the first costs one more
#: copy (measured: +3.6 KB of memcpy per 4 KiB message with 1 MiB chunks), so the chunk is an
#: eighth of ``outbound_bytes`` (64 KiB at least, this at most): 4 MiB at the default 32 MiB,
#: more than the ~4 MB one iteration queues before ``wait_drained``'s high-water mark.
WRITE_CHUNK = 4 * 1024 * 1024
MIN_WRITE_CHUNK = 64 * 1024

_pack_message_header = MESSAGE_HEADER.pack
_MESSAGE = int(FrameType.MESSAGE)
assert MESSAGE_OVERHEAD == 21  # inlined in write_message
_NO_ROOM = -(1 << 62)  # room of an overflowed or closed connection: nothing fits


#: Bytes of frame overhead a DOWN or EXIT adds to its reason (type, flags, two ids), at most.
_SIGNAL_OVERHEAD = 64


def reason_bytes(reason: Any, max_frame_bytes: int) -> bytes:
    """The CBOR of an exit reason for a DOWN or EXIT frame.

    Reasons are checked to be encodable when they are given (``close``, ``exit``), so this
    falls back only for a reason too large for the peer's frame limit: a :class:`Crash` is cut
    to fit (its message's start and its traceback's end, marked ``"...\\n"``), so the peer still
    learns a Crash; any other reason becomes a ``("reason_too_large", <its repr, cut>)`` tuple
    instead of nothing.
    """
    try:
        data = encode(reason)
    except Exception:  # a hook-based class whose to_fields fails now: the same fallback
        data = b""
    if data and len(data) + _SIGNAL_OVERHEAD <= max_frame_bytes:
        return data
    if type(reason) is Crash:
        keep = max_frame_bytes  # characters kept of the message and of the traceback
        while keep >= 16:
            keep //= 2
            cut = Crash(reason.type[:200], reason.message[:keep], "...\n" + reason.traceback[-keep:])
            data = encode(cut)
            if len(data) + _SIGNAL_OVERHEAD <= max_frame_bytes:
                return data
    return encode(("reason_too_large", repr(reason)[: max(0, min(200, max_frame_bytes - 2 * _SIGNAL_OVERHEAD))]))


class ConnectionOwner(Protocol):
    """What a connection needs from the node's connection manager (``reign._runtime.cluster``)."""

    node_id: int
    incarnation: int
    cluster_id: bytes
    max_frame_bytes: int
    outbound_bytes: int
    inbound: Inbound
    read_view: memoryview
    log: Any
    limited_log: Any  # a log.RateLimitedLog: for what unauthenticated sources can cause

    def check_hello(self, conn: Connection, node: int, incarnation: int) -> None:
        """The peer's HELLO is valid; raise HandshakeError to refuse it before our ACCEPT."""
        ...

    def connection_made(self, conn: Connection) -> None: ...
    def check_peer(self, proven: int, inbound: bool) -> None: ...
    def connection_established(self, conn: Connection, event: Established) -> bool: ...
    def handle_event(self, conn: Connection, event: Any) -> bool: ...
    def handle_control(self, conn: Connection, value: Any) -> None: ...
    def connection_closed(self, conn: Connection) -> None: ...


class Connection(asyncio.BufferedProtocol):
    """One TLS connection: the protocol state machine plus coalesced writes."""

    def __init__(self, owner: ConnectionOwner, expected_peer: int | None, remote: str) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.expected_peer = expected_peer
        self.remote = remote
        self.proven: int | None = None
        self.transport: asyncio.Transport | None = None
        self.protocol: PeerProtocol | None = None
        self.peer: Peer | None = None
        self.view = owner.read_view
        self.out: list[bytes] = []
        self.own_frames = 0  # entries of self.out that are not MESSAGE (header, payload) pairs
        # Outbound bound (module docstring): a MESSAGE fits while room stays >= 0, a frame the
        # node makes by itself while room stays >= -outbound_limit. base is room with nothing
        # unwritten, so the unwritten bytes are base - room.
        self.outbound_limit = owner.outbound_bytes
        self.room = self.base = self.outbound_limit
        self.write_chunk = max(MIN_WRITE_CHUNK, min(WRITE_CHUNK, self.outbound_limit // 8))
        self.overflowed = False
        # Bytes handed to the transport, ever, are credit - base (for stall detection): credit
        # grows by what each recount gives back, so no flush counts anything.
        self.credit = self.outbound_limit
        self.drained_mark = 0  # written - transport buffer at the last stall check
        self.stalled_since: float | None = None
        self.hello_checked = False
        self.preauth: object | None = None  # the admission token while not yet established
        self.flush_scheduled = False
        self.last_write = self.loop.time()
        self.last_read = self.loop.time()
        self.closed = False
        self.closed_by_peer = False  # the peer closed the connection cleanly (TLS close_notify)
        self.close_reason: str | None = None
        self.established: asyncio.Future[None] = self.loop.create_future()
        self.hello_timer: asyncio.TimerHandle | None = None  # started by connection_made
        self._on_event = self._event
        self._on_control = self._control

    def __repr__(self) -> str:
        return f"<Connection peer={self.peer_id_for_log()} remote={self.remote} closed={self.closed}>"

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one
        self.transport = transport
        self.hello_timer = self.loop.call_later(HELLO_TIMEOUT, self._hello_timeout)
        owner = self.owner
        owner.connection_made(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        try:
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:
                raise HandshakeError("peer presented no certificate")
            proven = node_id_from_certificate(der)
            if self.expected_peer is not None and proven != self.expected_peer:
                raise HandshakeError(
                    f"dialled node {self.expected_peer} but its certificate proves node {proven}"
                )
            owner.check_peer(proven, self.expected_peer is None)
        except ReignError as exc:
            self.fail(exc)
            return
        self.proven = proven
        self.protocol = PeerProtocol(
            local_node=owner.node_id,
            local_incarnation=owner.incarnation,
            cluster_id=owner.cluster_id,
            expected_peer=proven,
            max_frame_bytes=owner.max_frame_bytes,
        )
        self.write(self.protocol.data_to_send())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        protocol = self.protocol
        if protocol is None or self.closed:
            return
        self.last_read = self.loop.time()
        try:
            count = self.owner.inbound.receive(protocol, self.view[:nbytes], self._on_event, self._on_control)
            peer = self.peer
            if peer is not None:
                peer.last_heard = self.last_read
                peer.messages_in += count
            elif not self.closed:
                if protocol.peer_incarnation is not None and not self.hello_checked:
                    self._check_hello(protocol.peer_node, protocol.peer_incarnation)
                handshake = protocol.data_to_send()  # our ACCEPT, after the peer's HELLO
                if handshake:
                    self.write(handshake)
        except ProtocolError as exc:
            self.fail(exc)
        except Exception as exc:  # a bug must not kill the node: drop this connection, loudly
            self.owner.log.exception("peer.internal_error", peer=self.peer_id_for_log())
            self.fail(ProtocolError(f"internal error: {exc!r}"))

    def _event(self, event: Any) -> bool:
        if type(event) is Established:
            assert self.protocol is not None
            if not self.hello_checked:  # HELLO and ACCEPT arrived in one read
                self._check_hello(event.node, event.incarnation)
            handshake = self.protocol.data_to_send()
            if handshake:  # our ACCEPT goes out before anything the node sends on its own
                self.write(handshake)
            self.cancel_hello_timer()
            return self.owner.connection_established(self, event) or self.closed
        return self.owner.handle_event(self, event) or self.closed

    def _check_hello(self, node: int | None, incarnation: int) -> None:
        self.hello_checked = True
        assert node is not None
        self.owner.check_hello(self, node, incarnation)  # HandshakeError: fail() before ACCEPT

    def _control(self, value: Any) -> None:
        self.owner.handle_control(self, value)

    def eof_received(self) -> bool:
        # Under TLS this is the peer's close_notify: it closed on purpose (a cut-off or killed
        # peer ends in connection_lost with an error instead).
        self.close_reason = self.close_reason or "peer closed the connection"
        self.closed_by_peer = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.cancel_hello_timer()
        if exc is not None and self.close_reason is None:
            self.close_reason = f"connection lost: {exc!r}"
        self._fail_established()
        self.owner.connection_closed(self)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.drained.clear()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.update_drained()

    # ------------------------------------------------------------ writing

    def write(self, frame: bytes) -> None:
        """Queue one frame the node made by itself (or several, joined) for this iteration's
        write. Beyond the headroom the connection is closed instead (module docstring)."""
        room = self.room - len(frame)
        if room < -self.outbound_limit:
            room = self._recount_room() - len(frame)
            if room < -self.outbound_limit:
                self._overflow(len(frame))
                return
        self.out.append(frame)
        self.own_frames += 1
        self.room = room
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def write_message(self, incarnation: int, serial: int, payload: bytes) -> bool:
        """Queue one MESSAGE frame: its 21-byte header and ``payload`` (not copied).

        Returns False, queueing nothing, if it would take the outbound buffer past
        ``outbound_bytes``.
        """
        size = 21 + len(payload)  # MESSAGE_OVERHEAD, inlined
        room = self.room - size
        if room < 0:
            room = self._recount_room() - size
            if room < 0:
                return False
        out = self.out
        out.append(_pack_message_header(size - 4, _MESSAGE, incarnation, serial))
        out.append(payload)
        self.room = room
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        return True

    def write_application(self, frame: bytes) -> bool:
        """Queue one frame an application send made (a NAMED message) under the same bound as
        :meth:`write_message`: False, queueing nothing, if it does not fit."""
        room = self.room - len(frame)
        if room < 0:
            room = self._recount_room() - len(frame)
            if room < 0:
                return False
        self.out.append(frame)
        self.room = room
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        return True

    def _recount_room(self) -> int:
        """Slow path: ``room`` from the transport's buffer as it is now (it may have drained)."""
        if self.overflowed or self.closed:
            return _NO_ROOM
        unwritten = self.base - self.room
        base = self.outbound_limit - self.transport_buffer()
        self.credit += base - self.base
        self.base = base
        self.room = base - unwritten
        return self.room

    def _overflow(self, size: int) -> None:
        """A frame the node made by itself does not fit: close (on the next iteration, so no
        caller sees the peer go down in the middle of its own work)."""
        if self.overflowed or self.closed:
            return
        queued = self.queued_bytes()
        self.overflowed = True  # nothing else is queued: the peer sees a prefix
        self.close_reason = (
            f"outbound buffer overflow: {queued} bytes wait for the peer and a {size}-byte frame "
            f"of this node's own did not fit (limit {self.outbound_limit} + as much headroom)"
        )
        self.owner.log.warning(
            "peer.outbound.overflow", peer=self.peer_id_for_log(), remote=self.remote,
            queued_bytes=queued, outbound_bytes=self.outbound_limit,
        )
        self.loop.call_soon(self.abort)

    def write_down(self, target: MailboxID, reason: Any) -> None:
        """Queue DOWN(target, reason); never raises into the caller's close (a dead protocol
        drops this connection)."""
        protocol = self.protocol
        if protocol is None or self.closed:
            return
        try:
            self.write(protocol.down(target, reason_bytes(reason, protocol.max_frame_bytes)))
        except Exception as exc:
            self.fail(ProtocolError(f"cannot send DOWN: {exc!r}"))

    def write_exit(self, target: MailboxID, origin: MailboxID | None, reason: Any, *, linked: bool) -> None:
        """Queue an EXIT frame; never raises into the caller (a dead protocol drops this
        connection)."""
        protocol = self.protocol
        if protocol is None or self.closed:
            return
        try:
            self.write(protocol.exit(target, origin, reason_bytes(reason, protocol.max_frame_bytes), linked=linked))
        except Exception as exc:
            self.fail(ProtocolError(f"cannot send EXIT: {exc!r}"))

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.closed or not self.out:
            return
        data = b"".join(self.out)
        self.out = []
        self.own_frames = 0
        # The transport's buffer grows by at most len(data): room stays, base follows it.
        self.base = self.room
        try:
            assert self.transport is not None
            if len(data) <= self.write_chunk:
                self.transport.write(data)
            else:
                self._write_chunks(data)
        except Exception as exc:  # a failed write closes this connection, never the process
            self.fail(ProtocolError(f"write failed: {exc!r}"))
            return
        self.last_write = self.loop.time()
        peer = self.peer
        if peer is not None and not peer.drained.is_set():
            # The TLS transport may never pause/resume us (it hands bytes straight to the
            # socket transport), so a waiter must be re-evaluated after every flush.
            peer.update_drained()

    def _write_chunks(self, data: bytes) -> None:
        """Write ``data`` in writes of ``write_chunk`` bytes (see WRITE_CHUNK)."""
        assert self.transport is not None
        write = self.transport.write
        view = memoryview(data)
        chunk = self.write_chunk
        for start in range(0, len(data), chunk):
            write(view[start:start + chunk])

    @property
    def unwritten_messages(self) -> int:
        """MESSAGE frames queued for this loop iteration's write (each is two entries)."""
        return (len(self.out) - self.own_frames) // 2

    @property
    def unwritten_bytes(self) -> int:
        """Bytes queued for this loop iteration's write."""
        return self.base - self.room

    def transport_buffer(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def queued_bytes(self) -> int:
        """Everything written to this connection and not yet handed to the kernel."""
        return self.unwritten_bytes + self.transport_buffer()

    def discard_queued(self) -> tuple[int, int]:
        """Drop what was not written (the peer is down): returns (messages, bytes) abandoned.

        Messages are counted only while unwritten (the transport's buffer holds bytes, not
        frames); bytes include the transport's buffer, which the close discards.
        """
        abandoned = (self.unwritten_messages, self.queued_bytes())
        self.out = []
        self.own_frames = 0
        self.room = self.base
        return abandoned

    def write_stalled(self, now: float) -> float:
        """Seconds the peer has read nothing while data waited for it (0.0: not stalled).

        Called periodically (the tick loop): data waits while the transport holds some (the
        kernel's socket buffer is full); progress is the transport handing bytes on, seen as
        ``written - buffered`` growing. The first check that sees no progress starts the clock,
        so the answer is at most one check interval short.
        """
        buffered = self.transport_buffer()
        written = self.credit - self.base
        if buffered == 0:
            self.stalled_since = None
            self.drained_mark = written
            return 0.0
        drained = written - buffered
        if drained > self.drained_mark or self.stalled_since is None:
            self.drained_mark = max(drained, self.drained_mark)
            self.stalled_since = now
            return 0.0
        return now - self.stalled_since

    # ------------------------------------------------------------ closing

    def fail(self, exc: Exception) -> None:
        """Close this connection because of ``exc``; logged once with the peer and reason."""
        if self.closed:
            return
        reason = str(exc) or type(exc).__name__
        self.close_reason = reason
        protocol = self.protocol
        fields = {"peer": self.peer_id_for_log(), "remote": self.remote, "reason": reason,
                  "error": type(exc).__name__}
        if isinstance(exc, HandshakeError) or protocol is None or not protocol.handshake_completed:
            # before HELLO completed: anyone who can open a connection can cause this one
            self.owner.limited_log.warning("peer.handshake.rejected", **fields)
        else:
            self.owner.log.warning("peer.protocol_error", **fields)
        self.abort()

    def abort(self) -> None:
        """Drop the connection now; the peer (if attached) is down before this returns."""
        if self.closed:
            return
        self.closed = True
        self.cancel_hello_timer()
        if self.transport is not None:
            self.transport.abort()
        self._fail_established()
        self.owner.connection_closed(self)

    def close_gracefully(self) -> None:
        """Write what is queued, then close; the peer (if attached) is down before this returns."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.cancel_hello_timer()
        if self.transport is not None:
            self.transport.close()
        self._fail_established()
        self.owner.connection_closed(self)

    def _fail_established(self) -> None:
        if not self.established.done():
            self.established.set_exception(
                HandshakeError(self.close_reason or "connection closed before HELLO completed")
            )
            self.established.exception()  # retrieved: the dialler may have stopped waiting

    def cancel_hello_timer(self) -> None:
        if self.hello_timer is not None:
            self.hello_timer.cancel()

    def _hello_timeout(self) -> None:
        protocol = self.protocol
        if not (protocol is not None and protocol.state == "established"):
            self.fail(HandshakeError(f"no HELLO exchange within {HELLO_TIMEOUT:g} s"))

    def peer_id_for_log(self) -> int | None:
        return self.proven if self.proven is not None else self.expected_peer
