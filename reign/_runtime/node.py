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
* Local names (Erlang's ``register``): ``_local_names`` maps name -> open mailbox and
  ``_name_of`` the reverse; a mailbox has at most one local name, and loses it when it closes.
* Exit reasons cross nodes: ``close``/``exit`` refuse a reason that cannot be encoded
  (:meth:`Node.check_reason`), so a remote watcher or link always learns the real reason.
* With ``check_messages`` (or ``REIGN_CHECK_MESSAGES=1``) every local send is encoded and
  decoded like a remote one, so a message that could not cross nodes fails on one node too.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .._config.spec import ClusterSpec
from .._core.address import Address, is_system_message
from .._core.codec import decode, encode
from .._core.ids import MAX_NODE_ID, MailboxID, new_incarnation, parse_mailbox_id
from .._core.messages import NOCONNECTION, NOPROC, SHUTDOWN
from .._core.naming import checked_name
from .._errors import ClusterSpecError, EncodeError, RegistrationError
from .cluster import Cluster, PeerStatistics
from .log import get_logger
from .loop import LoopBinding
from .mailbox import Mailbox
from .names import Names
from .process import ProcessFunction, current_process, start_process

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
_M = TypeVar("_M", bound=Mailbox)

#: Environment variable that turns ``check_messages`` on for every node created while it is set.
CHECK_MESSAGES_ENV = "REIGN_CHECK_MESSAGES"
#: Seconds ``stop()`` waits for process tasks to finish after cancelling them: a process that
#: swallows cancellation must not hang the node's shutdown.
STOP_GRACE = 5.0


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
        check_messages: bool | None = None,
    ) -> None:
        if type(node_id) is not int or not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id must be an int in 0..{MAX_NODE_ID}, got {node_id!r}")
        self._id = node_id
        self._incarnation = new_incarnation()
        self._binding = LoopBinding()
        self._serials = itertools.count(1)
        self._mailboxes: dict[int, Mailbox] = {}
        #: ``mailbox_by_serial(serial)``: the open mailbox of this incarnation with ``serial``, or
        #: None (the receive path: the table's own ``get``, one C call per message).
        self.mailbox_by_serial: Callable[[int], Mailbox | None] = self._mailboxes.get
        self._local_names: dict[str, Mailbox] = {}
        self._name_of: dict[Mailbox, str] = {}
        if check_messages is None:
            check_messages = os.environ.get(CHECK_MESSAGES_ENV, "") not in ("", "0")
        self._check_messages = check_messages
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

    @property
    def check_messages(self) -> bool:
        """Whether local sends are encoded and decoded like remote ones (see the module header)."""
        return self._check_messages

    # ---------------------------------------------------------------- mailboxes

    def new_mailbox(self) -> tuple[Address, Mailbox]:
        """Create a mailbox on this node; returns ``(address, mailbox)``.

        Raises :class:`RuntimeError` after the node was stopped.
        """
        mbox = self.create_mailbox(_CheckedMailbox if self._check_messages else Mailbox)
        return mbox.address, mbox

    def create_mailbox(self, cls: type[_M]) -> _M:
        """A new mailbox of this node of class ``cls`` (a Mailbox subclass: the OTP layer's
        reply endpoints). Raises RuntimeError after the node was stopped."""
        if self._stopped:
            raise RuntimeError(f"node {self._id} is stopped; it creates no more mailboxes")
        self._binding.try_bind()
        serial = next(self._serials)
        mbox = cls(self, MailboxID(self._id, self._incarnation, serial))
        self._mailboxes[serial] = mbox
        return mbox

    def spawn(self, fn: ProcessFunction, *args: Any, link: Address | None = None) -> Address:
        """Start a process: ``fn(mbox, *args)`` runs as a task that owns a new mailbox.

        Returns the process's address at once; ``fn`` starts on a later loop iteration. With
        ``link`` the process is linked to that address before ``fn`` starts (``spawn_link``).
        The process exits with ``"normal"`` when ``fn`` returns, a :class:`reign.Crash` when it
        raises, ``"shutdown"`` when the node stops; an exit signal ends it as Erlang's would.
        Must be called on the node's loop (RuntimeError otherwise, and after stop).
        """
        return self.spawn_process(fn, args, link=link)[0]

    def spawn_process(
        self, fn: ProcessFunction, args: tuple[Any, ...], *, link: Address | None = None
    ) -> tuple[Address, Mailbox, asyncio.Task[None]]:
        """:meth:`spawn`, also returning the process's mailbox and task (for the OTP layer)."""
        loop = self._binding.require_loop_thread("spawn()")
        if self._stopped:
            raise RuntimeError(f"node {self._id} is stopped; it starts no more processes")
        if not callable(fn):  # before the mailbox exists: a refused spawn leaves nothing open
            raise TypeError(f"a process function must be callable, not {type(fn).__name__}")
        if link is not None and type(link) is not Address:
            raise TypeError(f"link must be an Address, not {type(link).__name__}")
        address, mbox = self.new_mailbox()
        task = start_process(loop, mbox, fn, args)
        if link is not None:
            mbox.link(link)
        return address, mbox, task

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


    def is_local(self, mailbox_id: MailboxID) -> bool:
        """Whether ``mailbox_id`` names a mailbox of this node and incarnation (open or not)."""
        return mailbox_id.node == self._id and mailbox_id.incarnation == self._incarnation

    def add_close_listener(self, fn: Callable[[Mailbox], object]) -> None:
        """Call ``fn(mbox)`` on the loop whenever one of this node's mailboxes closes."""
        self._close_listeners.append(fn)

    def mailbox_closed(self, mbox: Mailbox, watching: set[MailboxID], links: set[MailboxID], reason: Any) -> None:
        """A mailbox of this node closed (loop thread): forget it, end its watches, signal its
        links."""
        self._mailboxes.pop(mbox.id.serial, None)
        name = self._name_of.pop(mbox, None)
        if name is not None:
            del self._local_names[name]
        for fn in self._close_listeners:
            fn(mbox)
        for target in watching:  # like Erlang: a process's monitors end with it
            self._demonitor(target, mbox)
        origin = mbox.id
        for other in links:
            if other.node == self._id:
                linked = self.local_mailbox(other)
                if linked is not None:
                    linked.exit_signal(origin, reason, True)
            elif self._cluster is not None:
                self._cluster.link_exit(origin, other, reason)

    def check_reason(self, reason: Any) -> None:
        """Raise :class:`reign.EncodeError` if ``reason`` could not cross to another node."""
        encode(reason)

    # ---------------------------------------------------------------- links and exit signals

    def link(self, mbox: Mailbox, target: MailboxID) -> None:
        """Link ``mbox`` (ours) and ``target`` (loop thread); see ``Mailbox.link``."""
        if mbox.closed or target == mbox.id:
            return
        if target.node == self._id:
            other = self.local_mailbox(target)
            if other is None or not other.links_add(mbox.id):
                mbox.exit_signal(target, NOPROC, True)
            else:
                mbox.links_add(target)
        elif self._cluster is None:
            mbox.exit_signal(target, NOCONNECTION, True)
        else:
            self._cluster.link(mbox, target)

    def unlink(self, mbox: Mailbox, target: MailboxID) -> None:
        """Remove the link between ``mbox`` and ``target`` (loop thread)."""
        mbox.links_discard(target)
        if target.node == self._id:
            other = self.local_mailbox(target)
            if other is not None:
                other.links_discard(mbox.id)
        elif self._cluster is not None:
            self._cluster.unlink(mbox, target)

    def exit_signal(self, target: MailboxID, reason: Any) -> None:
        """Send ``target`` an exit signal with ``reason`` from the calling process (``reign.exit``).

        The origin is the process this code runs in (None outside processes). A target that is
        gone is ignored, as in Erlang. Any thread; raises :class:`reign.EncodeError` for a
        reason that could not cross nodes.
        """
        if type(reason) is not str or not reason.isascii():  # a lone surrogate cannot cross
            self.check_reason(reason)
        me = current_process()
        origin = me.id if me is not None and self.is_local(me.id) else None
        self._binding.call(self._exit_signal, target, origin, reason)

    def _exit_signal(self, target: MailboxID, origin: MailboxID | None, reason: Any) -> None:
        if target.node == self._id:
            mbox = self.local_mailbox(target)
            if mbox is not None:
                mbox.exit_signal(origin, reason, False)
        elif self._cluster is not None:
            self._cluster.send_exit(target, origin, reason)

    # ---------------------------------------------------------------- local names

    def register(self, name: str, address: Address) -> None:
        """Register ``address`` (an open mailbox of this node) under the local ``name``.

        Erlang's ``register/2``: a name has one owner, a mailbox at most one name, and the
        name is dropped when the mailbox closes. Raises :class:`reign.RegistrationError`
        saying which rule was broken (name taken, mailbox already named, closed or not on
        this node, bad name). Must be called on the node's loop.
        """
        self._binding.require_loop_thread("register()")
        try:
            name = checked_name(name)
        except ValueError as exc:
            raise RegistrationError(str(exc)) from None
        if type(address) is not Address:
            raise RegistrationError(f"only an Address can be registered, not {type(address).__name__}")
        mbox = self.local_mailbox(address.id)
        if mbox is None or mbox.closed:
            raise RegistrationError(f"{address} is not an open mailbox of node {self._id}; cannot register it as {name!r}")
        owner = self._local_names.get(name)
        if owner is not None:
            if owner is mbox:  # Erlang's register/2 refuses this too (badarg)
                raise RegistrationError(f"{address} is already registered as {name!r}")
            raise RegistrationError(f"the name {name!r} is already registered to {owner.id}")
        previous = self._name_of.get(mbox)
        if previous is not None:
            raise RegistrationError(f"{address} is already registered as {previous!r}")
        self._local_names[name] = mbox
        self._name_of[mbox] = name

    def unregister(self, name: str) -> None:
        """Drop the local ``name``; RegistrationError if it is not registered (Erlang: badarg)."""
        self._binding.require_loop_thread("unregister()")
        mbox = self._local_names.pop(name, None) if isinstance(name, str) else None
        if mbox is None:
            raise RegistrationError(f"no mailbox is registered as {name!r:.80} on node {self._id}")
        del self._name_of[mbox]

    def whereis(self, name: str) -> Address | None:
        """The address registered as the local ``name``, or None."""
        mbox = self._local_names.get(name) if isinstance(name, str) else None
        return None if mbox is None else mbox.address

    def registered(self) -> list[str]:
        """The local names, sorted (Erlang's ``registered/0``)."""
        return sorted(self._local_names)

    def mailbox_by_name(self, name: str) -> Mailbox | None:
        """The open mailbox registered locally as ``name`` (the receive path of NAMED frames)."""
        return self._local_names.get(name)

    def send_named(self, name: str, msg: Any, *, node: int | None = None) -> bool:
        """Send ``msg`` to the mailbox registered as ``name`` on node ``node`` (this node if None).

        Erlang's ``{Name, Node} ! Msg``. Locally, False when no mailbox has that name. To another
        node it is ``True`` when it was queued for it (the name is resolved there; an unknown
        name drops the message, as in Erlang), False for a node that is not a peer or is gone.
        Raises :class:`reign.EncodeError` for a message that cannot cross nodes, ValueError for a
        bad name, and ``TypeError`` for a system message (as ``Address.send`` does). Any thread.
        """
        if is_system_message(msg):
            raise TypeError(f"{type(msg).__name__} is a system message: only the runtime sends it")
        name = checked_name(name)  # the same rule wherever the name is resolved
        if node is None or node == self._id:
            mbox = self._local_names.get(name)
            return False if mbox is None else mbox.post(msg)
        if self._cluster is None:
            return False
        return self._cluster.send_named(node, name, msg)

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
        self.monitor_from(target, watcher)

    def monitor_from(self, target: MailboxID, watcher: Mailbox) -> None:
        """``watcher`` (an open mailbox of ours) watches ``target`` (loop thread)."""
        watcher.watch_started(target)
        if target.node == self._id:
            mbox = self.local_mailbox(target)
            if mbox is None or not mbox.add_watcher(watcher):
                watcher.notify_down(target, NOPROC)
        elif self._cluster is None:
            watcher.notify_down(target, NOCONNECTION)
        else:
            self._cluster.monitor(target, watcher)

    def _demonitor_by_id(self, target: MailboxID, watcher_id: MailboxID) -> None:
        watcher = self._mailboxes.get(watcher_id.serial)
        if watcher is not None:
            watcher.watch_ended(target)
            self._demonitor(target, watcher)

    def demonitor_from(self, target: MailboxID, watcher: Mailbox) -> None:
        """Cancel :meth:`monitor_from` (loop thread)."""
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
        """Close every mailbox with ``"shutdown"`` (ending every process), then every
        connection. Waits up to :data:`STOP_GRACE` seconds for the processes' tasks to end.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        mailboxes = list(self._mailboxes.values())
        processes = [task for task in (mbox.task for mbox in mailboxes) if task is not None and not task.done()]
        for mbox in mailboxes:
            mbox.terminate(SHUTDOWN)
        if processes:
            await asyncio.wait(processes, timeout=STOP_GRACE)
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


class _CheckedMailbox(Mailbox):
    """A mailbox of a ``check_messages`` node: local sends are encoded and decoded first, so
    the receiver gets a copy made as another node would make it."""

    __slots__ = ()

    def post(self, msg: Any) -> bool:
        if self.closed:
            return False
        return super().post(wire_copy(msg, self.address_for))


def wire_copy(msg: Any, address_for: Callable[[MailboxID], Address]) -> Any:
    """``msg`` as another node would receive it (``check_messages``): encoded, then decoded
    with addresses bound by ``address_for``. Raises EncodeError saying so if it cannot cross."""
    try:
        payload = encode(msg)
    except EncodeError as exc:
        raise EncodeError(f"{exc} (check_messages: this message could not cross nodes)") from None
    return decode(payload, address_for)


def no_clustering(*, check_messages: bool | None = None) -> Node:
    """A node with id 0 and no network: every local feature works; other nodes are unreachable.

    ``check_messages``: see :class:`Node` (default: the ``REIGN_CHECK_MESSAGES`` environment).
    """
    return Node(0, check_messages=check_messages)


def create_from_spec(spec: ClusterSpec | Mapping[str, Any], node_id: int, *, check_messages: bool | None = None) -> Node:
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
    return Node(node_id, spec, check_messages=check_messages)


def create_from_spec_file(path: str | os.PathLike[str], node_id: int, *, check_messages: bool | None = None) -> Node:
    """:func:`create_from_spec` with the spec loaded (and validated) from a JSON file."""
    return create_from_spec(ClusterSpec.load(path), node_id, check_messages=check_messages)


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` to completion on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at run time
        return asyncio.run(main)
    return uvloop.run(main)
