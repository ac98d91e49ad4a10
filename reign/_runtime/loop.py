"""The loop binding of one node: which event loop and thread its state belongs to.

Every piece of a node's mutable state (mailboxes, monitors, registry, connections) is touched
on one thread, the thread of the loop the node is bound to. :meth:`LoopBinding.call` is the one
way code that may run on another thread gets there: it runs the function at once on the loop
thread (or before the node is bound to any loop, when everything is single-threaded), and hands
it to the loop with ``call_soon_threadsafe`` from any other thread, which keeps each thread's
order. Once the loop is closed nothing can reach the node's state any more: ``call`` then
returns False and does nothing, everywhere alike.

Hot paths may test :attr:`LoopBinding.thread_id` against ``threading.get_ident()`` themselves to
skip a call; they then fall back to :meth:`call` for every other case, so the behaviour off the
loop thread exists once (``tests/test_mailbox.py`` pins the mailbox's copy of the test).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from threading import get_ident
from typing import Any

__all__ = ["LoopBinding"]


class LoopBinding:
    """The loop (and its thread) a node is bound to; unbound until :meth:`bind`."""

    __slots__ = ("loop", "thread_id")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        #: ``threading.get_ident()`` of the loop's thread; None while unbound.
        self.thread_id: int | None = None

    def bind(self) -> asyncio.AbstractEventLoop:
        """Bind to the running loop unless bound to a live one already; returns the loop.

        Raises RuntimeError when called with no running loop while unbound.
        """
        loop = self.loop
        if loop is None or loop.is_closed():
            loop = asyncio.get_running_loop()
            self.loop = loop
            self.thread_id = get_ident()
        return loop

    def try_bind(self) -> None:
        """:meth:`bind` if a loop is running in this thread; otherwise stay unbound for now."""
        if self.loop is None:
            try:
                self.bind()
            except RuntimeError:
                pass

    def on_loop_thread(self) -> bool:
        """True on the loop's thread, and while unbound (everything is single-threaded then)."""
        thread_id = self.thread_id
        return thread_id is None or thread_id == get_ident()

    def call(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop thread: now if this is it, else soon.

        Returns False (and drops the call) when the loop is already closed: the node and
        everything it held are gone.
        """
        thread_id = self.thread_id
        if thread_id is None or thread_id == get_ident():
            fn(*args)
            return True
        loop = self.loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def require_loop_thread(self, what: str) -> asyncio.AbstractEventLoop:
        """The loop, for code that must run on it (awaiting); RuntimeError elsewhere."""
        thread_id = self.thread_id
        if thread_id is not None and thread_id != get_ident():
            raise RuntimeError(f"{what} must be awaited on the node's own loop")
        return self.bind()
