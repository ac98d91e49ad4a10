"""Mailbox: the receiving half of an address, bound to the node (and loop) that created it.

Invariants (all state is touched only on the node's loop thread):

* ``_queue`` holds messages in arrival order; it is created on the first queued message so an
  idle mailbox stays small (the benchmark measures bytes per idle mailbox).
* ``_waiters`` holds blocked receivers in the order they started waiting. A plain receiver is
  a bare future; a selective one is a :class:`_MatchWaiter`. An arriving message is offered to
  the waiters in order, and queued only if none takes it. A plain receiver waits only while
  the queue is empty, so while one waits the queue stays empty.
* A waiting ``receive_match`` tests each message once: the backlog when it starts, then each
  new message as it arrives. Nothing is ever rescanned, nothing spins.
* No message is lost to cancellation: a message handed to a receiver whose task is cancelled
  before it resumes is put back where it was (offered to the other waiters first). For a
  selective receiver, ``older`` counts the queued messages that arrived before the one it was
  handed; queue operations keep that count right until the receiver resumes.
* After ``close()`` the queue is empty, every waiter has failed with
  :class:`MailboxClosedError`, and every later receive raises it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any

from ._errors import Empty, MailboxClosedError
from ._ids import MailboxID
from ._messages import MailboxClosed

if TYPE_CHECKING:
    from ._address import Address
    from ._node import Node

__all__ = ["Mailbox"]


class _MatchWaiter:
    """A blocked ``receive_match``: its future, predicate and, once handed a message, ``older``."""

    __slots__ = ("future", "predicate", "older")

    def __init__(self, future: asyncio.Future[Any], predicate: Callable[[Any], object]) -> None:
        self.future = future
        self.predicate = predicate
        self.older = -1


def notify_closed(target: MailboxID, watcher: Any) -> None:
    """Send ``MailboxClosed(target)`` to ``watcher``; a local watcher stops tracking ``target``.

    The one way every close notice is sent (local close, remote CLOSED, node lost, watch on
    something already gone), so a watcher's ``_watching`` set never keeps a finished watch.
    """
    watcher.send(MailboxClosed(target))
    mbox = getattr(watcher, "_mbox", None)
    if mbox is not None and mbox._watching:
        mbox._watching.discard(target)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class Mailbox:
    """The receiving end of an :class:`~reign.Address`. Create with ``node.new_mailbox()``.

    Receives are for the node's event loop only. ``close()`` is safe from any thread.
    """

    __slots__ = (
        "_node", "id", "address", "_queue", "_waiters", "_claims", "_front_marker", "_closed",
        "_watchers", "_watching", "__weakref__",
    )

    def __init__(self, node: Node, mailbox_id: MailboxID) -> None:
        from ._address import Address

        self._node = node
        self.id = mailbox_id
        self.address: Address = Address(mailbox_id, node, self)
        self._queue: deque[Any] | None = None
        self._waiters: deque[Any] | None = None
        self._claims: list[_MatchWaiter] | None = None
        self._front_marker: _MatchWaiter | None = None
        self._closed = False
        self._watchers: set[Any] | None = None
        self._watching: set[MailboxID] | None = None  # targets this mailbox's address watches

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} queued"
        return f"<Mailbox {self.id} {state}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or the node stopped)."""
        return self._closed

    def __len__(self) -> int:
        q = self._queue
        return len(q) if q and not self._closed else 0

    # ---------------------------------------------------------------- delivery (loop thread)

    def _deliver(self, msg: Any) -> None:
        if self._closed:
            return
        waiters = self._waiters
        if waiters:
            while waiters:
                waiter = waiters[0]
                if type(waiter) is _MatchWaiter:
                    if self._offer_slow(msg):
                        return
                    break
                waiters.popleft()
                if not waiter.done():
                    waiter.set_result(msg)
                    return
        q = self._queue
        if q is None:
            q = self._queue = deque()
        q.append(msg)

    def _offer_slow(self, msg: Any) -> bool:
        """Offer ``msg`` to the waiters in order (some are selective). True if one took it."""
        waiters = self._waiters
        assert waiters is not None
        for waiter in list(waiters):
            if type(waiter) is _MatchWaiter:
                future = waiter.future
                if future.done():
                    waiters.remove(waiter)
                    continue
                try:
                    matched = waiter.predicate(msg)
                except Exception as exc:  # the caller's predicate failed: it gets the error
                    waiters.remove(waiter)
                    future.set_exception(exc)
                    continue
                if matched:
                    waiters.remove(waiter)
                    q = self._queue
                    waiter.older = len(q) if q else 0
                    if self._claims is None:
                        self._claims = []
                    self._claims.append(waiter)
                    future.set_result(msg)
                    return True
            else:
                waiters.remove(waiter)
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
        if self._waiters and self._offer_slow(msg):
            return
        q = self._queue
        if q is None:
            q = self._queue = deque()
        older = min(older, len(q))
        q.insert(older, msg)
        for claim in self._claims or ():
            if older <= claim.older:
                claim.older += 1

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

    async def receive(self, timeout: float | None = None) -> Any:
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
        loop = self._node._loop or self._node._bind_loop()
        future = loop.create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = deque()
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
            marker = self._front_marker = _MatchWaiter(None, None)  # type: ignore[arg-type]
            marker.older = 0
            if self._claims is None:
                self._claims = []
            self._claims.append(marker)  # queue operations keep its position right
            self._node._loop.call_soon(self._drop_front_marker)  # type: ignore[union-attr]
        self._put_back(msg, marker.older)

    def _drop_front_marker(self) -> None:
        marker, self._front_marker = self._front_marker, None
        if marker is not None and self._claims and marker in self._claims:
            self._claims.remove(marker)

    async def receive_match(self, pred: Callable[[Any], object], timeout: float | None = None) -> Any:
        """Wait for the first message for which ``pred(msg)`` is true; the others keep their order.

        Queued messages are tested once each, then every new message once as it arrives. If
        ``pred`` raises, the exception reaches the caller and the message stays queued.
        Timeouts, closing and cancellation behave as in :meth:`receive`.
        """
        if self._closed:
            raise MailboxClosedError(f"mailbox {self.id} is closed")
        q = self._queue
        if q:
            for index, msg in enumerate(q):
                if pred(msg):
                    del q[index]
                    if self._claims:
                        self._took_at(index)
                    return msg
        if timeout is not None and timeout <= 0:
            raise TimeoutError()
        loop = self._node._loop or self._node._bind_loop()
        waiter = _MatchWaiter(loop.create_future(), pred)
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = deque()
        waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter.future)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
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

    def close(self) -> None:
        """Close the mailbox; idempotent and safe from any thread.

        Queued messages are discarded; every waiting receive fails with
        :class:`MailboxClosedError`; every watcher is sent ``MailboxClosed(self.id)``; the
        mailbox's global names are dropped. Later sends to its address return ``False``.
        """
        if self._closed:
            return
        self._closed = True
        node = self._node
        thread_id = node._thread_id
        if thread_id is None or thread_id == get_ident():
            self._finish_close()
        else:
            node._loop.call_soon_threadsafe(self._finish_close)  # type: ignore[union-attr]

    def _finish_close(self) -> None:
        self._queue = None
        self._claims = None
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            future = waiter.future if type(waiter) is _MatchWaiter else waiter
            if not future.done():
                future.set_exception(MailboxClosedError(f"mailbox {self.id} was closed"))
        watchers, self._watchers = self._watchers, None
        watching, self._watching = self._watching, None
        object.__setattr__(self.address, "_mbox", None)  # sends now route by id and find nothing
        node = self._node
        node._mailbox_closed(self)
        for target in watching or ():  # like Erlang: a process's monitors end with it
            node._unlink(target, self.address)
        for watcher in watchers or ():
            notify_closed(self.id, watcher)

    # ---------------------------------------------------------------- watchers (loop thread)

    def _add_watcher(self, watcher: Any) -> None:
        if self._watchers is None:
            self._watchers = set()
        self._watchers.add(watcher)

    def _remove_watcher(self, watcher: Any) -> None:
        if self._watchers:
            self._watchers.discard(watcher)
