"""The node connector: a full mesh of mutually authenticated TLS connections, one per node pair.

This is the asyncio half; framing, the HELLO handshake and the codec are sans-IO (``_wire``,
``_codec``). Invariants:

* Topology: the lower node id dials the higher one; an inbound connection from a higher id is a
  handshake error. So each pair has one connection, and a new connection from a peer replaces
  the old one (the dialler only dials when it believes the old one is gone): crossed dials
  cannot happen and replacements are deterministic.
* A peer is *up* only after TLS (both certificates from the cluster CA, the peer's certificate
  proving the node id we expect) and the HELLO exchange (version, cluster identity, node id,
  incarnation) completed in both directions: TLS 1.3 reports a rejected client certificate
  late, so TLS alone proves nothing to the client.
* Per peer, frames are written in the order they were produced; writes made in one loop
  iteration are joined into one ``transport.write``. Reads use ``BufferedProtocol``.
* While a peer is not up, messages for it are buffered (bounded by ``pending_messages`` and
  ``pending_bytes``) and flushed in order when it comes up with the incarnation they were
  addressed to; buffered messages for an older incarnation are dropped. Every drop is counted
  in ``statistics()`` and logged (one event per burst, never one per message).
* When a peer's connection is lost (EOF, reset, failed write, tick timeout, protocol error)
  the peer is *down*: every local watcher of an address on it gets ``MailboxClosed`` at once
  (Erlang ``noconnection``), its links on our mailboxes are dropped, the registry forgets its
  claims, connection-status callbacks run, and the dialler side redials with capped
  exponential backoff and jitter.
* Keepalive: ticks every quarter of ``net_ticktime`` on a quiet connection; a peer silent for
  ``net_ticktime`` (monotonic clock) is declared down.
* Nothing a peer sends can raise out of this module: protocol, decode and handshake errors
  close that one connection and are logged with the peer and the reason.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from threading import get_ident
from typing import TYPE_CHECKING, Any

import structlog

from . import _codec, _wire
from ._certs import cluster_identity, node_id_from_certificate
from ._errors import EncodeError, HandshakeError, ProtocolError, ReignError
from ._ids import MailboxID
from ._mailbox import notify_closed
from ._messages import MailboxClosed
from ._tls import client_context, server_context

if TYPE_CHECKING:
    from ._address import Address
    from ._node import Node
    from ._spec import ClusterSpec, NodeSpec

__all__ = ["Cluster", "PeerStatistics"]

_encode = _codec.encode
_message_header = _wire.message_header

_log = structlog.get_logger("reign.cluster")

#: Seconds a TLS handshake may take. A real one costs ~3 ms of CPU here (FACTS.md); ten
#: seconds tolerates a loaded machine while dropping stalled half-open connections.
TLS_HANDSHAKE_TIMEOUT = 10.0
#: Seconds a TCP connect may take. Without a bound a dial during a silent partition waits out
#: the kernel's SYN retries (~127 s) and holds a dial slot. Erlang bounds the whole connection
#: setup by net_setuptime (7 s); two seconds is ample on a LAN and lets a partition heal fast.
CONNECT_TIMEOUT = 2.0
#: Seconds from TCP accept/connect to a completed HELLO exchange.
HELLO_TIMEOUT = 10.0
#: Reconnect backoff: first retry after this many seconds, doubling up to RECONNECT_MAX, each
#: delay jittered by +-50% so a restarted cluster does not redial in lockstep.
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0  # a late-joining higher id waits at most this long for its dialler
#: Read buffer handed to BufferedProtocol: 256 KiB, the size uvloop reads per call anyway. One
#: buffer serves every connection of a node: ``buffer_updated`` consumes it synchronously (the
#: wire layer copies what it keeps), so a 255-connection node does not hold 64 MiB of buffers.
READ_BUFFER_BYTES = 256 * 1024
#: Outbound dials in flight at once per node. A mesh forming from scratch would otherwise start
#: hundreds of TLS handshakes (~3 ms of CPU each) together, and under that load some would hit
#: the handshake timeout and be retried: measured, 256 nodes never formed a mesh without a
#: limit and formed one with 32 per process.
DIAL_CONCURRENCY = 8
#: Outbound high-water mark per connection: past it the peer is "busy" (``wait_drained``).
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024
#: Listen backlog: a 256-node mesh may dial one node at once.
LISTEN_BACKLOG = 512


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """A snapshot of one peer connection (``node.statistics().peers[node_id]``).

    ``state`` is ``"connecting"`` (never up yet), ``"up"`` or ``"down"``. ``queued_messages``
    and ``queued_bytes`` count what waits for the peer: the pending buffer while it is not up,
    plus unwritten frames and the transport's buffer while it is. ``last_heard`` is seconds
    since anything arrived from the peer (None if never).
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


