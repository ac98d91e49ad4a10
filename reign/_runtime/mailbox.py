"""Mailbox: the receiving half of an address, bound to the node (and loop) that created it.

Invariants (all state is touched only on the node's loop thread; :meth:`Mailbox.post` and
:meth:`Mailbox.close` get there through the node's :class:`~.loop.LoopBinding`):

* :meth:`Mailbox.deliver` is the one delivery path: local sends (through :meth:`post`),
  messages from peers (``reign._core.inbound``) and the runtime's own notices all end in it.
* ``_queue`` holds messages in arrival order; it is created on the first queued message so an
  idle mailbox stays small (the benchmark measures bytes per idle mailbox).
* ``_waiters`` holds blocked receivers in the order they started waiting. A plain receiver is
  a bare future; a selective one is a :class:`_MatchWaiter`. An arriving message is offered to
  the waiters in order, and queued only if none takes it. A plain receiver waits only while
  the queue is empty, so while one waits the queue stays empty.
* A waiting ``receive_match`` tests each message once: the backlog when it starts, then each
  new message as it arrives. Nothing is ever rescanned, nothing spins.
* Delivery never touches a waiter that is done. A predicate may do anything (close the
  mailbox, send to it, cancel its own task): after it returns, the waiter and the mailbox are
  checked again before the message is handed over, and a message for a mailbox that closed
  meanwhile is dropped, as every message to a closed mailbox is.
* No message is lost to cancellation: a message handed to a receiver whose task is cancelled
  before it resumes is put back where it was (offered to the other waiters first). For a
  selective receiver, ``older`` counts the queued messages that arrived before the one it was
  handed; queue operations keep that count right until the receiver resumes.
* After ``close(reason)`` the queue is empty, every waiter has failed with
  :class:`MailboxClosedError`, every watcher has been notified once (``MailboxClosed(id,
  reason)``), every linked mailbox has been sent an exit signal with ``reason``, the task of a
  process owning the mailbox has been cancelled, and every later receive raises it.
* Exit signals (:meth:`Mailbox.exit_signal`) follow Erlang: ``"kill"`` from ``reign.exit``
  cannot be trapped and ends the mailbox with ``"killed"``; otherwise a mailbox that traps exits
  receives :class:`~reign.Exit`, and one that does not ends with the signal's reason, except
  that ``"normal"`` is ignored (unless a process sends it to itself).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from threading import get_ident
from typing import Any, Protocol

from .._core.address import Address, Router, detach_local
from .._core.ids import MailboxID
from .._core.messages import KILL, KILLED, NORMAL, Exit, MailboxClosed
from .._errors import Empty, MailboxClosedError
from .loop import LoopBinding

__all__ = ["Mailbox", "MailboxHost", "Watcher"]


class Watcher(Protocol):
    """Something told when a mailbox closes: a local watcher mailbox, or a peer's watch."""

    def notify_down(self, target: MailboxID, reason: Any) -> None:
        """``target`` closed with ``reason`` (loop thread)."""
        ...


class MailboxHost(Router, Protocol):
    """What a mailbox needs from its node (``reign._runtime.node.Node``)."""

    @property
    def binding(self) -> LoopBinding:
        """The node's loop binding."""
        ...

    def mailbox_closed(self, mbox: Mailbox, watching: set[MailboxID], links: set[MailboxID], reason: Any) -> None:
        """``mbox`` closed with ``reason`` (loop thread): forget it, end the watches it made on
        ``watching``, and send each of ``links`` (the mailboxes it was linked to) an exit signal."""
        ...

    def link(self, mbox: Mailbox, target: MailboxID) -> None:
        """Link ``mbox`` and ``target`` (loop thread)."""
        ...

    def unlink(self, mbox: Mailbox, target: MailboxID) -> None:
        """Remove the link between ``mbox`` and ``target`` (loop thread)."""
        ...

    def check_reason(self, reason: Any) -> None:
        """Raise EncodeError if ``reason`` cannot cross to another node."""
        ...

    def address_for(self, mailbox_id: MailboxID) -> Address:
        """The Address of ``mailbox_id`` bound to the node."""
        ...


