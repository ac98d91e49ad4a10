"""The node connector: a full mesh of mutually authenticated TLS connections, one per node pair.

This is the asyncio manager of a clustered node: it listens, dials, admits connections, keeps
one :class:`~.peer.Peer` per other node of the spec, acts on what arrives (through
:class:`~reign._core.inbound.Inbound`, the one receive path) and routes what this node sends.
Framing, the handshake and the codec are sans-IO (``reign._core``); the socket side of one
connection is :mod:`.connection`. Invariants:

* Topology: the lower node id dials the higher one; an inbound connection from a higher id is a
  handshake error. So each pair has one connection, and a new connection from a peer replaces
  the old one (the dialler only dials when it believes the old one is gone): crossed dials
  cannot happen and replacements are deterministic.
* A peer is *up* only after TLS (both certificates from the cluster CA, the peer's certificate
  proving the node id we expect) and the HELLO exchange (version, cluster identity, node id,
  incarnation) completed in both directions: TLS 1.3 reports a rejected client certificate
  late, so TLS alone proves nothing to the client.
* When a peer's connection is lost (EOF, reset, failed write, tick timeout, protocol error)
  the peer is *down*: every local watcher of an address on it gets ``MailboxClosed`` at once
  (Erlang ``noconnection``), its watches of our mailboxes are dropped, listeners (the registry,
  the node's status callbacks) hear of it, and the dialler side redials with capped
  exponential backoff and jitter.
* Keepalive: ticks every quarter of ``net_ticktime`` on a quiet connection; a peer silent for
  ``net_ticktime`` (monotonic clock) is declared down.
* Nothing a peer sends can raise out of this module (see :mod:`.connection`).
* Connections not yet authenticated (from accept until the HELLO exchange completed) are
  bounded by the spec's ``handshakes`` in total and ``handshakes_per_ip`` per source address;
  at a bound an older one is evicted (:class:`~.admission.PreAuthAdmission` says which and
  why). When accepting, or creating the socket of a dial, fails for want of file descriptors
  (EMFILE/ENFILE) the node evicts up
  to :data:`EMFILE_SHED` of them, holds at most what it held minus those until
  :data:`EMFILE_FORGET` seconds pass without another such failure, and pauses accepting
  (:data:`ACCEPT_PAUSE_MIN` doubling to :data:`ACCEPT_PAUSE_MAX`): the freed descriptors
  serve established connections and this node's own dials, and known peers waiting in the
  listen backlog get in once the flood's sockets are evicted.
* A peer that reads nothing for ``net_ticktime`` while data waits for it (the transport's
  buffer does not drain) is declared down (``peer.outbound.stalled``); what was queued for it
  is released and counted as abandoned.
* The same node id running twice is detected when an incarnation that was replaced comes back
  (:class:`~.admission.IncarnationGuard`): logged once as the error ``peer.duplicate_node``
  (the id, both incarnations and both remote addresses), then the older process keeps the id
  and the other is refused at HELLO, with at most one change per hold-down period (5 s
  doubling to 60 s).
* Events that unauthenticated sources cause (``node.tls.rejected``, ``node.accept.failed``,
  ``node.handshake.evicted``, ``peer.handshake.rejected``) are rate-limited with a count
  (:class:`~.log.RateLimitedLog`).
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import ssl
from collections.abc import Callable, Coroutine
from threading import get_ident
from typing import TYPE_CHECKING, Any, Protocol

from .._config.certs import cluster_identity
from .._config.tls import client_context, server_context
from .._core.codec import encode
from .._core.frames import MESSAGE_OVERHEAD
from .._core.ids import MailboxID
from .._core.inbound import Inbound
from .._core.messages import NOCONNECTION, NOPROC
from .._core.protocol import Demonitor, Down, Established, ExitSignal, Link, Monitor, Tick, Unlink
from .._errors import EncodeError, HandshakeError, ProtocolError
from .admission import IncarnationGuard, PreAuthAdmission
from .connection import WRITE_HIGH_WATER, Connection
from .log import RateLimitedLog, get_logger
from .loop import LoopBinding
from .peer import Peer, PeerLimits, PeerStatistics

if TYPE_CHECKING:
    from .._config.spec import ClusterSpec
    from .._core.address import Address
    from .mailbox import Mailbox

__all__ = ["Cluster", "ClusterHost", "ClusterListener", "PeerStatistics"]

#: Seconds a TLS handshake may take. A real one costs ~3 ms of CPU here (FACTS.md); ten
#: seconds tolerates a loaded machine while dropping stalled half-open connections.
TLS_HANDSHAKE_TIMEOUT = 10.0
#: Seconds a TCP connect may take. Without a bound a dial during a silent partition waits out
#: the kernel's SYN retries (~127 s) and holds a dial slot. Erlang bounds the whole connection
#: setup by net_setuptime (7 s); two seconds is ample on a LAN and lets a partition heal fast.
CONNECT_TIMEOUT = 2.0
#: Reconnect backoff: first retry after this many seconds, doubling up to RECONNECT_MAX, each
#: delay jittered by +-50% so a restarted cluster does not redial in lockstep.
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0  # a late-joining higher id waits at most this long for its dialler
#: Read buffer handed to BufferedProtocol: 256 KiB, the size uvloop reads per call anyway. One
#: buffer serves every connection of a node: ``buffer_updated`` consumes it synchronously (the
#: protocol copies what it keeps), so a 255-connection node does not hold 64 MiB of buffers.
READ_BUFFER_BYTES = 256 * 1024
#: Outbound dials in flight at once per node. A mesh forming from scratch would otherwise start
#: hundreds of TLS handshakes (~3 ms of CPU each) together, and under that load some would hit
#: the handshake timeout and be retried: measured, 256 nodes never formed a mesh without a
#: limit and formed one with 32 per process.
DIAL_CONCURRENCY = 8
#: Listen backlog: a 256-node mesh may dial one node at once.
LISTEN_BACKLOG = 512
#: Unauthenticated connections evicted when accept fails with EMFILE/ENFILE: enough
#: descriptors for a burst of reconnecting peers and this node's own dials (DIAL_CONCURRENCY).
EMFILE_SHED = 4 * DIAL_CONCURRENCY
#: Fewest unauthenticated connections allowed after EMFILE: a few, so peers still get in.
EMFILE_FLOOR = 8
#: Seconds without EMFILE after which the spec's ``handshakes`` bound applies again.
EMFILE_FORGET = 30.0
#: Pause of the accept loop after a failed accept, doubling while accepts keep failing. 50 ms
#: lets a cancelled handshake close its socket; one second keeps the listen backlog moving.
ACCEPT_PAUSE_MIN = 0.05
ACCEPT_PAUSE_MAX = 1.0
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


class _Handshake:
    """An accepted connection not yet authenticated: its admission token."""

    __slots__ = ("task", "conn", "remote")

    def __init__(self, remote: str) -> None:
        self.task: asyncio.Task[None] | None = None
        self.conn: Connection | None = None
        self.remote = remote


class ClusterHost(Protocol):
    """What the connector needs from its node (``reign._runtime.node.Node``)."""

    @property
    def id(self) -> int: ...
    @property
    def incarnation(self) -> int: ...
    @property
    def binding(self) -> LoopBinding: ...
    mailbox_by_serial: Callable[[int], Mailbox | None]
    def mailbox_by_name(self, name: str) -> Mailbox | None: ...
    def local_mailbox(self, mailbox_id: MailboxID) -> Mailbox | None: ...
    def address_for(self, mailbox_id: MailboxID) -> Address: ...
    def connection_status(self, node_id: int, connected: bool) -> None: ...


class ClusterListener(Protocol):
    """Told of peers coming and going and of their CONTROL frames (the registry)."""

    def peer_up(self, peer: int, incarnation: int) -> None: ...
    def peer_down(self, peer: int) -> None: ...
    def control(self, peer: int, payload: Any) -> None:
        """A CONTROL frame's decoded payload; raise ProtocolError to drop the connection."""
        ...


