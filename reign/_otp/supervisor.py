"""Supervisors: a process that starts children, watches them and restarts them (supervisor.erl).

A :class:`Supervisor` is a :class:`~reign.GenServer` that traps exits and links to each child
it starts. The rules are OTP's:

* Children start in the order of their specs (each ``start`` returns once the child's ``init``
  finished) and stop in reverse order. If one fails to start, the ones started are stopped
  and ``Supervisor.start`` raises.
* When a child exits, its ``restart`` decides: ``"permanent"`` always restarts it,
  ``"transient"`` only after an abnormal exit (any reason but ``"normal"``, ``"shutdown"`` or
  ``("shutdown", x)``), ``"temporary"`` never (and the child is forgotten). The strategy
  decides who else restarts: ``one_for_one`` just that child, ``one_for_all`` all of them
  (the others are stopped first, in reverse order), ``rest_for_one`` it and the ones started
  after it, ``simple_one_for_one`` one template spec whose children are added by
  :meth:`Supervisor.start_child` with extra arguments.
* More than ``intensity`` restarts within ``period`` seconds: the supervisor stops all its
  children (reverse order) and exits with ``"shutdown"``; its own supervisor then decides.
* Stopping a child: ``reign.exit(child, "shutdown")``, then up to ``shutdown`` seconds for it to
  exit, then ``"kill"``; ``shutdown="brutal_kill"`` kills at once, ``"infinity"`` waits as long
  as it takes (the default for a child that is a supervisor, as in OTP).
* A child that fails to restart is tried again (each attempt counts as a restart), so a
  child that cannot start ends in the supervisor giving up, not in a silent hole.

The management calls (:meth:`~Supervisor.start_child`, ``terminate_child``,
``restart_child``, ``delete_child``, ``which_children``) are calls to the supervisor process:
errors come back as :class:`~reign.Failure` (``type`` ``"not_found"``, ``"running"``,
``"already_present"``, ``"bad_spec"``, ``"start_failed"``, ...) and the supervisor keeps running.
A :class:`ChildSpec` holds code, so it is handed over to a supervisor of the same node only.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._core.address import Address
from .._core.ids import MailboxID
from .._core.messages import KILL, NORMAL, SHUTDOWN, Exit
from .._errors import CallTimeout, Failure, ServerExited
from .._runtime.log import get_logger
from .._runtime.node import Node
from .._runtime.process import exit as exit_signal
from .gen_server import Caller, GenServer, _ask, _endpoint, call, call_with

__all__ = ["ChildSpec", "Supervisor", "STRATEGIES", "RESTARTS"]

_log = get_logger("reign.supervisor")

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one")
RESTARTS = ("permanent", "transient", "temporary")
#: The contract's defaults (Elixir's): at most 3 restarts in 5 seconds (OTP's supervisor
#: defaults to 1 in 5: pass ``intensity=1`` for that), and 5 s for a worker to shut down (OTP's).
DEFAULT_INTENSITY = 3
DEFAULT_PERIOD = 5.0
DEFAULT_SHUTDOWN = 5.0

Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one"]


@dataclass(frozen=True)
class ChildSpec:
    """How to start and manage one child (a plain-data child spec, as in OTP).

    ``start`` is a :class:`~reign.GenServer` subclass (started as ``start.start(node, *args,
    **kwargs)``, so ``kwargs={"name": ...}`` or ``{"global_name": ...}`` names it), a nested
    :class:`Supervisor` (same), or an ``async def fn(mbox, *args)`` run as a process.
    ``restart`` is ``"permanent"``, ``"transient"`` or ``"temporary"``; ``shutdown`` seconds to
    wait after ``"shutdown"`` before killing, or ``"brutal_kill"``, or ``"infinity"`` (None: 5 s
    for a worker, ``"infinity"`` for a supervisor). Raises ``ValueError``/``TypeError`` for
    anything else.
    """

    id: Any
    start: Any
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart = "permanent"
    shutdown: float | str | None = None

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise TypeError(f"a child id must be hashable, not {type(self.id).__name__}") from None
        start = self.start
        if not (isinstance(start, type) and issubclass(start, GenServer)) and not inspect.iscoroutinefunction(start):
            raise TypeError(
                f"ChildSpec.start must be a GenServer subclass, a Supervisor or an async function, not {start!r:.80}"
            )
        if not isinstance(self.args, tuple):
            object.__setattr__(self, "args", tuple(self.args))
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(f"ChildSpec.kwargs must be a mapping, not {type(self.kwargs).__name__}")
        if self.restart not in RESTARTS:
            raise ValueError(f"ChildSpec.restart must be one of {RESTARTS}, not {self.restart!r}")
        shutdown = self.shutdown
        if shutdown is None:
            shutdown = "infinity" if self.is_supervisor else DEFAULT_SHUTDOWN
        elif isinstance(shutdown, str):
            if shutdown not in ("brutal_kill", "infinity"):
                raise ValueError(f"ChildSpec.shutdown must be seconds, 'brutal_kill' or 'infinity', not {shutdown!r}")
        elif isinstance(shutdown, bool) or not isinstance(shutdown, (int, float)) or not shutdown > 0:
            raise ValueError(f"ChildSpec.shutdown must be seconds > 0, 'brutal_kill' or 'infinity', not {shutdown!r}")
        else:
            shutdown = float(shutdown)
        object.__setattr__(self, "shutdown", shutdown)

    @property
    def is_supervisor(self) -> bool:
        return isinstance(self.start, type) and issubclass(self.start, Supervisor)


class _Child:
    """A child the supervisor knows: its spec, its address while it runs, its extra args, and
    whether a failed restart of it waits to be tried again (supervisor.erl's ``restarting``)."""

    __slots__ = ("spec", "address", "extra", "retry")

    def __init__(self, spec: ChildSpec, extra: tuple[Any, ...] = ()) -> None:
        self.spec = spec
        self.address: Address | None = None
        self.extra = extra
        self.retry = False

    @property
    def key(self) -> Any:
        return self.spec.id


def _abnormal(reason: Any) -> bool:
    if type(reason) is str:
        return reason not in (NORMAL, SHUTDOWN)
    return not (type(reason) is tuple and len(reason) == 2 and reason[0] == SHUTDOWN)


@dataclass(frozen=True, slots=True)
class _TryAgain:
    """A restart that failed, to be tried again (supervisor.erl's ``try_again_restart``)."""

    child: int  # id() of the _Child


class Supervisor(GenServer):
    """A supervisor process; see the module header. Start with :meth:`start`."""

    _strategy: Strategy
    _intensity: int
    _period: float
    _children: list[_Child]
    _restarts: deque[float]

    @classmethod
    async def start(  # type: ignore[override]
        cls,
        node: Node,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        intensity: int = DEFAULT_INTENSITY,
        period: float = DEFAULT_PERIOD,
        name: str | None = None,
        global_name: str | None = None,
        link: Address | None = None,
    ) -> Address:
        """Start a supervisor of ``children`` on ``node``; returns its address once every child
        started (in order). Raises ValueError/TypeError for bad arguments and
        :class:`~reign.Failure` (``"start_failed"``) when a child fails to start (the ones
        started are stopped first)."""
        specs = list(children)
        _check_arguments(specs, strategy, intensity, period)
        return await super().start(
            node, specs, strategy, intensity, period, name=name, global_name=global_name, link=link
        )

    async def init(self, specs: list[ChildSpec], strategy: Strategy, intensity: int, period: float) -> None:
        self.trap_exits = True
        self._strategy = strategy
        self._intensity = intensity
        self._period = float(period)
        self._restarts = deque()
        self._template = specs[0] if strategy == "simple_one_for_one" else None
        self._children = []
        if self._template is not None:
            return
        for spec in specs:
            child = _Child(spec)
            self._children.append(child)
            try:
                await self._start(child)
            except Exception as exc:
                await self._stop_all()
                raise Failure("start_failed", f"child {spec.id!r} failed to start: {exc}", repr(spec.id)) from exc

    # --------------------------------------------------------------------- management API

    @staticmethod
    async def start_child(sup: Address, spec_or_args: ChildSpec | Iterable[Any]) -> Address:
        """Add and start a child: a :class:`ChildSpec`, or for ``simple_one_for_one`` the extra
        arguments appended to the template's. Returns the child's address."""
        arg: Any = spec_or_args if isinstance(spec_or_args, ChildSpec) else tuple(spec_or_args)
        return await _request(sup, ("start_child", arg))  # type: ignore[no-any-return]

    @staticmethod
    async def terminate_child(sup: Address, child_id: Any) -> None:
        """Stop the child ``child_id`` (its spec stays, for ``restart_child``; a temporary
        child is forgotten). For ``simple_one_for_one``, ``child_id`` is the child's address."""
        await _request(sup, ("terminate_child", child_id))

    @staticmethod
    async def restart_child(sup: Address, child_id: Any) -> Address:
        """Start again the stopped child ``child_id``; Failure ``"running"`` if it runs."""
        return await _request(sup, ("restart_child", child_id))  # type: ignore[no-any-return]

    @staticmethod
    async def delete_child(sup: Address, child_id: Any) -> None:
        """Forget the stopped child ``child_id``; Failure ``"running"`` if it runs."""
        await _request(sup, ("delete_child", child_id))

    @staticmethod
    async def which_children(sup: Address) -> list[tuple[Any, Address | None]]:
        """``(id, address or None)`` for each child, in start order (ids are None for
        ``simple_one_for_one``)."""
        return await _request(sup, ("which_children",))  # type: ignore[no-any-return]

    # --------------------------------------------------------------------- the server side

    async def handle_call(self, request: Any, caller: Caller) -> Any:
        if type(request) is not tuple or not request or type(request[0]) is not str:
            raise Failure("bad_request", f"not a supervisor request: {request!r:.100}")
        op = request[0]
        if op == "which_children":
            simple = self._template is not None
            return [(None if simple else c.key, c.address) for c in self._children]
        if len(request) != 2:
            raise Failure("bad_request", f"supervisor request {op!r} takes one argument")
        arg = request[1]
        if op == "start_child":
            return await self._start_new(arg)
        if op == "terminate_child":
            child = self._find(arg)
            child.retry = False  # a pending retry is cancelled: the child stays stopped
            if child.address is not None:
                await self._shutdown(child)
            if child.spec.restart == "temporary" or self._template is not None:
                self._children.remove(child)
            return None
        if op == "restart_child":
            child = self._find(arg)
            if child.address is not None:
                raise Failure("running", f"child {arg!r} is running")
            child.retry = False
            await self._start_or_fail(child)
            return child.address
        if op == "delete_child":
            child = self._find(arg)
            if child.address is not None:
                raise Failure("running", f"child {arg!r} is running")
            self._children.remove(child)
            return None
        raise Failure("bad_request", f"unknown supervisor request {op!r}")

    async def handle_info(self, msg: Any) -> None:
        if type(msg) is Exit and msg.id is not None:
            child = next((c for c in self._children if c.address is not None and c.address.id == msg.id), None)
            if child is not None:
                await self._child_exited(child, msg.reason)
            return
        if type(msg) is _TryAgain:
            child = next((c for c in self._children if id(c) == msg.child), None)
            if child is not None and child.retry and child.address is None:
                child.retry = False
                await self._restart(child)
            return
        await super().handle_info(msg)

    async def terminate(self, reason: Any) -> None:
        await self._stop_all()

    # --------------------------------------------------------------------- internals

    def _find(self, key: Any) -> _Child:
        if self._template is not None:
            for child in self._children:
                if child.address is not None and (child.address == key or child.address.id == key):
                    return child
        else:
            for child in self._children:
                if child.key == key:
                    return child
        raise Failure("not_found", f"no child {key!r:.100}")

    async def _start_new(self, arg: Any) -> Address:
        if self._template is not None:
            if isinstance(arg, ChildSpec):
                raise Failure("bad_spec", "a simple_one_for_one supervisor takes extra arguments, not a ChildSpec")
            child = _Child(self._template, tuple(arg))
        else:
            if not isinstance(arg, ChildSpec):
                raise Failure("bad_spec", f"start_child needs a ChildSpec, not {type(arg).__name__}")
            for existing in self._children:
                if existing.key == arg.id:
                    state = "already_started" if existing.address is not None else "already_present"
                    raise Failure(state, f"child {arg.id!r} is {state.replace('_', ' ')}")
            child = _Child(arg)
        self._children.append(child)
        try:
            await self._start_or_fail(child)
        except Failure:  # supervisor.erl saves a child only once it started
            self._children.remove(child)
            raise
        assert child.address is not None
        return child.address

    async def _start_or_fail(self, child: _Child) -> None:
        try:
            await self._start(child)
        except Exception as exc:
            raise Failure("start_failed", f"child {child.key!r} failed to start: {exc}") from exc

    async def _start(self, child: _Child) -> None:
        spec = child.spec
        args = spec.args + child.extra
        me = self.address
        if isinstance(spec.start, type):
            server: type[GenServer] = spec.start
            child.address = await server.start(self.node, *args, **dict(spec.kwargs), link=me)
        else:
            child.address = self.node.spawn(spec.start, *args, link=me)

    async def _child_exited(self, child: _Child, reason: Any) -> None:
        child.address = None
        restart = child.spec.restart
        if restart == "temporary" or (restart == "transient" and not _abnormal(reason)):
            if restart == "temporary" or self._template is not None:
                self._children.remove(child)
            return
        _log.info("supervisor.child_exited", supervisor=str(self.address), child=repr(child.key)[:100],
                  reason=repr(reason)[:200])
        await self._restart(child)

    async def _restart(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        restarts = self._restarts
        restarts.append(now)
        while restarts and restarts[0] <= now - self._period:
            restarts.popleft()
        if len(restarts) > self._intensity:
            _log.error("supervisor.shutdown", supervisor=str(self.address), reason="reached_max_restart_intensity",
                       intensity=self._intensity, period=self._period)
            self.stop(SHUTDOWN)  # terminate() stops the children in reverse order
            return
        strategy = self._strategy
        if strategy in ("one_for_one", "simple_one_for_one"):
            group = [child]
        else:
            index = self._children.index(child)
            group = list(self._children) if strategy == "one_for_all" else self._children[index:]
            for other in reversed(group):
                if other is not child and other.address is not None:
                    await self._shutdown(other)
            for other in group:  # a temporary child stopped for a sibling is not restarted
                if other is not child and other.spec.restart == "temporary":
                    self._children.remove(other)
            group = [c for c in group if c in self._children]
        for member in group:
            if member not in self._children or member.address is not None:
                continue
            try:
                await self._start(member)
            except Exception as exc:
                _log.error("supervisor.restart_failed", supervisor=str(self.address), child=repr(member.key)[:100],
                           error=type(exc).__name__, reason=str(exc)[:200])
                member.retry = True
                self.mailbox.deliver(_TryAgain(id(member)))
                return

    async def _stop_all(self) -> None:
        for child in reversed(self._children):
            if child.address is not None:
                await self._shutdown(child)

    async def _shutdown(self, child: _Child) -> None:
        """Stop one child as OTP does: unlink, watch, ``"shutdown"`` (or kill), wait, kill."""
        address = child.address
        assert address is not None
        child.address = None
        mbox = self.mailbox
        mbox.unlink(address)
        node = self.node
        shutdown = child.spec.shutdown
        if shutdown == "brutal_kill":
            await _end(node, address, KILL, None)
        else:
            timeout = None if shutdown == "infinity" else float(shutdown)  # type: ignore[arg-type]
            if not await _end(node, address, SHUTDOWN, timeout):
                _log.warning("supervisor.child_killed", supervisor=str(self.address), child=repr(child.key)[:100],
                             shutdown=shutdown)
                await _end(node, address, KILL, None)
        _drop_exit(mbox, address.id)


async def _end(node: Node, address: Address, reason: str, timeout: float | None) -> bool:
    """Send ``address`` an exit signal with ``reason`` and wait until it exited (True) or
    ``timeout`` passed (False)."""
    endpoint = _endpoint(node)
    try:
        await _ask(node, endpoint, address, -1, timeout, "shutdown of", lambda _: exit_signal(address, reason), None)
    except ServerExited:
        return True
    except CallTimeout:
        return False
    return True  # pragma: no cover - no reply has tag -1


def _drop_exit(mbox: Any, child: MailboxID) -> None:
    """Forget an ``Exit`` of ``child`` that arrived before the unlink took effect."""
    queued = []
    while len(mbox):
        msg = mbox.receive_nowait()
        if not (type(msg) is Exit and msg.id == child):
            queued.append(msg)
    for msg in queued:
        mbox.deliver(msg)


def _check_arguments(specs: list[Any], strategy: str, intensity: Any, period: Any) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if isinstance(intensity, bool) or not isinstance(intensity, int) or intensity < 0:
        raise ValueError(f"intensity must be an int >= 0, not {intensity!r}")
    if isinstance(period, bool) or not isinstance(period, (int, float)) or not period > 0:
        raise ValueError(f"period must be a number of seconds > 0, not {period!r}")
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be ChildSpecs, not {type(spec).__name__}")
    if strategy == "simple_one_for_one":
        if len(specs) != 1:
            raise ValueError(f"simple_one_for_one takes exactly one template ChildSpec, got {len(specs)}")
        return
    ids = [spec.id for spec in specs]
    duplicates = sorted({repr(i) for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"child ids must be unique: {', '.join(duplicates)}")


async def _request(sup: Address, request: tuple[Any, ...]) -> Any:
    """A management call; a request holding a ChildSpec (code) goes to a local supervisor only,
    handed to its mailbox as it is (never encoded, even on a ``check_messages`` node)."""
    if type(sup) is not Address:
        raise TypeError(f"a supervisor is an Address, not {type(sup).__name__}")
    if not any(isinstance(part, ChildSpec) for part in request):
        return await call(sup, request, timeout=None)
    node = sup.node
    mbox = node.local_mailbox(sup.id) if isinstance(node, Node) else None
    if mbox is None:
        if isinstance(node, Node) and node.is_local(sup.id):
            raise ServerExited("noproc", sup)
        raise ValueError("a ChildSpec holds code: start_child with one needs a supervisor on this node")
    return await call_with(sup, request, None, mbox.deliver)
