"""What one node keeps about one other node of its spec: state, buffers, monitors, counters.

Invariants:

* ``state`` is ``"connecting"`` until the first connection is up (or ``net_ticktime`` passed
  without one: then ``"down"``), then ``"up"`` or ``"down"``;
  ``conn`` is the live connection exactly while ``state == "up"``.
* While the peer is not up, messages for it are buffered in ``pending`` (bounded by the spec's
  ``pending_messages`` and ``pending_bytes``) and flushed in order when it comes up with the
  incarnation they were addressed to; buffered messages for an older incarnation are dropped.
  Every drop is counted (``dropped``) and logged, one event per burst, never one per message.
* ``monitors`` (:class:`~reign._core.monitors.PeerMonitors`) holds the watches in both
  directions; ``watch`` is the token that stands in a local mailbox's watcher set for "the peer
  wants DOWN(id)".
* While the peer is up, messages go to its connection, whose outbound buffer is bounded by
  the spec's ``outbound_bytes`` (:mod:`.connection`): a message that does not fit is refused
  (``send`` returns False), counted in ``dropped`` and logged as ``peer.outbound.full`` once
  per burst, then ``peer.outbound.dropped`` with the count (:meth:`Peer.report_refused`,
  called by the tick loop), never once per message.
* ``abandoned_messages`` / ``abandoned_bytes`` count what was queued for the peer and thrown
  away because its connection went down (lost, replaced, stalled or overflowed).
* ``drained`` is set while the bytes waiting for the peer are below the high-water mark.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._core.frames import MESSAGE_OVERHEAD
from .._core.ids import MailboxID
from .._core.monitors import PeerMonitors

if TYPE_CHECKING:
    from .._config.spec import NodeSpec
    from .connection import Connection
    from .mailbox import Mailbox

__all__ = ["Peer", "PeerLimits", "PeerStatistics"]


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """A snapshot of one peer connection (``node.statistics().peers[node_id]``).

    ``state`` is ``"connecting"`` (never up yet, and this node started less than
    ``net_ticktime`` ago), ``"up"``, or ``"down"`` (lost, or never reached in its first
    ``net_ticktime``). ``queued_messages``
    and ``queued_bytes`` count what waits for the peer: the pending buffer while it is not up,
    plus unwritten frames and the transport's buffer while it is. ``last_heard`` is seconds
    since anything arrived from the peer (None if never). ``dropped_messages`` counts sends
    refused because the pending buffer or the outbound buffer was full, and buffered messages
    found stale when the peer came back. ``abandoned_messages`` (unwritten frames; bytes
    already in the transport are not countable as messages) and ``abandoned_bytes`` (all of
    it) count what was queued when a connection to the peer went down and was thrown away.
    """

    node: int
    state: str
    incarnation: int | None
    queued_messages: int
    queued_bytes: int
    messages_in: int
    messages_out: int
    dropped_messages: int
    connects: int
    last_heard: float | None
    abandoned_messages: int = 0
    abandoned_bytes: int = 0


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """The per-peer bounds of one node (from its spec)."""

    pending_messages: int
    pending_bytes: int
    write_high_water: int
    outbound_bytes: int


class _PeerWatch:
    """Stands in a local mailbox's watcher set for "the peer wants DOWN(id)"."""

    __slots__ = ("peer",)

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def notify_down(self, target: MailboxID, reason: Any) -> None:
        """Called from a local mailbox's close: sends DOWN if the peer still watches it."""
        peer = self.peer
        if peer.monitors.local_closed(target.serial):
            conn = peer.conn
            if conn is not None:
                conn.write_down(target, reason)