class Cluster:
    """The connection manager of one clustered node."""

    def __init__(
        self,
        host: ClusterHost,
        spec: ClusterSpec,
        credentials: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        self.host = host
        self.node_id = node_id = host.id
        self.spec = spec
        self.me = spec.node(node_id)
        cert, key, ca = credentials or spec.load_credentials(node_id)
        self.server_ssl = server_context(cert, key, ca)
        self.client_ssl = client_context(cert, key, ca)
        self.cluster_id = cluster_identity(ca)
        self.incarnation = host.incarnation
        self.binding = host.binding
        self.net_ticktime = spec.net_ticktime
        self.max_message_bytes = spec.max_message_bytes
        self.max_frame_bytes = spec.max_message_bytes + MESSAGE_OVERHEAD
        self.outbound_bytes = spec.outbound_bytes
        self.log = get_logger("reign.cluster").bind(node=node_id)
        self.limited_log = RateLimitedLog(self.log)
        self.handshakes: PreAuthAdmission[_Handshake] = PreAuthAdmission(
            spec.handshakes, spec.handshakes_per_ip
        )
        self.emfile_at: float | None = None
        limits = PeerLimits(spec.pending_messages, spec.pending_bytes, WRITE_HIGH_WATER, spec.outbound_bytes)
        self.peers: dict[int, Peer] = {
            peer_spec.id: Peer(peer_spec, limits, self.log) for peer_spec in spec.nodes if peer_spec.id != node_id
        }
        self.incarnations = {peer_id: IncarnationGuard() for peer_id in self.peers}
        self.read_view = memoryview(bytearray(READ_BUFFER_BYTES))
        self.inbound = Inbound(
            incarnation=self.incarnation, lookup=host.mailbox_by_serial, make_address=host.address_for,
            lookup_name=host.mailbox_by_name,
        )
        self.dial_slots: asyncio.Semaphore | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at = 0.0
        self.listener_socket: socket.socket | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.connections: set[Connection] = set()
        self.stopping = False
        self.listeners: list[ClusterListener] = []

    def add_listener(self, listener: ClusterListener) -> None:
        """``listener`` hears of every peer up/down and CONTROL frame from now on."""
        self.listeners.append(listener)

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time()
        self.dial_slots = asyncio.Semaphore(DIAL_CONCURRENCY)
        host, port = self.me.listen_address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.listener_socket = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(exc.errno, f"node {self.node_id} cannot listen on {host}:{port}: {reason}") from exc
        self.listener_socket.setblocking(False)
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
        if self.listener_socket is not None:
            self.listener_socket.close()
        self.limited_log.close()
        await asyncio.sleep(0)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------ accepting and dialling

    async def _accept_loop(self) -> None:
        listener = self.listener_socket
        assert listener is not None and self.loop is not None
        pause = ACCEPT_PAUSE_MIN
        while True:
            try:
                sock, peername = await self.loop.sock_accept(listener)
            except OSError as exc:  # keep serving, but do not spin
                shed = self._out_of_descriptors() if exc.errno in _OUT_OF_DESCRIPTORS else 0
                self.limited_log.warning("node.accept.failed", reason=str(exc), evicted=shed,
                                         handshakes=len(self.handshakes), pause=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, ACCEPT_PAUSE_MAX)
                continue
            pause = ACCEPT_PAUSE_MIN
            if isinstance(peername, tuple):
                source, remote = str(peername[0]), f"{peername[0]}:{peername[1]}"
            else:
                source = remote = str(peername)
            token = _Handshake(remote)
            for old in self.handshakes.admit(source, token):
                self._evict(old, f"over the bound of {self.handshakes.per_source} per source address "
                                 f"or {self.handshakes.limit} in all")
            task = self.loop.create_task(self._upgrade_inbound(sock, remote, token))
            token.task = task
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _out_of_descriptors(self) -> int:
        """Accept failed with EMFILE/ENFILE: free descriptors held by unauthenticated
        connections and hold fewer of them for a while. Returns how many were evicted."""
        held = len(self.handshakes)
        evicted = self.handshakes.shed(EMFILE_SHED)
        for token in evicted:
            self._evict(token, "out of file descriptors")
        self.handshakes.limit = max(EMFILE_FLOOR, min(self.handshakes.limit, held - len(evicted)))
        assert self.loop is not None
        self.emfile_at = self.loop.time()
        return len(evicted)

    def _evict(self, token: _Handshake, why: str) -> None:
        """Close an unauthenticated connection the admission bound pushed out."""
        conn = token.conn
        if conn is not None and conn.transport is not None:  # TLS done, HELLO pending
            conn.fail(HandshakeError(f"evicted before HELLO: {why}"))
            return
        self.limited_log.warning("node.handshake.evicted", remote=token.remote, reason=why)
        if token.task is not None:
            token.task.cancel()  # _upgrade_inbound closes the socket

    def _release(self, conn: Connection) -> None:
        token = conn.preauth
        if token is not None:
            conn.preauth = None
            assert isinstance(token, _Handshake)
            self.handshakes.release(token)

    async def _upgrade_inbound(self, sock: socket.socket, remote: str, token: _Handshake) -> None:
        """TLS-handshake an accepted socket; failures are logged with the peer and reason."""
        assert self.loop is not None

        def factory() -> Connection:
            conn = Connection(self, None, remote)
            conn.preauth = token
            token.conn = conn
            return conn

        try:
            await self.loop.connect_accepted_socket(
                factory, sock, ssl=self.server_ssl, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
            )
        except asyncio.CancelledError:
            sock.close()
            self.handshakes.release(token)
            raise
        except Exception as exc:
            sock.close()
            self.handshakes.release(token)
            if token.conn is not None:
                token.conn.cancel_hello_timer()
            self.limited_log.warning("node.tls.rejected", remote=remote, reason=_tls_reason(exc))
        # On success connection_made has run; the rest happens in the protocol callbacks
        # (the token is released when the HELLO exchange completes or the connection closes).

    async def _dial_loop(self, peer: Peer) -> None:
        assert self.dial_slots is not None
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

    async def _dial(self, peer: Peer) -> None:
        assert self.loop is not None
        host, port = peer.spec.address
        local = self.me.local_address
        conn_holder: list[Connection] = []

        def factory() -> Connection:
            conn = Connection(self, peer.id, f"{host}:{port}")
            conn_holder.append(conn)
            return conn

        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, addr = infos[0]
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:  # this node's own dials come before unauthenticated strangers
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self._out_of_descriptors()
            raise
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
        await conn_holder[0].established

    # ------------------------------------------------------------ connections (ConnectionOwner)

    def connection_made(self, conn: Connection) -> None:
        self.connections.add(conn)

    def check_peer(self, proven: int, inbound: bool) -> None:
        if proven == self.node_id:
            raise HandshakeError(f"peer presents this node's own certificate (node {proven})")
        if proven not in self.peers:
            raise HandshakeError(f"node {proven} is not in the cluster spec")
        if inbound and proven > self.node_id:
            raise HandshakeError(
                f"node {proven} dialled node {self.node_id}; the lower node id dials the higher"
            )

    def check_hello(self, conn: Connection, node: int, incarnation: int) -> None:
        """Before our ACCEPT: refuse a second process with the id of an up peer (module doc)."""
        peer = self.peers[node]
        up = peer.conn
        assert self.loop is not None
        up_incarnation = peer.incarnation if up is not None else None
        admit, detected = self.incarnations[node].check(incarnation, up_incarnation, self.loop.time())
        if detected:
            assert up is not None
            kept, other = (up_incarnation, incarnation) if not admit else (incarnation, up_incarnation)
            self.log.error(
                "peer.duplicate_node", peer=node,
                up_incarnation=up_incarnation, up_remote=up.remote,
                other_incarnation=incarnation, other_remote=conn.remote, kept_incarnation=kept,
                reason=f"node id {node} runs in two processes (incarnations {kept} and {other}); "
                       f"the older keeps the id, the other is refused",
            )
        if not admit:
            assert up is not None
            raise HandshakeError(
                f"node {node} incarnation {incarnation} refused: node id {node} also runs as "
                f"incarnation {up_incarnation} (from {up.remote}), which holds the id"
            )

    def connection_established(self, conn: Connection, event: Established) -> bool:
        """The handshake on ``conn`` completed; True if the connection was closed instead."""
        self._release(conn)
        peer = self.peers[event.node]
        if self.stopping:
            conn.close_gracefully()
            return True
        old = peer.conn
        if old is not None:
            old.close_reason = "replaced by a new connection from the same node"
            self._peer_down(peer, old.close_reason, old)
            old.abort()
        new_incarnation = event.incarnation
        restarted = peer.incarnation is not None and peer.incarnation != new_incarnation
        conn.peer = peer
        peer.conn = conn
        peer.incarnation = new_incarnation
        self.incarnations[peer.id].came_up(new_incarnation, conn.remote)
        peer.state = "up"
        peer.is_up.set()
        peer.connects += 1
        peer.last_heard = conn.last_read
        peer.flush_pending()
        # watches and links made before first contact, or of an older incarnation
        self._end(*peer.monitors.keep_incarnation(new_incarnation), NOPROC)
        protocol = conn.protocol
        assert protocol is not None
        for target in peer.monitors.watches:
            conn.write(protocol.monitor(target))
        node, incarnation = self.node_id, self.incarnation
        for serial, remote in peer.monitors.links:
            conn.write(protocol.link(MailboxID(node, incarnation, serial), remote))
        self.log.info("peer.up", peer=peer.id, incarnation=new_incarnation, remote=conn.remote,
                      restarted=restarted)
        if not conn.established.done():
            conn.established.set_result(None)
        for listener in list(self.listeners):
            listener.peer_up(peer.id, new_incarnation)
        self.host.connection_status(peer.id, True)
        return conn.closed

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self._release(conn)
        peer = conn.peer
        if peer is not None and peer.conn is conn and not self.stopping:
            self._peer_down(peer, conn.close_reason or "connection closed", conn)

    def _peer_down(self, peer: Peer, reason: str, conn: Connection) -> None:
        abandoned_frames, abandoned_bytes = conn.discard_queued()
        peer.count_abandoned(abandoned_frames, abandoned_bytes)
        peer.conn = None
        peer.state = "down"
        peer.is_up.clear()
        peer.drained.set()
        peer.update_drained()
        # info when this node stops or the peer closed on purpose (a node stopping); warning
        # for a loss: reset, silence, protocol error, stall
        (self.log.info if self.stopping or conn.closed_by_peer else self.log.warning)(
            "peer.down", peer=peer.id, reason=reason,
            abandoned_messages=abandoned_frames, abandoned_bytes=abandoned_bytes,
        )
        watches, watched, links = peer.monitors.peer_lost()
        for serial in watched:
            mbox = self.host.mailbox_by_serial(serial)
            if mbox is not None:
                mbox.remove_watcher(peer.watch)
        self._end(watches, links, NOCONNECTION)  # both link directions' local ends
        for listener in list(self.listeners):
            listener.peer_down(peer.id)
        self.host.connection_status(peer.id, False)
        peer.wake_dialler.set()

    # ------------------------------------------------------------ inbound frames

    def handle_event(self, conn: Connection, event: Any) -> bool:
        """A frame other than MESSAGE or CONTROL from an established peer."""
        peer = conn.peer
        assert peer is not None
        kind = type(event)
        if kind is Tick:
            return False
        if kind is Monitor:
            target = event.target
            mbox = self.host.local_mailbox(target)
            if mbox is not None and mbox.add_watcher(peer.watch):
                peer.monitors.peer_monitors(target.serial)
            else:
                conn.write_down(target, NOPROC)
        elif kind is Demonitor:
            target = event.target
            if peer.monitors.peer_demonitors(target.serial):
                mbox = self.host.local_mailbox(target)
                if mbox is not None:
                    mbox.remove_watcher(peer.watch)
        elif kind is Down:
            for watcher in peer.monitors.target_down(event.target):
                watcher.notify_down(event.target, event.reason)
        elif kind is Link:
            target = event.target
            mbox = self.host.local_mailbox(target)
            if mbox is not None and mbox.links_add(event.origin):
                peer.monitors.add_link(target.serial, event.origin)
            else:
                conn.write_exit(event.origin, target, NOPROC, linked=True)
        elif kind is Unlink:
            target = event.target
            peer.monitors.remove_link(target.serial, event.origin)
            mbox = self.host.local_mailbox(target)
            if mbox is not None:
                mbox.links_discard(event.origin)
        elif kind is ExitSignal:
            target = event.target
            if event.linked:
                assert event.origin is not None  # the protocol refuses a link EXIT without one
                if not peer.monitors.remove_link(target.serial, event.origin):
                    return conn.closed  # unlinked meanwhile: the signal is void, as in Erlang
            mbox = self.host.local_mailbox(target)
            if mbox is not None:
                mbox.exit_signal(event.origin, event.reason, event.linked)
        else:  # pragma: no cover - the protocol only produces the kinds above
            raise ProtocolError(f"unexpected event {kind.__name__}")
        return conn.closed

    def handle_control(self, conn: Connection, value: Any) -> None:
        peer = conn.peer
        assert peer is not None
        if not self.listeners:
            raise ProtocolError("CONTROL frame but nobody handles them")
        for listener in list(self.listeners):
            listener.control(peer.id, value)

    # ------------------------------------------------------------ API used by the node

    def route(self, mailbox_id: MailboxID, msg: Any) -> bool:
        """Encode ``msg`` (in the caller's thread) and queue it for the target's node."""
        peer = self.peers.get(mailbox_id.node)
        if peer is None or self.stopping:
            return False
        known = peer.incarnation
        if known is not None and mailbox_id.incarnation < known:
            return False
        payload = encode(msg)
        size = len(payload)
        if size > self.max_message_bytes:
            raise EncodeError(
                f"message encodes to {size} bytes, over max_message_bytes "
                f"({self.max_message_bytes})"
            )
        if self.binding.thread_id == get_ident():  # LoopBinding.call's first case, inline
            return peer.send_message(mailbox_id.incarnation, mailbox_id.serial, payload)
        return self.binding.call(peer.send_message, mailbox_id.incarnation, mailbox_id.serial, payload)

    def send_control(self, peer_id: int, payload: Any) -> bool:
        """Send a CONTROL frame (registry traffic) to an up peer; False if it is not up."""
        peer = self.peers.get(peer_id)
        conn = peer.conn if peer is not None else None
        if conn is None or conn.protocol is None:
            return False
        conn.write(conn.protocol.control(encode(payload)))
        return True

    def disconnect(self, peer_id: int, reason: str) -> bool:
        """Close the connection to ``peer_id`` as a protocol error of the peer's (the registry
        uses it when a peer's snapshot does not end in time): logged as ``peer.protocol_error``
        with ``reason``, the peer is down before this returns, and it redials as after any
        protocol error. False (and nothing happens) if it is not connected."""
        peer = self.peers.get(peer_id)
        conn = peer.conn if peer is not None else None
        if conn is None or self.stopping:
            return False
        conn.fail(ProtocolError(reason))
        return True

    def monitor(self, target: MailboxID, watcher: Mailbox) -> None:
        """``watcher`` (a local mailbox) watches ``target`` on a peer (loop thread)."""
        peer = self.peers.get(target.node)
        if peer is not None and peer.state == "connecting":
            # Never connected yet (the mesh is forming): like Erlang's auto-connect, the watch
            # waits for the connection and is sent (or answered) in connection_established.
            peer.monitors.add_watch(target, watcher)
            return
        conn = peer.conn if peer is not None else None
        if peer is None or conn is None:
            watcher.notify_down(target, NOCONNECTION)
            return
        if target.incarnation != peer.incarnation:
            watcher.notify_down(target, NOPROC)
            return
        if peer.monitors.add_watch(target, watcher):
            assert conn.protocol is not None
            conn.write(conn.protocol.monitor(target))

    def link(self, mbox: Mailbox, target: MailboxID) -> None:
        """Link the local ``mbox`` and ``target`` on a peer (loop thread)."""
        peer = self.peers.get(target.node)
        if peer is not None and peer.state == "connecting":
            # Never connected yet: LINK goes out with the connection (connection_established).
            if peer.monitors.add_link(mbox.id.serial, target):
                mbox.links_add(target)
            return
        conn = peer.conn if peer is not None else None
        if peer is None or conn is None or conn.protocol is None:
            mbox.exit_signal(target, NOCONNECTION, True)
            return
        if target.incarnation != peer.incarnation:
            mbox.exit_signal(target, NOPROC, True)
            return
        if peer.monitors.add_link(mbox.id.serial, target):
            mbox.links_add(target)
            conn.write(conn.protocol.link(mbox.id, target))

    def unlink(self, mbox: Mailbox, target: MailboxID) -> None:
        """Remove the link between the local ``mbox`` and ``target`` on a peer (loop thread)."""
        peer = self.peers.get(target.node)
        if peer is None or not peer.monitors.remove_link(mbox.id.serial, target):
            return
        conn = peer.conn
        if conn is not None and conn.protocol is not None:
            conn.write(conn.protocol.unlink(mbox.id, target))

    def link_exit(self, origin: MailboxID, target: MailboxID, reason: Any) -> None:
        """The local ``origin`` closed with ``reason``; ``target`` on a peer was linked to it."""
        peer = self.peers.get(target.node)
        if peer is None or not peer.monitors.remove_link(origin.serial, target):
            return
        conn = peer.conn
        if conn is not None:
            conn.write_exit(target, origin, reason, linked=True)

    def send_exit(self, target: MailboxID, origin: MailboxID | None, reason: Any) -> None:
        """``reign.exit`` of ``target`` on a peer; dropped if the peer is not up (as a message
        to a gone process is), or ``target`` is of another incarnation."""
        peer = self.peers.get(target.node)
        conn = peer.conn if peer is not None else None
        if peer is not None and conn is not None and target.incarnation == peer.incarnation:
            conn.write_exit(target, origin, reason, linked=False)

    def send_named(self, node_id: int, name: str, msg: Any) -> bool:
        """Send ``msg`` to the mailbox registered as ``name`` on ``node_id``; see Node.send_named."""
        peer = self.peers.get(node_id)
        if peer is None or self.stopping:
            return False
        payload = encode(msg)
        if len(payload) > self.max_message_bytes:
            raise EncodeError(
                f"message encodes to {len(payload)} bytes, over max_message_bytes ({self.max_message_bytes})"
            )
        if peer.conn is None:
            return False  # not up: Erlang would connect first; here the message is not sent
        if self.binding.on_loop_thread():
            return self._send_named(peer, name, payload)
        return self.binding.call(self._send_named, peer, name, payload)

    def _send_named(self, peer: Peer, name: str, payload: bytes) -> bool:
        """On the loop: queue the NAMED frame within ``outbound_bytes`` (refused beyond it,
        counted and logged as any send is)."""
        conn = peer.conn
        if conn is None or conn.protocol is None:
            return False
        if conn.write_application(conn.protocol.named(name, payload)):
            peer.messages_out += 1
            return True
        peer.refused()
        return False

    def demonitor(self, target: MailboxID, watcher: Mailbox) -> None:
        peer = self.peers.get(target.node)
        if peer is None or not peer.monitors.remove_watch(target, watcher):
            return
        conn = peer.conn
        if conn is not None and conn.protocol is not None:
            conn.write(conn.protocol.demonitor(target))

    async def wait_connected(self, node_ids: tuple[int, ...], *, timeout: float | None) -> None:
        """See ``Node.wait_connected``; KeyError for a node id not in the spec."""
        for node_id in node_ids:
            if node_id not in self.peers:
                raise KeyError(f"node {node_id} is not a peer of node {self.node_id}")
        peers = [self.peers[i] for i in node_ids] if node_ids else list(self.peers.values())
        async with asyncio.timeout(timeout):
            while not all(peer.state == "up" for peer in peers):
                for peer in peers:
                    await peer.is_up.wait()

    async def wait_drained(self, node_id: int | None, *, timeout: float | None) -> None:
        """See ``Node.wait_drained``; KeyError for a node id not in the spec."""
        if node_id is not None and node_id not in self.peers:
            raise KeyError(f"node {node_id} is not a peer of node {self.node_id}")
        peers = list(self.peers.values()) if node_id is None else [self.peers[node_id]]

        async with asyncio.timeout(timeout):
            await asyncio.sleep(0)  # a checkpoint even when drained: the loop writes meanwhile
            for peer in peers:
                await peer.wait_drained()

    def statistics(self) -> dict[int, PeerStatistics]:
        now = self.loop.time() if self.loop is not None else 0.0
        return {peer.id: peer.statistics(now) for peer in self.peers.values()}

    # ------------------------------------------------------------ keepalive

    async def _tick_loop(self) -> None:
        assert self.loop is not None
        interval = self.net_ticktime / 4
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for conn in list(self.connections):
                protocol = conn.protocol
                if conn.closed or protocol is None or protocol.state != "established":
                    continue
                if now - conn.last_read > self.net_ticktime:
                    conn.fail(ProtocolError(
                        f"no data for {now - conn.last_read:.1f} s (net_ticktime {self.net_ticktime:g} s)"
                    ))
                    continue
                stalled = conn.write_stalled(now)
                if stalled >= self.net_ticktime:
                    self._stalled(conn, stalled)
                    continue
                if now - conn.last_write >= interval * 0.9 and not conn.out:
                    conn.write(protocol.tick())
            for peer in self.peers.values():
                peer.report_refused()
                if peer.state == "connecting" and now - self.started_at > self.net_ticktime:
                    self._never_reached(peer)
            if self.emfile_at is not None and now - self.emfile_at > EMFILE_FORGET:
                self.emfile_at = None
                self.handshakes.limit = self.handshakes.total

    def _never_reached(self, peer: Peer) -> None:
        """``peer`` has not come up for ``net_ticktime`` since this node started: it counts as
        down (Erlang: a node that cannot be reached is ``noconnection``). The watches and links
        that waited for its first connection end with ``"noconnection"``; later ones end at once;
        messages stay buffered (bounded) for when it comes, and the dialler keeps trying."""
        peer.state = "down"
        self.log.warning("peer.unreachable", peer=peer.id, waited=self.net_ticktime)
        watches, _, links = peer.monitors.peer_lost()
        self._end(watches, links, NOCONNECTION)

    def _end(self, watches: dict[MailboxID, set[Mailbox]], links: set[tuple[int, MailboxID]], reason: str) -> None:
        """Watches and links on a peer's mailboxes ended (the peer was lost, or came back as
        another run): each watcher learns ``reason``, each linked local mailbox gets it as an
        exit signal from the remote end."""
        for target, watchers in watches.items():
            for watcher in watchers:
                watcher.notify_down(target, reason)
        for serial, remote in links:
            mbox = self.host.mailbox_by_serial(serial)
            if mbox is not None:
                mbox.exit_signal(remote, reason, True)

    def _stalled(self, conn: Connection, seconds: float) -> None:
        """The peer read nothing for ``seconds`` while data waited: declare it down."""
        queued = conn.queued_bytes()
        conn.close_reason = (
            f"peer read nothing for {seconds:.1f} s while {queued} bytes waited for it "
            f"(net_ticktime {self.net_ticktime:g} s)"
        )
        self.log.warning("peer.outbound.stalled", peer=conn.peer_id_for_log(), remote=conn.remote,
                         seconds=round(seconds, 1), queued_bytes=queued)
        conn.abort()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc) or type(exc).__name__
