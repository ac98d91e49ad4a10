"""Timers: a message sent later (Erlang's ``erlang:send_after`` / ``timer:send_after``).

:func:`send_after` schedules ``address.send(msg)`` on the running loop after ``seconds``;
:meth:`Timer.cancel` stops it if it has not fired. A timer holds nothing but its handle and
the message; one whose target is gone by then sends into nothing, as a send to a gone process
does. A failure at firing time (a message that cannot be encoded for a remote target) is
logged as ``timer.send_failed``: there is no caller left to raise it to.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._core.address import Address, is_system_message
from .._runtime.log import get_logger

__all__ = ["Timer", "send_after"]

_log = get_logger("reign.timers")


class Timer:
    """A pending :func:`send_after`."""

    __slots__ = ("_handle", "_fired", "_cancelled")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self._cancelled = False

    def cancel(self) -> bool:
        """Stop the timer; True if it had not fired (so the message will never be sent)."""
        if self._fired or self._cancelled:
            return False
        self._cancelled = True
        if self._handle is not None:
            self._handle.cancel()
        return True

    @property
    def fired(self) -> bool:
        """Whether the message was sent."""
        return self._fired

    def schedule(self, loop: asyncio.AbstractEventLoop, seconds: float, address: Address, msg: Any) -> None:
        """Arm the timer (once, by :func:`send_after`)."""
        self._handle = loop.call_later(max(0.0, float(seconds)), self._fire, address, msg)

    def _fire(self, address: Address, msg: Any) -> None:
        self._fired = True
        try:
            address.send(msg)
        except Exception as exc:
            _log.error("timer.send_failed", target=str(address), error=type(exc).__name__, reason=str(exc)[:200])

    def __repr__(self) -> str:
        state = "fired" if self._fired else "cancelled" if self._cancelled else "pending"
        return f"<reign.Timer {state}>"


def send_after(seconds: float, address: Address, msg: Any) -> Timer:
    """Send ``msg`` to ``address`` after ``seconds`` (0 or less: on the next loop iteration).

    Must be called in a running event loop (the timer runs on it). Raises ``TypeError`` for a
    non-Address or for a system message (the runtime's notices cannot be sent).
    """
    if type(address) is not Address:
        raise TypeError(f"send_after needs an Address, not {type(address).__name__}")
    if is_system_message(msg):
        raise TypeError(f"{type(msg).__name__} is a system message: only the runtime sends it")
    loop = asyncio.get_running_loop()
    timer = Timer()
    timer.schedule(loop, seconds, address, msg)
    return timer