class _MatchWaiter:
    """A blocked ``receive_match``: its future, predicate and, once handed a message, ``older``."""

    __slots__ = ("future", "predicate", "older")

    def __init__(self, future: asyncio.Future[Any] | None, predicate: Callable[[Any], object] | None) -> None:
        self.future = future
        self.predicate = predicate
        self.older = -1


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class Mailbox:
    """The receiving end of an :class:`~reign.Address`. Create with ``node.new_mailbox()``.

    Receives are for the node's event loop only. ``close()`` is safe from any thread.
    """

    __slots__ = (
        "_host", "_binding", "id", "address", "_queue", "_waiters", "_claims", "_front_marker",
        "_closed", "_finished", "_deferred", "_watchers", "_watching", "_links", "_task", "_reason", "trap_exits",
        "__weakref__",
    )

    def __init__(self, host: MailboxHost, mailbox_id: MailboxID) -> None:
        self._host = host
        self._binding = host.binding
        self.id = mailbox_id
        self.address: Address = Address(mailbox_id, host, self)
        self._queue: deque[Any] | None = None
        self._waiters: list[Any] | None = None  # a list: there is rarely more than one
        self._claims: list[_MatchWaiter] | None = None
        self._front_marker: _MatchWaiter | None = None
        self._closed = False
        self._finished = False  # the close has been carried out on the loop (after _closed)
        self._deferred: list[Any] | None = None  # messages sent while a predicate runs
        self._watchers: set[Watcher] | None = None
        self._watching: set[MailboxID] | None = None  # targets this mailbox watches
        self._links: set[MailboxID] | None = None  # mailboxes linked to this one
        self._task: asyncio.Task[Any] | None = None  # the process owning it, if any
        self._reason: Any = None
        #: Erlang's ``process_flag(trap_exit, true)``: exit signals arrive as ``Exit`` messages.
        self.trap_exits = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} queued"
        return f"<Mailbox {self.id} {state}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or the node stopped)."""
        return self._closed

    def address_for(self, mailbox_id: MailboxID) -> Address:
        """The Address of ``mailbox_id`` bound to this mailbox's node."""
        return self._host.address_for(mailbox_id)

    @property
    def reason(self) -> Any:
        """The exit reason once closed (None while open)."""
        return self._reason

    def __len__(self) -> int:
        q = self._queue
        return len(q) if q and not self._closed else 0

    # ---------------------------------------------------------------- delivery

    def post(self, msg: Any) -> bool:
        """``Address.send`` for this mailbox: queue ``msg`` from any thread; False if closed.

        On the loop thread the message is queued before this returns; from another thread it
        is queued when the loop next runs (:meth:`LoopBinding.call`).
        """
        if self._closed:
            return False
        binding = self._binding
        if binding.thread_id == get_ident():  # LoopBinding.call's first case, inline
            # deliver()'s two common cases inline (pinned to it by tests/test_mailbox_races.py):
            # nobody waits and the queue exists, or a plain receiver waits.
            waiters = self._waiters
            if not waiters:
                q = self._queue
                if q is not None:
                    q.append(msg)
                    return True
            else:
                waiter = waiters[0]
                if type(waiter) is not _MatchWaiter and not waiter.done():
                    del waiters[0]
                    waiter.set_result(msg)
                    return True
            self.deliver(msg)
            return True
        return binding.call(self.deliver, msg)

    def deliver(self, msg: Any) -> None:
        """Queue ``msg`` or hand it to the first waiter that takes it (loop thread)."""
        if self._closed:
            return
        waiters = self._waiters
        if waiters:
            while waiters:
                waiter = waiters[0]
                if type(waiter) is _MatchWaiter:
                    self._offer_slow(msg, -1)
                    return
                del waiters[0]
                if not waiter.done():
                    waiter.set_result(msg)
                    return
        q = self._queue
        if q is None:
            q = self._queue = deque()
        q.append(msg)

    def _offer_slow(self, msg: Any, at: int) -> None:
        """Offer ``msg`` to the waiters in order (some are selective); if none takes it, queue
        it (at index ``at``, or at the end for -1). Predicates run arbitrary code: a message one
        of them sends to this mailbox is handled after ``msg`` (it was sent later), and a
        message for a mailbox a predicate closed is dropped."""
        deferred = self._deferred
        if deferred is not None:  # a predicate of ours is running: this message comes after
            deferred.append(msg)
            return
        self._deferred = deferred = []
        try:
            if not self._offer(msg):
                self._enqueue(msg, at)
        finally:
            self._deferred = None
        for later in deferred:
            self.deliver(later)

    def _enqueue(self, msg: Any, at: int) -> None:
        if self._closed:
            return
        q = self._queue
        if q is None:
            q = self._queue = deque()
        if at < 0:
            q.append(msg)
            return
        at = min(at, len(q))
        q.insert(at, msg)
        for claim in self._claims or ():
            if at <= claim.older:
                claim.older += 1

    def _offer(self, msg: Any) -> bool:
        """Offer ``msg`` to the waiters in order. True if one took it, or if the mailbox closed
        meanwhile (the message is dropped)."""
        waiters = self._waiters
        for waiter in list(waiters or ()):
            if type(waiter) is _MatchWaiter:
                future = waiter.future
                assert future is not None and waiter.predicate is not None
                if future.done():
                    self._forget_waiter(waiter)
                    continue
                try:
                    matched = waiter.predicate(msg)
                except Exception as exc:  # the caller's predicate failed: it gets the error
                    self._forget_waiter(waiter)
                    if not future.done():
                        future.set_exception(exc)
                    if self._closed:
                        return True
                    continue
                # The predicate ran arbitrary code: look again before acting on its answer.
                if self._closed:
                    return True
                if future.done() or waiter not in (self._waiters or ()):
                    continue
                if matched:
                    self._forget_waiter(waiter)
                    q = self._queue
                    waiter.older = len(q) if q else 0
                    if self._claims is None:
                        self._claims = []
                    self._claims.append(waiter)
                    future.set_result(msg)
                    return True
            else:
                self._forget_waiter(waiter)
                if not waiter.done():
                    waiter.set_result(msg)
                    return True
        return False

    def _took_at(self, index: int) -> None:
        """Keep pending claims' ``older`` counts right after the queue lost item ``index``."""
        for claim in self._claims or ():
            if index < claim.older:
                claim.older -= 1

    def _put_back(self, msg: Any, older: int) -> None:
        """A receiver was cancelled holding ``msg``: offer it again, else requeue at ``older``."""
        if self._closed:
            return
        if self._waiters:
            self._offer_slow(msg, max(older, 0))
        else:
            self._enqueue(msg, max(older, 0))

    # ---------------------------------------------------------------- receiving

    def receive_nowait(self) -> Any:
        """Return the oldest queued message at once.

        Raises :class:`reign.Empty` when none is queued, :class:`MailboxClosedError` when closed.
        """
        if self._closed:
            raise MailboxClosedError(f"mailbox {self.id} is closed")
        q = self._queue
        if q:
            if self._claims:
                self._took_at(0)
            return q.popleft()
        raise Empty(f"mailbox {self.id} has no message")

    async def receive(self, *, timeout: float | None = None) -> Any:
        """Wait for the oldest message and return it (FIFO).

        ``timeout`` is in seconds; on expiry the built-in :class:`TimeoutError` is raised, and a
        timeout of 0 or less checks once without waiting. Raises :class:`MailboxClosedError` if
        the mailbox is closed before or while waiting. Cancelling a waiting receive loses no
        message.
        """
        if self._closed:
            raise MailboxClosedError(f"mailbox {self.id} is closed")
        q = self._queue
        if q:
            if self._claims:
                self._took_at(0)
            return q.popleft()
        if timeout is not None and timeout <= 0:
            raise TimeoutError()
        loop = self._binding.loop or self._binding.bind()
        future = loop.create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(future)
        timer = None if timeout is None else loop.call_later(timeout, _expire, future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._put_back_at_front(future.result())
            else:
                self._forget_waiter(future)
            raise
        except TimeoutError:
            self._forget_waiter(future)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _put_back_at_front(self, msg: Any) -> None:
        """Requeue a message a cancelled plain receiver held. It arrived when the queue was
        empty, so it goes before everything queued, but after messages other cancelled plain
        receivers put back in this loop iteration: their handlers run in hand-out order."""
        marker = self._front_marker
        if marker is None:
            marker = self._front_marker = _MatchWaiter(None, None)
            marker.older = 0
            if self._claims is None:
                self._claims = []
            self._claims.append(marker)  # queue operations keep its position right
            self._binding.bind().call_soon(self._drop_front_marker)
        self._put_back(msg, marker.older)

    def _drop_front_marker(self) -> None:
        marker, self._front_marker = self._front_marker, None
        if marker is not None and self._claims and marker in self._claims:
            self._claims.remove(marker)

    async def receive_match(self, pred: Callable[[Any], object], *, timeout: float | None = None) -> Any:
        """Wait for the first message for which ``pred(msg)`` is true; the others keep their order.

        Queued messages are tested once each, then every new message once as it arrives. If
        ``pred`` raises, the exception reaches the caller and the message stays queued.
        Timeouts, closing and cancellation behave as in :meth:`receive`.
        """
        if self._closed:
            raise MailboxClosedError(f"mailbox {self.id} is closed")
        q = self._queue
        if q:
            # A snapshot: the predicate may send to this mailbox or receive from it.
            for index, msg in enumerate(list(q)):
                if pred(msg):
                    q = self._queue
                    if q is None:  # the predicate closed the mailbox
                        break
                    if index >= len(q) or q[index] is not msg:
                        index = next((i for i, m in enumerate(q) if m is msg), -1)
                        if index < 0:
                            continue  # the predicate itself received it
                    del q[index]
                    if self._claims:
                        self._took_at(index)
                    return msg
            if self._closed:  # a predicate closed the mailbox
                raise MailboxClosedError(f"mailbox {self.id} was closed")
        if timeout is not None and timeout <= 0:
            raise TimeoutError()
        loop = self._binding.loop or self._binding.bind()
        waiter = _MatchWaiter(loop.create_future(), pred)
        future = waiter.future
        assert future is not None
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _expire, future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                older = waiter.older
                self._drop_claim(waiter)
                self._put_back(future.result(), older)
            else:
                self._forget_waiter(waiter)
            raise
        except TimeoutError:
            self._forget_waiter(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if waiter.older >= 0:
                self._drop_claim(waiter)

    def _forget_waiter(self, waiter: Any) -> None:
        waiters = self._waiters
        if waiters:
            try:
                waiters.remove(waiter)
            except ValueError:
                pass

    def _drop_claim(self, waiter: _MatchWaiter) -> None:
        claims = self._claims
        if claims and waiter in claims:
            claims.remove(waiter)
        waiter.older = -1

    def __aiter__(self) -> Mailbox:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except MailboxClosedError:
            raise StopAsyncIteration from None

    # ---------------------------------------------------------------- closing

    def close(self, reason: Any = NORMAL) -> None:
        """Close the mailbox with ``reason`` (Erlang's ``exit(Reason)``); idempotent and safe from
        any thread.

        Queued messages are discarded; every waiting receive fails with
        :class:`MailboxClosedError`; every watcher is sent ``MailboxClosed(self.id, reason)``;
        every linked mailbox gets an exit signal with ``reason``; the mailbox's names are
        dropped; a process owning it is cancelled (closing its own mailbox ends a process, as
        ``exit/1`` does). Later sends to its address return ``False``. From another thread the
        rest happens when the loop next runs; if the loop is already closed, the node is gone
        and so is everything the mailbox was part of. Raises :class:`reign.EncodeError` (and
        closes nothing) when ``reason`` could not cross to another node.
        """
        if self._closed:
            return
        if type(reason) is not str or not reason.isascii():  # a lone surrogate cannot cross
            self._host.check_reason(reason)
        self.terminate(reason)

    def terminate(self, reason: Any, *, cancel_task: bool = True) -> None:
        """:meth:`close` without the check of ``reason`` (the runtime's own reasons); the
        process task is left running when ``cancel_task`` is False (it is ending anyway)."""
        if self._closed:
            return
        self._closed = True
        self._reason = reason
        task = self._task
        self._task = None
        if not cancel_task:
            task = None
        self._binding.call(self._finish_close, reason, task)

    def _finish_close(self, reason: Any, task: asyncio.Task[Any] | None) -> None:
        self._finished = True
        self._queue = None
        self._claims = None
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            future = waiter.future if type(waiter) is _MatchWaiter else waiter
            if future is not None and not future.done():
                future.set_exception(MailboxClosedError(f"mailbox {self.id} was closed"))
        watchers, self._watchers = self._watchers, None
        watching, self._watching = self._watching, None
        links, self._links = self._links, None
        detach_local(self.address)
        if task is not None and not task.done():
            task.cancel()
        self._host.mailbox_closed(self, watching or set(), links or set(), reason)
        for watcher in watchers or ():
            watcher.notify_down(self.id, reason)

    # ---------------------------------------------------------------- processes and exit signals

    def bind_task(self, task: asyncio.Task[Any]) -> None:
        """``task`` is the process owning this mailbox: it is cancelled when the mailbox closes."""
        self._task = task

    @property
    def task(self) -> asyncio.Task[Any] | None:
        """The task of the process owning this mailbox (None for a plain mailbox or once closed)."""
        return self._task

    def exit_signal(self, origin: MailboxID | None, reason: Any, linked: bool) -> None:
        """An exit signal from ``origin`` (loop thread): from a link if ``linked`` (the link is
        then gone), else from ``reign.exit``. See the module header for what it does."""
        if self._closed:
            return
        if linked and origin is not None and self._links:
            self._links.discard(origin)
        if not linked and type(reason) is str and reason == KILL:
            self.terminate(KILLED)
        elif self.trap_exits:
            self.deliver(Exit(origin, reason))
        elif type(reason) is str and reason == NORMAL:
            if not linked and origin == self.id:  # exit(self(), normal) ends the caller
                self.terminate(NORMAL)
        else:
            self.terminate(reason)

    def link(self, target: Address) -> None:
        """Link this mailbox and ``target`` (Erlang's ``link/1``), on any node.

        When either closes with a reason other than ``"normal"``, the other gets an exit signal
        with that reason (it closes with it, unless it traps exits). A target that is already
        gone or unknown sends this mailbox ``"noproc"`` at once; one on a lost or unreachable
        node, ``"noconnection"``. Linking twice is one link. Thread-safe.
        """
        if type(target) is not Address:
            raise TypeError(f"link needs an Address, not {type(target).__name__}")
        self._binding.call(self._host.link, self, target.id)

    def unlink(self, target: Address) -> None:
        """Remove the link with ``target`` (both sides); no-op if there is none. Thread-safe."""
        if type(target) is not Address:
            raise TypeError(f"unlink needs an Address, not {type(target).__name__}")
        self._binding.call(self._host.unlink, self, target.id)

    def links_add(self, other: MailboxID) -> bool:
        """Record a link to ``other`` (runtime bookkeeping); False if the close was carried out."""
        if self._finished:
            return False
        if self._links is None:
            self._links = set()
        self._links.add(other)
        return True

    def links_discard(self, other: MailboxID) -> None:
        """Forget the link to ``other`` (runtime bookkeeping)."""
        if self._links:
            self._links.discard(other)

    @property
    def links(self) -> frozenset[MailboxID]:
        """The ids of the mailboxes linked to this one (a snapshot)."""
        return frozenset(self._links or ())

    # ---------------------------------------------------------------- monitors (loop thread)

    def add_watcher(self, watcher: Watcher) -> bool:
        """``watcher`` is told when this mailbox closes; False (and nothing kept) if that
        already happened. A watch made before a close from another thread was carried out
        still learns the close's reason."""
        if self._finished:
            return False
        if self._watchers is None:
            self._watchers = set()
        self._watchers.add(watcher)
        return True

    def remove_watcher(self, watcher: Watcher) -> None:
        """Cancel :meth:`add_watcher`."""
        if self._watchers:
            self._watchers.discard(watcher)

    def watch_started(self, target: MailboxID) -> None:
        """This mailbox now watches ``target`` (its watches end when it closes)."""
        if self._closed:
            return
        if self._watching is None:
            self._watching = set()
        self._watching.add(target)

    def watch_ended(self, target: MailboxID) -> None:
        """This mailbox no longer watches ``target``."""
        if self._watching:
            self._watching.discard(target)

    def notify_down(self, target: MailboxID, reason: Any) -> None:
        """As a watcher: ``target`` closed, so ``MailboxClosed(target, reason)`` arrives here once."""
        if self._watching:
            self._watching.discard(target)
        self.deliver(MailboxClosed(target, reason))
