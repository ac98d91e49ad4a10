"""gen_server: a process that serves calls, casts and other messages through callbacks.

Erlang's ``gen_server`` in Python. A subclass of :class:`GenServer` defines ``init``,
``handle_call``, ``handle_cast``, ``handle_info`` and ``terminate``;
``await Server.start(node, *args)`` spawns it and returns once ``init`` finished;
:func:`call`, :func:`cast` and :func:`stop` talk to it from anywhere in the cluster.

Messages (registered with the codec, so calls cross nodes): ``Call(request, reply_to, tag)``,
``Cast(msg)``, ``Reply(tag, value)``, ``StopRequest(reason)``. Anything else a server receives
goes to ``handle_info``, in arrival order with the calls and casts.

How a call works (``gen.erl``'s, with the reply channel made cheap):

* Each calling task has, per node, one *reply endpoint*: a mailbox of the caller's node that
  only ever receives replies to that task's calls and the ``MailboxClosed`` of the server it
  watches. So a call never scans the caller's own mailbox: its cost does not depend on the
  caller's backlog. The endpoint closes when the task ends.
* The endpoint monitors the server (and keeps watching it for the next call to the same
  server: a loop of calls to one server sends no monitor traffic). Each call carries a fresh
  ``tag``; a reply with another tag is a late reply to a call that gave up, and is dropped:
  a later call never sees it.
* The call returns the reply's value, raises it if it is a :class:`~reign.Failure`, raises
  :class:`~reign.ServerExited` with the server's exit reason if the monitor fires first
  (``"noproc"`` for a server that was already gone, ``"noconnection"`` for a lost node), and
  :class:`~reign.CallTimeout` after ``timeout``. A process calling itself gets
  :class:`~reign.SelfCallError` at once.

Server semantics (``gen_server.erl``): a handler that raises :class:`~reign.Failure` answers the
call with it and the server keeps running (in ``handle_cast``/``handle_info`` the failure is
logged); any other exception crashes the server: ``terminate(Crash)`` runs, the server exits
with the :class:`~reign.Crash` (logged as ``gen_server.crashed``) and its callers get
``ServerExited``. ``terminate(reason)`` also runs for ``self.stop``/:func:`stop`, and for an
``Exit`` from the parent (the ``link`` given to ``start``, a supervisor) when the server traps
exits; a server killed by an exit signal it does not trap ends without ``terminate``, as in
Erlang.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .._core.address import Address
from .._core.codec.types import register_type
from .._core.ids import MailboxID
from .._core.messages import NORMAL, Crash, Exit, MailboxClosed
from .._errors import CallTimeout, Failure, MailboxClosedError, SelfCallError, ServerExited
from .._runtime.log import get_logger
from .._runtime.mailbox import Mailbox
from .._runtime.node import Node, wire_copy
from .._runtime.process import current_process

if TYPE_CHECKING:
    from .._runtime.names import Names

__all__ = [
    "GenServer",
    "NOREPLY",
    "Caller",
    "call",
    "cast",
    "stop",
    "Call",
    "Cast",
    "Reply",
    "StopRequest",
    "DEFAULT_CALL_TIMEOUT",
]

_log = get_logger("reign.gen_server")

#: Seconds ``call`` and ``stop`` wait by default: Erlang's ``gen_server:call/2`` default (5000 ms).
DEFAULT_CALL_TIMEOUT = 5.0

_S = TypeVar("_S", bound="GenServer")


class _NoReply:
    """The type of :data:`NOREPLY`."""

    __slots__ = ()
    _instance: ClassVar[_NoReply | None] = None

    def __new__(cls) -> _NoReply:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "reign.NOREPLY"

    def __reduce__(self) -> str:
        return "NOREPLY"


#: Returned by ``handle_call``: no reply now; the server replies later with ``caller.reply``.
NOREPLY = _NoReply()


# ------------------------------------------------------------------------------ messages


# The protocol's records are plain slotted dataclasses, not frozen ones: a frozen dataclass sets
# each field through object.__setattr__, ~3x the cost, and a call makes three of them. Nothing
# mutates them after construction.


@register_type(name="reign.gen_server.Call")
@dataclass(slots=True)
class Call:
    """A call request: answer ``Reply(tag, value)`` to ``reply_to``."""

    request: Any
    reply_to: Address
    tag: int


@register_type(name="reign.gen_server.Cast")
@dataclass(slots=True)
class Cast:
    """A cast: no answer."""

    msg: Any


@register_type(name="reign.gen_server.Reply")
@dataclass(slots=True)
class Reply:
    """The answer to the call tagged ``tag``; a :class:`~reign.Failure` value is raised at the caller."""

    tag: int
    value: Any


@register_type(name="reign.gen_server.Stop")
@dataclass(slots=True)
class StopRequest:
    """``reign.stop``: run ``terminate(reason)`` and exit with ``reason``."""

    reason: Any


@register_type(name="reign.gen_server.Caller")
@dataclass(slots=True, eq=False)
class Caller:
    """Who made a call (Erlang's ``From``): ``handle_call`` gets one, and may keep it to answer
    later with :meth:`reply` (after returning :data:`NOREPLY`). Hashable and comparable (by
    both fields), and may be sent to another process, which can answer in the server's place."""

    reply_to: Address
    tag: int

    def __eq__(self, other: object) -> bool:
        if type(other) is not Caller:
            return NotImplemented
        return self.tag == other.tag and self.reply_to == other.reply_to

    def __hash__(self) -> int:
        return hash((self.reply_to, self.tag))

    def reply(self, value: Any) -> bool:
        """Answer the call with ``value`` (a :class:`~reign.Failure` is raised at the caller).

        Returns what ``Address.send`` returns; a caller that gave up drops the late reply.
        """
        if isinstance(value, Failure):
            value = _plain(value)
        return self.reply_to.send(Reply(self.tag, value))


# ------------------------------------------------------------------------------ the behaviour


class GenServer:
    """Base class of gen_servers. Override the callbacks you need; see the module header.

    Inside the callbacks: :attr:`address`, :attr:`node`, :attr:`mailbox`, :attr:`trap_exits`
    and :meth:`stop`. A subclass must be constructible with no arguments (``init`` is the
    constructor that runs in the server's process).
    """

    # The runtime's state of a running server (prefixed so subclasses do not collide with it).
    _reign_mailbox: Mailbox
    _reign_node: Node
    _reign_parent: MailboxID | None
    _reign_stop: tuple[Any] | None

    # --------------------------------------------------------------------- callbacks

    async def init(self, *args: Any, **kwargs: Any) -> None:
        """Set up the server's state. Raising here makes ``start`` raise it (the server never ran)."""

    async def handle_call(self, request: Any, caller: Caller) -> Any:
        """Answer a call: the return value is the reply (or :data:`NOREPLY`). Default: crash,
        as a gen_server without the callback does."""
        raise NotImplementedError(f"{type(self).__qualname__} does not handle calls (got {request!r:.100})")

    async def handle_cast(self, msg: Any) -> None:
        """Act on a cast. Default: crash, as a gen_server without the callback does."""
        raise NotImplementedError(f"{type(self).__qualname__} does not handle casts (got {msg!r:.100})")

    async def handle_info(self, msg: Any) -> None:
        """Act on any other message (``MailboxClosed``, ``Exit``, timers, plain sends).
        Default: log it (``gen_server.unexpected_message``) and carry on, as OTP does."""
        _log.warning("gen_server.unexpected_message", server=str(self.address), message=repr(msg)[:200])

    async def terminate(self, reason: Any) -> None:
        """Clean up before the server exits with ``reason``."""

    # --------------------------------------------------------------------- inside the server

    @property
    def address(self) -> Address:
        """This server's address."""
        return self._reign_mailbox.address

    @property
    def node(self) -> Node:
        """The node this server runs on."""
        return self._reign_node

    @property
    def mailbox(self) -> Mailbox:
        """This server's mailbox (for ``link``/``unlink``; the server loop does the receiving)."""
        return self._reign_mailbox

    @property
    def trap_exits(self) -> bool:
        """Whether exit signals arrive as ``Exit`` messages in ``handle_info``."""
        return self._reign_mailbox.trap_exits

    @trap_exits.setter
    def trap_exits(self, value: bool) -> None:
        self._reign_mailbox.trap_exits = bool(value)

    def stop(self, reason: Any = NORMAL) -> None:
        """Stop after the current callback: its reply (if any) is sent first, then
        ``terminate(reason)`` runs and the server exits with ``reason``."""
        self._reign_stop = (reason,)

    # --------------------------------------------------------------------- starting

    @classmethod
    async def start(
        cls: type[_S],
        node: Node,
        *args: Any,
        name: str | None = None,
        global_name: str | None = None,
        link: Address | None = None,
        **kwargs: Any,
    ) -> Address:
        """Spawn the server on ``node``, run ``init(*args, **kwargs)`` in it, return its address.

        With ``name`` it registers locally (Erlang's ``{local, Name}``; a taken name makes
        ``start`` raise :class:`~reign.RegistrationError` and the server never runs), with
        ``global_name`` globally, both before ``init``. With ``link`` it is linked to that
        address before anything runs, and that address is its *parent* (a supervisor).
        Re-raises what ``init`` raised; raises :class:`~reign.ServerExited` if the server was
        ended before ``init`` finished, or with the reason ``init`` gave ``self.stop`` (OTP's
        ``{stop, Reason}``: the server serves nothing and ``terminate`` does not run). Must be
        awaited on the node's loop.
        """
        loop = node.binding.require_loop_thread(f"{cls.__qualname__}.start()")
        started: asyncio.Future[None] = loop.create_future()
        parent = link.id if link is not None else None
        server = cls()
        address, mbox, task = node.spawn_process(
            functools.partial(cls._reign_serve, server), (node, args, kwargs, name, global_name, parent, started),
            link=link,
        )

        def ended(_: asyncio.Task[None]) -> None:
            if not started.done():
                started.set_exception(ServerExited(mbox.reason, address))

        task.add_done_callback(ended)
        try:
            await started
        finally:
            task.remove_done_callback(ended)  # an idle server keeps nothing of its start
        return address

    # --------------------------------------------------------------------- the server process

    async def _reign_serve(
        self,
        mbox: Mailbox,
        node: Node,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        global_name: str | None,
        parent: MailboxID | None,
        started: asyncio.Future[None] | None,
    ) -> None:
        """The server process (one coroutine: each frame an idle server keeps costs memory):
        register, run ``init``, then serve messages until a stop or a crash."""
        self._reign_mailbox = mbox
        self._reign_node = node
        self._reign_parent = parent
        self._reign_stop = None
        assert started is not None
        try:
            if name is not None:
                node.register(name, mbox.address)
            if global_name is not None:
                names: Names = node.names
                names.register(global_name, mbox.address)
            await self.init(*args, **kwargs)
        except Exception as exc:
            if not started.done():
                started.set_exception(exc)
            mbox.terminate(Crash.from_exception(exc), cancel_task=False)
            return
        stop = self._reign_stop
        if stop is not None:  # self.stop() in init: OTP's {stop, Reason} (start fails, terminate does not run)
            started.set_exception(ServerExited(stop[0], mbox.address))
            mbox.terminate(stop[0], cancel_task=False)
            return
        started.set_result(None)
        started = args = kwargs = None  # type: ignore[assignment]  # nothing of the start stays alive
        receive = mbox.receive
        while True:
            try:
                msg = await receive()
            except MailboxClosedError:  # closed under us (node stop): the mailbox's reason stands
                return
            kind = type(msg)
            try:
                if kind is Call:
                    try:
                        result = await self.handle_call(msg.request, Caller(msg.reply_to, msg.tag))
                    except Failure as failure:
                        result = _plain(failure)
                    if result is not NOREPLY:
                        msg.reply_to.send(Reply(msg.tag, result))
                elif kind is Cast:
                    try:
                        await self.handle_cast(msg.msg)
                    except Failure as failure:
                        _log.warning("gen_server.cast_failed", server=str(mbox.id), failure=repr(failure)[:200])
                elif kind is StopRequest:
                    self._reign_stop = (msg.reason,)
                elif kind is Exit and parent is not None and msg.id == parent:
                    self._reign_stop = (msg.reason,)  # the parent (supervisor) says exit
                else:
                    try:
                        await self.handle_info(msg)
                    except Failure as failure:
                        _log.warning("gen_server.info_failed", server=str(mbox.id), failure=repr(failure)[:200])
            except Exception as exc:
                reason: Any = Crash.from_exception(exc)
                _log.error("gen_server.crashed", server=str(mbox.id), error=reason.type, reason=reason.message)
                await self._reign_terminate(reason)
                mbox.terminate(reason, cancel_task=False)
                return
            stop = self._reign_stop
            if stop is not None:
                await self._reign_terminate(stop[0])
                mbox.terminate(stop[0], cancel_task=False)
                return

    async def _reign_terminate(self, reason: Any) -> None:
        try:
            await self.terminate(reason)
        except Exception as exc:  # the server exits with its reason anyway; say what went wrong
            _log.error("gen_server.terminate_failed", server=str(self.address),
                       error=type(exc).__name__, reason=str(exc)[:200])


def _plain(failure: Failure) -> Failure:
    """The Failure a caller gets: a subclass (which has no wire form) becomes a plain Failure
    with the same fields, so a remote caller gets it as a local one would."""
    if type(failure) is Failure:
        return failure
    return Failure(failure.type, failure.message, failure.payload)


# ------------------------------------------------------------------------------ call, cast, stop


class _Endpoint(Mailbox):
    """The reply channel of one task on one node (see the module header): a mailbox that
    queues nothing. The answer the current call waits for (its reply, or the end of its server)
    goes straight to the call's future; anything else is a late reply of a call that gave up,
    or the end of a server no call waits on (then the watch is over), and is dropped.

    Timeouts use one timer per endpoint, re-armed only when it fires early (a loop of calls
    pushes the deadline later and later), instead of one timer per call.
    """

    __slots__ = ("pending", "watching", "loop", "deadline", "timer", "timer_at", "checked")

    def __init__(self, host: Any, mailbox_id: MailboxID) -> None:
        super().__init__(host, mailbox_id)
        #: the node checks messages (check_messages): replies are copied as a remote one would be
        self.checked: bool = host.check_messages
        #: (future, tag, server id) of the call waiting, if any
        self.pending: tuple[asyncio.Future[Any], int, MailboxID] | None = None
        self.watching: MailboxID | None = None
        self.loop: asyncio.AbstractEventLoop = host.binding.bind()
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def post(self, msg: Any) -> bool:
        if self.checked and not self.closed:
            msg = wire_copy(msg, self.address_for)
        return super().post(msg)

    def deliver(self, msg: Any) -> None:
        pending = self.pending
        kind = type(msg)
        if kind is MailboxClosed and msg.id == self.watching:
            self.watching = None  # the watch is over: the next call to it watches again
        if pending is not None and (
            (kind is Reply and msg.tag == pending[1]) or (kind is MailboxClosed and msg.id == pending[2])
        ):
            self.pending = None
            future = pending[0]
            if not future.done():
                future.set_result(msg)

    def wait(self, tag: int, server: MailboxID, timeout: float | None) -> asyncio.Future[Any]:
        """A future for the answer to the call ``tag`` to ``server``; TimeoutError after ``timeout``."""
        future = self.loop.create_future()
        self.pending = (future, tag, server)
        if timeout is None:
            self.deadline = None
            return future
        deadline = self.loop.time() + timeout
        self.deadline = deadline
        if self.timer is None or deadline < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(deadline, self.expire)
            self.timer_at = deadline
        return future

    def expire(self) -> None:
        self.timer = None
        pending, deadline = self.pending, self.deadline
        if pending is None or deadline is None:
            return
        if self.loop.time() >= deadline:
            self.pending = None
            if not pending[0].done():
                pending[0].set_exception(TimeoutError())
        else:  # a later call moved the deadline: sleep until then
            self.timer = self.loop.call_at(deadline, self.expire)
            self.timer_at = deadline

    def forget(self) -> None:
        """The call gave up (cancelled): an answer arriving later is dropped."""
        self.pending = None

    def close(self, reason: Any = "normal") -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().close(reason)


#: task -> node -> endpoint; an entry goes (its endpoints closed) when its task ends.
_ENDPOINTS: dict[asyncio.Task[Any], dict[Node, _Endpoint]] = {}
#: The last (task, node, endpoint) used: a loop of calls in one task finds it without a lookup.
_last: tuple[asyncio.Task[Any], Node, _Endpoint] | None = None
_TAGS = itertools.count(1)
_current_task = asyncio.current_task


def _close_endpoints(task: asyncio.Task[Any]) -> None:
    global _last
    if _last is not None and _last[0] is task:
        _last = None
    for endpoint in (_ENDPOINTS.pop(task, None) or {}).values():
        endpoint.close()


def _endpoint(node: Node) -> _Endpoint:
    """The calling task's reply endpoint on ``node`` (created on first use)."""
    global _last
    loop = node.binding.loop
    task = _current_task(loop) if loop is not None else None
    cached = _last
    if cached is not None and cached[0] is task and cached[1] is node and not cached[2].closed:
        return cached[2]
    loop = node.binding.require_loop_thread("reign.call")
    task = _current_task(loop)
    if task is None:  # pragma: no cover - call is a coroutine, so it always runs in a task
        raise RuntimeError("reign.call must run in a task of the node's loop")
    per_node = _ENDPOINTS.get(task)
    if per_node is None:
        per_node = _ENDPOINTS[task] = {}
        task.add_done_callback(_close_endpoints)
    endpoint = per_node.get(node)
    if endpoint is None or endpoint.closed:
        endpoint = per_node[node] = node.create_mailbox(_Endpoint)
    _last = (task, node, endpoint)
    return endpoint


def _node_of(server: Address, what: str) -> Node:
    if type(server) is not Address:
        raise TypeError(f"{what} needs an Address, not {type(server).__name__}")
    node = server.node
    if not isinstance(node, Node):  # pragma: no cover - every Address is bound to a Node
        raise TypeError(f"{server} is not bound to a reign node")
    return node


def _watch(node: Node, endpoint: _Endpoint, server: MailboxID) -> None:
    """Make ``endpoint`` watch ``server`` (moving its monitor from the server it watched)."""
    watching = endpoint.watching
    if watching is not None:
        node.demonitor_from(watching, endpoint)
    endpoint.watching = server
    node.monitor_from(server, endpoint)


async def _ask(
    node: Node, endpoint: _Endpoint, server: Address, tag: int, timeout: float | None, what: str,
    send: Callable[[Any], object], msg: Any,
) -> Any:
    """Send ``msg`` with ``send`` and return the Reply tagged ``tag``; ServerExited if
    ``server`` ends first (or is gone already); CallTimeout after ``timeout``.

    The answer is awaited before the watch is made, so a watch that fires at once (the server
    is gone, its node is lost) is the answer.
    """
    future = endpoint.wait(tag, server.id, timeout)
    sid = server.id
    watching = endpoint.watching
    if watching is not sid and watching != sid:
        _watch(node, endpoint, sid)
    send(msg)  # if the server is gone, the watch says why
    try:
        msg = await future
    except TimeoutError:
        raise CallTimeout(f"{what} {server}: no answer within {timeout:g} s") from None
    finally:
        endpoint.forget()
    if type(msg) is MailboxClosed:
        raise ServerExited(msg.reason, server)
    return msg


def call(server: Address, request: Any, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Coroutine[Any, Any, Any]:
    """Call the gen_server at ``server`` with ``request``; ``await`` it for the reply.

    Raises :class:`~reign.Failure` when the server answers with one, :class:`~reign.ServerExited`
    (with the server's exit reason) when it is gone or exits before replying,
    :class:`~reign.CallTimeout` after ``timeout`` seconds (None: wait as long as it lives),
    :class:`~reign.SelfCallError` when a process calls itself, :class:`~reign.EncodeError`
    for a request that cannot reach the server's node, ``TypeError`` for a non-Address.
    """
    if type(server) is not Address:
        raise TypeError(f"call needs an Address, not {type(server).__name__}")
    return call_with(server, request, timeout, server.send)


async def call_with(
    server: Address, request: Any, timeout: float | None, send: Callable[[Call], object]
) -> Any:
    """:func:`call`, handing the request over with ``send`` (the supervisor gives a ChildSpec,
    which holds code, straight to a mailbox of its node). This is the hot path of every call."""
    node = server.node
    me = current_process()
    if me is not None and me.id == server.id:
        raise SelfCallError(f"process {me.id} called itself: that could only deadlock")
    if not isinstance(node, Node):  # pragma: no cover - every Address is bound to a Node
        raise TypeError(f"{server} is not bound to a reign node")
    endpoint = _endpoint(node)
    tag = next(_TAGS)
    reply = await _ask(node, endpoint, server, tag, timeout, "call to", send, Call(request, endpoint.address, tag))
    value = reply.value
    if isinstance(value, Failure):
        raise value
    return value


def cast(server: Address, msg: Any) -> bool:
    """Send ``msg`` to the gen_server at ``server`` for ``handle_cast``; never waits.

    Returns what ``Address.send`` returns (False: the server is known to be gone).
    """
    if type(server) is not Address:
        raise TypeError(f"cast needs an Address, not {type(server).__name__}")
    return server.send(Cast(msg))


async def stop(server: Address, reason: Any = NORMAL, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> None:
    """Stop the gen_server (or supervisor) at ``server``: it runs ``terminate(reason)`` and
    exits with ``reason``; returns once it is gone (Erlang's ``gen_server:stop``).

    Raises :class:`~reign.ServerExited` with ``"noproc"`` if it was already gone, and with
    the reason it exited with if that is not ``reason`` (killed meanwhile, ``"noconnection"``:
    its node was lost), :class:`~reign.CallTimeout` past ``timeout``, :class:`~reign.EncodeError` for a reason that
    could not cross nodes.
    """
    node = _node_of(server, "stop")
    me = current_process()
    if me is not None and me.id == server.id:
        raise SelfCallError(f"process {me.id} asked to stop itself and wait: use self.stop()")
    node.binding.require_loop_thread("reign.stop")
    if type(reason) is not str:
        node.check_reason(reason)
    endpoint = _endpoint(node)
    try:  # no reply has tag -1: only the end of the server answers
        await _ask(node, endpoint, server, -1, timeout, "stop of", server.send, StopRequest(reason))
    except ServerExited as exited:
        if exited.reason != reason:  # proc_lib:stop: only the reason asked for is success
            raise