class _PeerWatcher:
    """Stands in a local mailbox's watcher set for "peer node wants CLOSED(id)"."""

    __slots__ = ("peer",)

    def __init__(self, peer: _Peer) -> None:
        self.peer = peer

    def send(self, notice: MailboxClosed) -> bool:
        """Called from a local mailbox's close: must never raise into ``close()``."""
        self.peer.linked.discard(notice.id.serial)
        conn = self.peer.conn
        if conn is not None:
            try:
                conn.write(conn.wire.closed(notice.id))
            except Exception as exc:  # a dead wire: drop that connection, not the close
                conn.fail(ProtocolError(f"cannot send CLOSED: {exc!r}"))
        return True


class _Peer:
    """Everything this node keeps about one other node of the spec."""

    def __init__(self, cluster: Cluster, spec: NodeSpec) -> None:
        self.cluster = cluster
        self.id = spec.id
        self.spec = spec
        self.state = "connecting"
        self.conn: _Connection | None = None
        self.incarnation: int | None = None
        self.pending: deque[tuple[int, int, bytes]] = deque()
        self.pending_bytes = 0
        self.dropped = 0
        self.dropped_unlogged = 0
        self.watches: dict[MailboxID, set[Address]] = {}
        self.linked: set[int] = set()
        self.watcher = _PeerWatcher(self)
        self.messages_in = 0
        self.messages_out = 0
        self.connects = 0
        self.last_heard: float | None = None
        self.wake_dialler = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()

    # ------------------------------------------------------------ outbound messages

    def send_message(self, incarnation: int, serial: int, payload: bytes) -> bool:
        """Queue one encoded message (loop thread). False if dropped (stale or buffer full)."""
        conn = self.conn
        if conn is not None:
            if incarnation != self.incarnation:
                return False
            # The connection's write buffer, inline (one call less per message): header and
            # payload are joined with the rest of this loop iteration's frames by flush().
            out = conn.out
            out.append(_message_header(incarnation, serial, len(payload)))
            out.append(payload)
            conn.unwritten_messages += 1
            self.messages_out += 1
            if not conn.flush_scheduled:
                conn.flush_scheduled = True
                conn.loop.call_soon(conn.flush)
            return True
        known = self.incarnation
        if known is not None and incarnation < known:
            return False
        cluster = self.cluster
        size = len(payload) + _wire.MESSAGE_OVERHEAD
        if (
            len(self.pending) >= cluster.pending_messages_limit
            or self.pending_bytes + size > cluster.pending_bytes_limit
        ):
            self.dropped += 1
            if self.dropped_unlogged == 0:
                cluster.log.warning(
                    "peer.pending.overflow",
                    peer=self.id,
                    pending_messages=len(self.pending),
                    pending_bytes=self.pending_bytes,
                )
            self.dropped_unlogged += 1
            return False
        self.pending.append((incarnation, serial, payload))
        self.pending_bytes += size
        if self.pending_bytes >= cluster.write_high_water:
            self.drained.clear()
        return True

    def flush_pending(self) -> None:
        """The peer just came up: deliver what was buffered for its incarnation, in order."""
        conn = self.conn
        assert conn is not None
        stale = 0
        while self.pending:
            incarnation, serial, payload = self.pending.popleft()
            if not self.send_message(incarnation, serial, payload):
                stale += 1
        self.pending_bytes = 0
        if stale:
            self.dropped += stale
            self.cluster.log.warning("peer.pending.stale_dropped", peer=self.id, dropped=stale)
        self.report_drops()
        self.update_drained()

    def report_drops(self) -> None:
        if self.dropped_unlogged:
            self.cluster.log.warning(
                "peer.pending.dropped", peer=self.id, dropped=self.dropped_unlogged, total=self.dropped
            )
            self.dropped_unlogged = 0

    def queued_bytes(self) -> int:
        conn = self.conn
        if conn is None:
            return self.pending_bytes
        return conn.unwritten_bytes + conn.transport_buffer()

    def update_drained(self) -> None:
        if self.queued_bytes() < self.cluster.write_high_water:
            self.drained.set()
        else:
            self.drained.clear()

    def statistics(self, now: float) -> PeerStatistics:
        conn = self.conn
        if conn is None:
            queued_messages, queued = len(self.pending), self.pending_bytes
        else:
            queued_messages, queued = conn.unwritten_messages, self.queued_bytes()
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
        )


