"""Node: owns mailboxes, routes sends, and (when clustered) the connections to its peers.

This is where a node is assembled: :class:`Node` builds its :class:`~.cluster.Cluster` (when it
has a spec) and its :class:`~.names.Names`, passing each what it needs in its constructor; each
reaches the others only through the Protocols they declare (``ClusterHost`` in
:mod:`.cluster`, ``NamesHost`` in :mod:`.names`, ``MailboxHost`` in :mod:`.mailbox`).

Invariants:

* A node has an id (0..255) and an incarnation fixed when the object is created; every mailbox
  it creates gets ``MailboxID(id, incarnation, serial)`` with a serial never reused by it.
* ``_mailboxes`` maps serial -> open Mailbox; a mailbox leaves it when it closes.
* All mutable state is touched on the loop thread the node is bound to (:class:`~.loop.LoopBinding`).
  The node binds to the running loop on ``start()`` or on first use inside a loop; before that
  it is single-threaded. Calls from other threads go through ``LoopBinding.call``.
* Nothing here is global: several nodes may live in one process and one loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._config.spec import ClusterSpec
from .._core.address import Address
from .._core.ids import MAX_NODE_ID, MailboxID, new_incarnation, parse_mailbox_id
from .._errors import ClusterSpecError
from .cluster import Cluster, PeerStatistics
from .log import get_logger
from .loop import LoopBinding
from .mailbox import Mailbox
from .names import Names

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "Node",
    "NodeStatistics",
    "no_clustering",
    "create_from_spec",
    "create_from_spec_file",
    "run",
]

_log = get_logger("reign.node")

ConnectionStatusCallback = Callable[[int, bool], object]


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """A snapshot of a node (``node.statistics()``).

    ``peers`` maps each other node of the spec to its :class:`reign.PeerStatistics` (empty on a
    ``no_clustering()`` node).
    """

    node: int
    incarnation: int
    mailboxes: int
    peers: Mapping[int, PeerStatistics]


class Node:
    """A reign node. Create with :func:`no_clustering` or ``create_from_spec[_file]``.

    Use ``async with node:`` (or ``await node.start()`` / ``await node.stop()``) around its
    life. ``stop`` closes every mailbox and connection and is idempotent.
    """

    def __init__(
        self,
        node_id: int,
        spec: ClusterSpec | None = None,
        *,
        credentials: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        if type(node_id) is not int or not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id must be an int in 0..{MAX_NODE_ID}, got {node_id!r}")
        self._id = node_id
        self._incarnation = new_incarnation()
        self._binding = LoopBinding()
        self._serials = itertools.count(1)
        self._mailboxes: dict[int, Mailbox] = {}
        self._status_callbacks: list[ConnectionStatusCallback] = []
        self._close_listeners: list[Callable[[Mailbox], object]] = []
        self._started = False
        self._stopped = False
        self._log = _log.bind(node=node_id, incarnation=self._incarnation)
        self._spec = spec
        self._cluster: Cluster | None = None
        if spec is not None:
            self._cluster = Cluster(self, spec, credentials)
        self._names = Names(self, self._cluster)

    def __repr__(self) -> str:
        return f"<reign.Node {self._id} incarnation={self._incarnation}>"

    # ---------------------------------------------------------------- identity

    @property
    def id(self) -> int:
        """This node's id, 0..255."""
        return self._id

    @property
    def incarnation(self) -> int:
        """Chosen when the node object is created; differs between runs of the same node id."""
        return self._incarnation

    @property
    def names(self) -> Names:
        """The global name registry as seen from this node (:class:`reign.Names`)."""
        return self._names

    @property
    def spec(self) -> ClusterSpec | None:
        """The cluster spec this node was created from (None for ``no_clustering()``)."""
        return self._spec

    @property
    def binding(self) -> LoopBinding:
        """The loop this node's state belongs to (for the runtime's own modules)."""
        return self._binding

    # ---------------------------------------------------------------- mailboxes

    def new_mailbox(self) -> tuple[Address, Mailbox]:
        """Create a mailbox on this node; returns ``(address, mailbox)``.

        Raises :class:`RuntimeError` after the node was stopped.
        """
        if self._stopped:
            raise RuntimeError(f"node {self._id} is stopped; it creates no more mailboxes")
        self._binding.try_bind()
        serial = next(self._serials)
        mbox = Mailbox(self, MailboxID(self._id, self._incarnation, serial))
        self._mailboxes[serial] = mbox
        return mbox.address, mbox

    def address(self, data: str | bytes | bytearray | memoryview) -> Address:
        """Parse the text (``<N.I.S>``) or binary form of an address, bound to this node.

        Raises :class:`reign.IllegalAddressFormatError` for anything else.
        """
        return self.address_for(parse_mailbox_id(data))

    def address_for(self, mailbox_id: MailboxID) -> Address:
        """The Address of ``mailbox_id`` bound to this node (the mailbox's own, if it is ours)."""
        mbox = self.local_mailbox(mailbox_id)
        return mbox.address if mbox is not None else Address(mailbox_id, self)

    def local_mailbox(self, mailbox_id: MailboxID) -> Mailbox | None:
        """The open mailbox ``mailbox_id`` of this node and incarnation, or None."""
        if mailbox_id.node == self._id and mailbox_id.incarnation == self._incarnation:
            return self._mailboxes.get(mailbox_id.serial)
        return None

    def mailbox_by_serial(self, serial: int) -> Mailbox | None:
        """The open mailbox of this incarnation with ``serial``, or None (the receive path)."""
        return self._mailboxes.get(serial)

    def is_local(self, mailbox_id: MailboxID) -> bool:
        """Whether ``mailbox_id`` names a mailbox of this node and incarnation (open or not)."""
        return mailbox_id.node == self._id and mailbox_id.incarnation == self._incarnation

    def add_close_listener(self, fn: Callable[[Mailbox], object]) -> None:
        """Call ``fn(mbox)`` on the loop whenever one of this node's mailboxes closes."""
        self._close_listeners.append(fn)

    def mailbox_closed(self, mbox: Mailbox, watching: set[MailboxID]) -> None:
        """A mailbox of this node closed (loop thread): forget it and end its watches."""
        self._mailboxes.pop(mbox.id.serial, None)
        for fn in self._close_listeners:
            fn(mbox)
        for target in watching:  # like Erlang: a process's monitors end with it
            self._demonitor(target, mbox)

    # ---------------------------------------------------------------- routing and monitors

    def route(self, target: MailboxID, msg: Any) -> bool:
        """Send to an address that has no cached local mailbox. Any thread."""
        if target.node == self._id:
            if target.incarnation != self._incarnation:
                return False
            mbox = self._mailboxes.get(target.serial)
            return False if mbox is None else mbox.post(msg)
        cluster = self._cluster
        if cluster is None:
            return False
        return cluster.route(target, msg)

    def monitor(self, target: MailboxID, watcher: Address) -> None:
        """``watcher`` (a mailbox of this node) gets ``MailboxClosed(target)`` once. Any thread.

        Raises ValueError if ``watcher`` is not an address of this node (as in Erlang, a
        monitor is made by a process of the node that watches).
        """
        self._check_watcher(watcher)
        self._binding.call(self._monitor, target, watcher.id)

    def demonitor(self, target: MailboxID, watcher: Address) -> None:
        """Cancel :meth:`monitor`. Any thread."""
        self._check_watcher(watcher)
        self._binding.call(self._demonitor_by_id, target, watcher.id)

    def _check_watcher(self, watcher: Address) -> None:
        if not self.is_local(watcher.id):
            raise ValueError(
                f"watcher {watcher} is not a mailbox of node {self._id} (incarnation "
                f"{self._incarnation}); a watch is made by a mailbox of the node that watches"
            )

    def _monitor(self, target: MailboxID, watcher_id: MailboxID) -> None:
        watcher = self._mailboxes.get(watcher_id.serial)
        if watcher is None:
            return  # the watcher closed meanwhile: nobody to tell
        watcher.watch_started(target)
        if target.node == self._id:
            mbox = self.local_mailbox(target)
            if mbox is None or not mbox.add_watcher(watcher):
                watcher.notify_down(target)
        elif self._cluster is None:
            watcher.notify_down(target)
        else:
            self._cluster.monitor(target, watcher)

    def _demonitor_by_id(self, target: MailboxID, watcher_id: MailboxID) -> None:
        watcher = self._mailboxes.get(watcher_id.serial)
        if watcher is not None:
            watcher.watch_ended(target)
            self._demonitor(target, watcher)

    def _demonitor(self, target: MailboxID, watcher: Mailbox) -> None:
        if target.node == self._id:
            mbox = self.local_mailbox(target)
            if mbox is not None:
                mbox.remove_watcher(watcher)
        elif self._cluster is not None:
            self._cluster.demonitor(target, watcher)

    # ---------------------------------------------------------------- cluster introspection

    def statistics(self) -> NodeStatistics:
        """A frozen snapshot: open mailboxes and, per peer, state, queues, counters, last tick."""
        peers = self._cluster.statistics() if self._cluster is not None else {}
        return NodeStatistics(self._id, self._incarnation, len(self._mailboxes), peers)

    async def wait_connected(self, *node_ids: int, timeout: float | None = None) -> None:
        """Wait until every listed peer (every peer of the spec if none is listed) is up.

        "Up" is what ``statistics().peers[n].state`` reports: TLS and the HELLO exchange done
        in both directions. Returns at once when they are all up already, and on a
        ``no_clustering()`` node when no id is listed. Raises :class:`TimeoutError` after
        ``timeout`` seconds, :class:`KeyError` for an id that is not a peer (on
        ``no_clustering()``, any id), and RuntimeError off the node's loop.
        """
        self._binding.require_loop_thread("wait_connected()")
        if self._cluster is None:
            if node_ids:
                raise KeyError(f"node {node_ids[0]} is not a peer of node {self._id} (no clustering)")
            return
        await self._cluster.wait_connected(node_ids, timeout=timeout)

    async def wait_drained(self, node_id: int | None = None, *, timeout: float | None = None) -> None:
        """Wait until the outbound buffer toward ``node_id`` (every peer if None) is below its
        high-water mark (like Erlang's busy distribution port).

        ``send`` never blocks; a fast producer awaits this between bursts so it cannot outrun a
        slow link. It always lets the loop run once, even when nothing waits, so such a loop
        never starves the node's own writes and reads. While a peer is not connected, its
        pending buffer counts. Raises
        :class:`TimeoutError` after ``timeout`` seconds and :class:`KeyError` for a node id not
        in the spec. Returns at once on a ``no_clustering()`` node.
        """
        if self._cluster is None:
            return
        await self._cluster.wait_drained(node_id, timeout=timeout)

    # ---------------------------------------------------------------- connection status

    def add_connection_status_callback(self, fn: ConnectionStatusCallback) -> None:
        """Call ``fn(node_id, connected)`` on the loop whenever a peer comes up or goes down.

        Exceptions raised by ``fn`` are logged (``node.status_callback.failed``) and ignored.
        """
        self._status_callbacks.append(fn)

    def connection_status(self, node_id: int, connected: bool) -> None:
        """A peer came up or went down (called by the cluster, on the loop)."""
        for fn in list(self._status_callbacks):
            try:
                fn(node_id, connected)
            except Exception:
                self._log.exception("node.status_callback.failed", peer=node_id)

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Bind to the running loop and, when clustered, listen and dial the peers.

        Calling it again while started does nothing. Raises :class:`RuntimeError` after stop,
        or when the node was first used on another loop.
        """
        if self._stopped:
            raise RuntimeError(f"node {self._id} was stopped and cannot start again")
        if self._started:
            return
        loop = self._binding.bind()
        if not self._binding.on_loop_thread() or loop is not asyncio.get_running_loop():
            raise RuntimeError("a node must be started on the loop it was first used on")
        self._started = True
        if self._cluster is not None:
            try:
                await self._cluster.start()
            except BaseException:
                await self.stop()
                raise
        self._log.info("node.started")

    async def stop(self) -> None:
        """Close every mailbox, then every connection. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for mbox in list(self._mailboxes.values()):
            mbox.close()
        if self._cluster is not None:
            await self._cluster.stop()
        self._log.info("node.stopped")

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def no_clustering() -> Node:
    """A node with id 0 and no network: every local feature works; other nodes are unreachable."""
    return Node(0)


def create_from_spec(spec: ClusterSpec | Mapping[str, Any], node_id: int) -> Node:
    """A clustered node ``node_id`` of ``spec`` (a :class:`reign.ClusterSpec` or parsed JSON).

    Credentials are read and checked now, so a bad spec or certificate fails here with
    :class:`reign.ClusterSpecError`; nothing listens or dials until ``start()``.
    """
    if isinstance(spec, Mapping):
        spec = ClusterSpec.from_dict(spec)
    elif not isinstance(spec, ClusterSpec):
        raise ClusterSpecError(f"spec must be a ClusterSpec or a dict, not {type(spec).__name__}")
    if type(node_id) is not int:
        raise ClusterSpecError(f"node id must be an int, not {type(node_id).__name__}")
    spec.node(node_id)
    return Node(node_id, spec)


def create_from_spec_file(path: str | os.PathLike[str], node_id: int) -> Node:
    """:func:`create_from_spec` with the spec loaded (and validated) from a JSON file."""
    return create_from_spec(ClusterSpec.load(path), node_id)


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` to completion on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at run time
        return asyncio.run(main)
    return uvloop.run(main)