class Peer:
    """Everything this node keeps about one other node of the spec."""

    def __init__(self, spec: NodeSpec, limits: PeerLimits, log: Any) -> None:
        self.id = spec.id
        self.spec = spec
        self.limits = limits
        self.log = log
        self.state = "connecting"
        self.conn: Connection | None = None
        self.incarnation: int | None = None
        self.pending: deque[tuple[int, int, bytes]] = deque()
        self.pending_bytes = 0
        self.dropped = 0
        self.dropped_unlogged = 0
        self.refused_unlogged = 0  # outbound-full drops not yet reported
        self.abandoned_messages = 0
        self.abandoned_bytes = 0
        self.monitors: PeerMonitors[Mailbox] = PeerMonitors()
        self.watch = _PeerWatch(self)
        self.messages_in = 0
        self.messages_out = 0
        self.connects = 0
        self.last_heard: float | None = None
        self.wake_dialler = asyncio.Event()
        self.is_up = asyncio.Event()  # set exactly while state == "up"
        self.drained = asyncio.Event()
        self.drained.set()

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.state} incarnation={self.incarnation}>"

    # ------------------------------------------------------------ outbound messages

    def send_message(self, incarnation: int, serial: int, payload: bytes) -> bool:
        """Queue one encoded message (loop thread). False if dropped (stale or buffer full)."""
        conn = self.conn
        if conn is not None:
            if incarnation != self.incarnation:
                return False
            if conn.write_message(incarnation, serial, payload):
                self.messages_out += 1
                return True
            self.refused()
            return False
        known = self.incarnation
        if known is not None and incarnation < known:
            return False
        limits = self.limits
        size = len(payload) + MESSAGE_OVERHEAD
        if len(self.pending) >= limits.pending_messages or self.pending_bytes + size > limits.pending_bytes:
            self.dropped += 1
            if self.dropped_unlogged == 0:
                self.log.warning(
                    "peer.pending.overflow",
                    peer=self.id,
                    pending_messages=len(self.pending),
                    pending_bytes=self.pending_bytes,
                )
            self.dropped_unlogged += 1
            return False
        self.pending.append((incarnation, serial, payload))
        self.pending_bytes += size
        if self.pending_bytes >= limits.write_high_water:
            self.drained.clear()
        return True

    def refused(self) -> None:
        """A message did not fit the outbound buffer: counted, logged once per burst."""
        self.dropped += 1
        if self.refused_unlogged == 0:
            conn = self.conn
            self.log.warning(
                "peer.outbound.full", peer=self.id,
                queued_bytes=conn.queued_bytes() if conn is not None else 0,
                outbound_bytes=self.limits.outbound_bytes,
            )
        self.refused_unlogged += 1

    def count_abandoned(self, messages: int, size: int) -> None:
        self.abandoned_messages += messages
        self.abandoned_bytes += size

    def flush_pending(self) -> None:
        """The peer just came up: deliver what was buffered for its incarnation, in order."""
        conn = self.conn
        assert conn is not None
        stale = 0
        while self.pending:
            incarnation, serial, payload = self.pending.popleft()
            if incarnation != self.incarnation:
                stale += 1
            elif conn.write_message(incarnation, serial, payload):
                self.messages_out += 1
            else:
                self.refused()
        self.pending_bytes = 0
        if stale:
            self.dropped += stale
            self.log.warning("peer.pending.stale_dropped", peer=self.id, dropped=stale)
        self.report_drops()
        self.update_drained()

    def report_drops(self) -> None:
        if self.dropped_unlogged:
            self.log.warning(
                "peer.pending.dropped", peer=self.id, dropped=self.dropped_unlogged, total=self.dropped
            )
            self.dropped_unlogged = 0
        self.report_refused()

    def report_refused(self) -> None:
        """Log how many sends the outbound buffer refused since the last report (if any)."""
        if self.refused_unlogged:
            self.log.warning(
                "peer.outbound.dropped", peer=self.id, dropped=self.refused_unlogged, total=self.dropped
            )
            self.refused_unlogged = 0

    def queued_bytes(self) -> int:
        conn = self.conn
        if conn is None:
            return self.pending_bytes
        return conn.queued_bytes()

    def update_drained(self) -> None:
        if self.queued_bytes() < self.limits.write_high_water:
            self.drained.set()
        else:
            self.drained.clear()

    async def wait_drained(self) -> None:
        """Return once the bytes waiting for this peer are below the high-water mark."""
        while True:
            self.update_drained()
            if self.drained.is_set():
                return
            await self.drained.wait()

    def statistics(self, now: float) -> PeerStatistics:
        conn = self.conn
        if conn is None:
            queued_messages, queued = len(self.pending), self.pending_bytes
        else:
            queued_messages, queued = conn.unwritten_messages, conn.queued_bytes()
        return PeerStatistics(
            node=self.id,
            state=self.state,
            incarnation=self.incarnation,
            queued_messages=queued_messages,
            queued_bytes=queued,
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            dropped_messages=self.dropped,
            connects=self.connects,
            last_heard=None if self.last_heard is None else now - self.last_heard,
            abandoned_messages=self.abandoned_messages,
            abandoned_bytes=self.abandoned_bytes,
        )