class _Connection(asyncio.BufferedProtocol):
    """One TLS connection to a peer: the wire state machine plus coalesced writes."""

    def __init__(self, cluster: Cluster, expected_peer: int | None, remote: str) -> None:
        self.cluster = cluster
        self.loop = cluster.loop
        self.expected_peer = expected_peer
        self.remote = remote
        self.transport: asyncio.Transport | None = None
        self.wire: _wire.WireProtocol | None = None  # type: ignore[assignment]
        self.peer: _Peer | None = None
        self.view = cluster.read_view
        self.out: list[bytes] = []
        self.unwritten_messages = 0
        self.flush_scheduled = False
        self.last_write = self.loop.time()
        self.last_read = self.loop.time()
        self.closed = False
        self.got_hello = False
        self.got_accept = False
        self.close_reason: str | None = None
        self.established = asyncio.get_running_loop().create_future()
        self.hello_timer: asyncio.TimerHandle | None = None  # started by connection_made

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.hello_timer = self.loop.call_later(HELLO_TIMEOUT, self._hello_timeout)
        self.cluster.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)  # type: ignore[attr-defined]
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
            self.cluster.check_inbound_peer(proven, self.expected_peer is None)
        except ReignError as exc:
            self.fail(exc)
            return
        self.proven = proven
        self.wire = _wire.WireProtocol(
            local_node=self.cluster.node_id,
            local_incarnation=self.cluster.incarnation,
            cluster_id=self.cluster.cluster_id,
            expected_peer=proven,
            max_frame_bytes=self.cluster.max_frame_bytes,
        )
        self.write(self.wire.hello())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        wire = self.wire
        if wire is None or self.closed:
            return
        self.last_read = self.loop.time()
        try:
            events = wire.receive_data(self.view[:nbytes])
            if events:
                self.cluster.handle_events(self, events)
        except ProtocolError as exc:
            self.fail(exc)
        except Exception as exc:  # a bug must not kill the node: drop this connection, loudly
            self.cluster.log.exception("peer.internal_error", peer=self.peer_id_for_log())
            self.fail(ProtocolError(f"internal error: {exc!r}"))

    def eof_received(self) -> bool:
        self.close_reason = self.close_reason or "peer closed the connection"
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.cancel_hello_timer()
        if exc is not None and self.close_reason is None:
            self.close_reason = f"connection lost: {exc!r}"
        if not self.established.done():
            self.established.set_exception(
                HandshakeError(self.close_reason or "connection closed before HELLO completed")
            )
            self.established.exception()  # retrieved: the dialler may have stopped waiting
        self.cluster.connection_closed(self)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.drained.clear()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.update_drained()

    # ------------------------------------------------------------ writing

    def write(self, frame: bytes) -> None:
        self.out.append(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.closed or not self.out:
            return
        data = b"".join(self.out)
        self.out = []
        self.unwritten_messages = 0
        try:
            self.transport.write(data)  # type: ignore[union-attr]
        except Exception as exc:  # a failed write closes this connection, never the process
            self.fail(ProtocolError(f"write failed: {exc!r}"))
            return
        self.last_write = self.loop.time()
        peer = self.peer
        if peer is not None and not peer.drained.is_set():
            # The TLS transport may never pause/resume us (it hands bytes straight to the
            # socket transport), so a waiter must be re-evaluated after every flush.
            peer.update_drained()

    @property
    def unwritten_bytes(self) -> int:
        """Bytes queued for this loop iteration's write (computed: the hot path counts nothing)."""
        return sum(map(len, self.out))

    def transport_buffer(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    # ------------------------------------------------------------ closing

    def fail(self, exc: Exception) -> None:
        """Close this connection because of ``exc``; logged once with the peer and reason."""
        if self.closed:
            return
        reason = str(exc) or type(exc).__name__
        self.close_reason = reason
        if isinstance(exc, HandshakeError) or self.wire is None or not self.wire.handshake_completed:
            event = "peer.handshake.rejected"
        else:
            event = "peer.protocol_error"
        self.cluster.log.warning(
            event, peer=self.peer_id_for_log(), remote=self.remote, reason=reason,
            error=type(exc).__name__,
        )
        self.abort()

    def abort(self) -> None:
        """Drop the connection now; the peer (if attached) is down before this returns."""
        if self.closed:
            return
        self.closed = True
        self.cancel_hello_timer()
        if self.transport is not None:
            self.transport.abort()
        self.cluster.connection_closed(self)

    def close_gracefully(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.cancel_hello_timer()
        if self.transport is not None:
            self.transport.close()
        self.cluster.connection_closed(self)

    def cancel_hello_timer(self) -> None:
        if self.hello_timer is not None:
            self.hello_timer.cancel()

    def _hello_timeout(self) -> None:
        if not (self.wire is not None and self.wire.state == "established"):
            self.fail(HandshakeError(f"no HELLO exchange within {HELLO_TIMEOUT:g} s"))

    def peer_id_for_log(self) -> int | None:
        return getattr(self, "proven", self.expected_peer)


class Cluster:
    """The connection manager of one clustered node (``node._cluster``)."""

    def __init__(
        self,
        node: Node,
        spec: ClusterSpec,
        node_id: int,
        credentials: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        self.node = node
        self.node_id = node_id
        self.spec = spec
        self.me = spec.node(node_id)
        cert, key, ca = credentials or spec.load_credentials(node_id)
        self.server_ssl = server_context(cert, key, ca)
        self.client_ssl = client_context(cert, key, ca)
        self.cluster_id = cluster_identity(ca)
        self.incarnation = node.incarnation
        self.net_ticktime = spec.net_ticktime
        self.max_message_bytes = spec.max_message_bytes
        self.max_frame_bytes = spec.max_message_bytes + _wire.MESSAGE_OVERHEAD
        self.pending_messages_limit = spec.pending_messages
        self.pending_bytes_limit = spec.pending_bytes
        self.write_high_water = WRITE_HIGH_WATER
        self.log = structlog.get_logger("reign.cluster").bind(node=node_id)
        self.peers: dict[int, _Peer] = {}
        self.read_view = memoryview(bytearray(READ_BUFFER_BYTES))
        self.batch_decoder = _codec.BatchDecoder(node._address_for)
        self.dial_slots = asyncio.Semaphore(DIAL_CONCURRENCY)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.listener: socket.socket | None = None
        for peer_spec in spec.nodes:
            if peer_spec.id != node_id:
                self.peers[peer_spec.id] = _Peer(self, peer_spec)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.control_handler: Callable[[int, Any], None] | None = None
        self.peer_up_hooks: list[Callable[[int], None]] = []
        self.peer_down_hooks: list[Callable[[int], None]] = []

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        host, port = self.me.listen_address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.listener = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(exc.errno, f"node {self.node_id} cannot listen on {host}:{port}: {reason}") from exc
        self.listener.setblocking(False)
        self._spawn(self._accept_loop())
        for peer in self.peers.values():
            if peer.id > self.node_id:
                self._spawn(self._dial_loop(peer))
        self._spawn(self._tick_loop())
        self.log.info("cluster.listening", host=host, port=port, peers=len(self.peers))

    async def stop(self) -> None:
        self.stopping = True
        for task in list(self.tasks):
            task.cancel()
        for peer in self.peers.values():
            conn = peer.conn
            if conn is not None:
                conn.flush()  # what is queued (close notices of our mailboxes) still goes out
                self._peer_down(peer, "this node is stopping", conn)
        for conn in list(self.connections):
            conn.close_gracefully()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.listener is not None:
            self.listener.close()
        await asyncio.sleep(0)

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------ accepting and dialling

    async def _accept_loop(self) -> None:
        listener = self.listener
        assert listener is not None
        while True:
            try:
                sock, peername = await self.loop.sock_accept(listener)
            except OSError as exc:  # e.g. EMFILE: keep serving, but do not spin
                self.log.warning("node.accept.failed", reason=str(exc))
                await asyncio.sleep(RECONNECT_MIN)
                continue
            remote = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
            self._spawn(self._upgrade_inbound(sock, remote))

    async def _upgrade_inbound(self, sock: socket.socket, remote: str) -> None:
        """TLS-handshake an accepted socket; failures are logged with the peer and reason."""
        conn_holder: list[_Connection] = []

        def factory() -> _Connection:
            conn = _Connection(self, None, remote)
            conn_holder.append(conn)
            return conn

        try:
            await self.loop.connect_accepted_socket(
                factory, sock, ssl=self.server_ssl, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
            )
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as exc:
            sock.close()
            for conn in conn_holder:
                conn.cancel_hello_timer()
            self.log.warning("node.tls.rejected", remote=remote, reason=_tls_reason(exc))
        # On success connection_made has run; the rest happens in the protocol callbacks.

    async def _dial_loop(self, peer: _Peer) -> None:
        delay = RECONNECT_MIN
        failures = 0
        while not self.stopping:
            if peer.conn is None:
                try:
                    async with self.dial_slots:
                        await self._dial(peer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    if failures == 1 or failures % 50 == 0:
                        self.log.info("peer.dial.failed", peer=peer.id, attempts=failures,
                                      reason=_tls_reason(exc))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, RECONNECT_MAX)
                    continue
                failures = 0
                delay = RECONNECT_MIN
            peer.wake_dialler.clear()
            if peer.conn is not None:
                await peer.wake_dialler.wait()
                # Do not redial in a tight loop when a peer keeps dropping right after HELLO.
                await asyncio.sleep(RECONNECT_MIN * random.uniform(0.5, 1.5))

    async def _dial(self, peer: _Peer) -> None:
        host, port = peer.spec.address
        local = self.me.local_address
        conn_holder: list[_Connection] = []

        def factory() -> _Connection:
            conn = _Connection(self, peer.id, f"{host}:{port}")
            conn_holder.append(conn)
            return conn

        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if local:
                sock.bind((local, 0))
            try:
                await asyncio.wait_for(self.loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
            except TimeoutError:
                raise ConnectionError(f"connect timed out after {CONNECT_TIMEOUT:g} s") from None
            await self.loop.create_connection(
                factory, sock=sock, ssl=self.client_ssl, server_hostname=host,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except BaseException:
            sock.close()
            for conn in conn_holder:
                conn.cancel_hello_timer()
            raise
        conn = conn_holder[0]
        await conn.established

    # ------------------------------------------------------------ peer admission

    def check_inbound_peer(self, proven: int, inbound: bool) -> None:
        if proven == self.node_id:
            raise HandshakeError(f"peer presents this node's own certificate (node {proven})")
        if proven not in self.peers:
            raise HandshakeError(f"node {proven} is not in the cluster spec")
        if inbound and proven > self.node_id:
            raise HandshakeError(
                f"node {proven} dialled node {self.node_id}; the lower node id dials the higher"
            )

    def connection_established(self, conn: _Connection) -> None:
        wire = conn.wire
        peer = self.peers[wire.peer_node]
        conn.cancel_hello_timer()
        if self.stopping:
            conn.close_gracefully()
            return
        old = peer.conn
        if old is not None:
            old.close_reason = "replaced by a new connection from the same node"
            self._peer_down(peer, old.close_reason, old)
            old.abort()
        new_incarnation = wire.peer_incarnation
        restarted = peer.incarnation is not None and peer.incarnation != new_incarnation
        conn.peer = peer
        peer.conn = conn
        peer.incarnation = new_incarnation
        peer.state = "up"
        peer.connects += 1
        peer.last_heard = self.loop.time()
        peer.flush_pending()
        for target, watchers in list(peer.watches.items()):  # watches made before first contact
            if target.incarnation == new_incarnation:
                conn.write(conn.wire.link(target))
            else:
                del peer.watches[target]
                for watcher in watchers:
                    notify_closed(target, watcher)
        self.log.info("peer.up", peer=peer.id, incarnation=new_incarnation, remote=conn.remote,
                      restarted=restarted)
        if not conn.established.done():
            conn.established.set_result(None)
        for hook in self.peer_up_hooks:
            hook(peer.id)
        self.node._connection_status(peer.id, True)

    def connection_closed(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        peer = conn.peer
        if peer is not None and peer.conn is conn and not self.stopping:
            self._peer_down(peer, conn.close_reason or "connection closed", conn)

    def _peer_down(self, peer: _Peer, reason: str, conn: _Connection) -> None:
        abandoned_frames = conn.unwritten_messages
        abandoned_bytes = conn.unwritten_bytes + conn.transport_buffer()
        conn.out = []
        conn.unwritten_messages = 0
        peer.conn = None
        peer.state = "down"
        peer.drained.set()
        peer.update_drained()
        (self.log.info if self.stopping else self.log.warning)(
            "peer.down", peer=peer.id, reason=reason,
            abandoned_messages=abandoned_frames, abandoned_bytes=abandoned_bytes,
        )
        watches, peer.watches = peer.watches, {}
        for target, watchers in watches.items():
            for watcher in watchers:
                notify_closed(target, watcher)
        mailboxes = self.node._mailboxes
        for serial in peer.linked:
            mbox = mailboxes.get(serial)
            if mbox is not None:
                mbox._remove_watcher(peer.watcher)
        peer.linked.clear()
        for hook in self.peer_down_hooks:
            hook(peer.id)
        self.node._connection_status(peer.id, False)
        peer.wake_dialler.set()

    # ------------------------------------------------------------ inbound frames

    def handle_events(self, conn: _Connection, events: list[Any]) -> None:
        peer = conn.peer
        if peer is None:
            # Handshake frames: the peer's HELLO (answered with our ACCEPT) and its ACCEPT,
            # in either order. Frames after them in the same read are handled below.
            for index, event in enumerate(events):
                if type(event) is _wire.Hello:
                    conn.got_hello = True
                    conn.write(conn.wire.accept())
                elif type(event) is _wire.Accept:
                    conn.got_accept = True
                else:
                    raise ProtocolError(f"{type(event).__name__} frame before the handshake completed")
                if conn.got_hello and conn.got_accept:
                    self.connection_established(conn)
                    if conn.closed:
                        return
                    events = events[index + 1 :]
                    break
            else:
                return
            peer = conn.peer
            if peer is None:
                return
        peer.last_heard = conn.last_read
        Messages = _wire.Messages
        decoder = self.batch_decoder
        decode_at = None
        try:
            for event in events:
                if type(event) is Messages:
                    if decode_at is None:  # every run of one read shares the read's bytes
                        decode_at = decoder.start(event.data)
                    self._deliver_messages(peer, event, decode_at)
                else:
                    self._handle_control_event(peer, conn, event)
                    if conn.closed:
                        break
        finally:
            if decode_at is not None:
                decoder.finish()

    def _deliver_messages(self, peer: _Peer, run: _wire.Messages, decode_at: Any) -> None:
        """Decode (with ``decode_at`` from the batch decoder) and deliver a run, in order.

        Only messages for an open mailbox of this incarnation are decoded (one for a closed
        mailbox is dropped unread). A payload that does not decode raises DecodeError after
        the messages before it were delivered; the caller drops the connection.
        """
        frames = run.frames
        peer.messages_in += len(frames)
        node_incarnation = self.incarnation
        mailboxes = self.node._mailboxes
        for incarnation, serial, start, end in frames:
            if incarnation != node_incarnation:
                continue
            mbox = mailboxes.get(serial)
            if mbox is None:
                continue
            msg = decode_at(start, end)
            # Mailbox._deliver's common case inline: nobody waiting, queue exists, open.
            queue = mbox._queue
            if queue is None or mbox._waiters or mbox._closed:
                mbox._deliver(msg)
            else:
                queue.append(msg)

    def _handle_control_event(self, peer: _Peer, conn: _Connection, event: Any) -> None:
        kind = type(event)
        if kind is _wire.Tick:
            return
        if kind is _wire.Link:
            target = event.target
            mbox = None
            if target.node == self.node_id and target.incarnation == self.incarnation:
                mbox = self.node._mailboxes.get(target.serial)
            if mbox is None or mbox._closed:
                conn.write(conn.wire.closed(target))
            else:
                mbox._add_watcher(peer.watcher)
                peer.linked.add(target.serial)
        elif kind is _wire.Unlink:
            target = event.target
            if target.node == self.node_id and target.incarnation == self.incarnation:
                mbox = self.node._mailboxes.get(target.serial)
                if mbox is not None:
                    mbox._remove_watcher(peer.watcher)
            peer.linked.discard(target.serial)
        elif kind is _wire.Closed:
            watchers = peer.watches.pop(event.target, None)
            for watcher in watchers or ():
                notify_closed(event.target, watcher)
        elif kind is _wire.Control:
            handler = self.control_handler
            if handler is None:
                raise ProtocolError("CONTROL frame but no control handler")
            handler(peer.id, _codec.decode(event.payload, self.node._address_for))
        elif kind in (_wire.Hello, _wire.Accept):
            raise ProtocolError(f"unexpected {kind.__name__} after the handshake")
        else:  # pragma: no cover - the wire layer only produces the kinds above
            raise ProtocolError(f"unexpected event {kind.__name__}")

    # ------------------------------------------------------------ API used by the node

    def route(self, mailbox_id: MailboxID, msg: Any) -> bool:
        """Encode ``msg`` (in the caller's thread) and queue it for the target's node."""
        peer = self.peers.get(mailbox_id.node)
        if peer is None or self.stopping:
            return False
        known = peer.incarnation
        if known is not None and mailbox_id.incarnation < known:
            return False
        payload = _encode(msg)
        size = len(payload)
        if size > self.max_message_bytes:
            raise EncodeError(
                f"message encodes to {size} bytes, over max_message_bytes "
                f"({self.max_message_bytes})"
            )
        thread_id = self.node._thread_id
        if thread_id == get_ident() or thread_id is None:
            return peer.send_message(mailbox_id.incarnation, mailbox_id.serial, payload)
        try:
            self.node._loop.call_soon_threadsafe(  # type: ignore[union-attr]
                peer.send_message, mailbox_id.incarnation, mailbox_id.serial, payload
            )
        except RuntimeError:  # the node's loop is closed: the node is gone
            return False
        return True

    def send_control(self, peer_id: int, payload: Any) -> bool:
        """Send a CONTROL frame (registry traffic) to an up peer; False if it is not up."""
        peer = self.peers.get(peer_id)
        if peer is None or peer.conn is None:
            return False
        peer.conn.write(peer.conn.wire.control(_codec.encode(payload)))
        return True

    def link(self, target: MailboxID, watcher: Address) -> None:
        peer = self.peers.get(target.node)
        if peer is not None and peer.state == "connecting":
            # Never connected yet (the mesh is forming): like Erlang's auto-connect, the watch
            # waits for the connection and is sent (or answered) in connection_established.
            peer.watches.setdefault(target, set()).add(watcher)
            return
        if peer is None or peer.conn is None or target.incarnation != peer.incarnation:
            notify_closed(target, watcher)
            return
        watchers = peer.watches.get(target)
        if watchers is None:
            watchers = peer.watches[target] = set()
            peer.conn.write(peer.conn.wire.link(target))
        watchers.add(watcher)

    def unlink(self, target: MailboxID, watcher: Address) -> None:
        peer = self.peers.get(target.node)
        if peer is None:
            return
        watchers = peer.watches.get(target)
        if not watchers:
            return
        watchers.discard(watcher)
        if not watchers:
            del peer.watches[target]
            if peer.conn is not None:
                peer.conn.write(peer.conn.wire.unlink(target))

    async def wait_drained(self, node_id: int | None, timeout: float | None) -> None:
        peers = list(self.peers.values()) if node_id is None else [self.peers[node_id]]

        async def wait_all() -> None:
            for peer in peers:
                while True:
                    peer.update_drained()
                    if peer.drained.is_set():
                        break
                    await peer.drained.wait()

        if timeout is None:
            await wait_all()
        else:
            await asyncio.wait_for(wait_all(), timeout)

    def statistics(self) -> dict[int, PeerStatistics]:
        now = self.loop.time() if self.loop is not None else 0.0
        return {peer.id: peer.statistics(now) for peer in self.peers.values()}

    # ------------------------------------------------------------ keepalive

    async def _tick_loop(self) -> None:
        interval = self.net_ticktime / 4
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.closed:
                    continue
                if conn.wire is not None and conn.wire.state == "established":
                    if now - conn.last_read > self.net_ticktime:
                        conn.fail(ProtocolError(
                            f"no data for {now - conn.last_read:.1f} s (net_ticktime {self.net_ticktime:g} s)"
                        ))
                        continue
                    if now - conn.last_write >= interval * 0.9 and not conn.out:
                        conn.write(conn.wire.tick())


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc) or type(exc).__name__
