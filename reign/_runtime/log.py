"""How reign logs: structlog events, delivered through the standard library's ``logging``.

A library never configures logging for its user. So every logger here is structlog's API
(stable event names, key-value fields) wrapped around a standard-library logger named
``reign.*`` (:func:`get_logger`):

* a program that configures nothing sees only warnings and errors, rendered by structlog's
  default processors and printed to stderr by ``logging``'s last-resort handler; nothing ever
  goes to stdout;
* a program that configures ``logging`` (handlers, levels per ``reign.*`` logger) gets reign's
  events there, like any library's;
* a program that configures structlog gets its processors applied to reign's events too, and
  ``structlog.testing.capture_logs()`` sees them (the processors are looked up when a logger
  is first used, not fixed here).

Events that someone outside the cluster can cause at will (a TLS handshake that fails, a
connection dropped before HELLO, an accept that fails, ...) go through a :class:`RateLimitedLog`:
at most :data:`LOG_BURST` events of one name per :data:`LOG_PERIOD` seconds are logged in full,
the rest are counted and reported as one ``<event>.suppressed`` event (``suppressed=N``,
``period=...``) when the period ends. So a flood of bad connections costs a bounded number of
log lines, never one per connection (logging is synchronous: an unread pipe behind stderr would
otherwise block the event loop, issue 13 item 2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["LOG_BURST", "LOG_PERIOD", "RateLimitedLog", "get_logger"]

#: Events of one name logged in full per period; later ones in the period are only counted.
#: Ten shows an operator the first few sources and reasons of a burst in full.
LOG_BURST = 10
#: Seconds per rate-limiting period. With LOG_BURST this caps a flood at about one line per
#: second per event name plus one summary per period: ~11 lines (~2 KiB) per 10 s, so even a
#: stderr pipe nobody reads (64 KiB on Linux) takes minutes, not the ~300 connections it took
#: with a line per connection, to fill.
LOG_PERIOD = 10.0


def get_logger(name: str) -> Any:
    """A structlog logger for ``name`` (``"reign.cluster"``, ...) that writes to ``logging``."""
    return structlog.wrap_logger(logging.getLogger(name))


class _Window:
    __slots__ = ("start", "logged", "suppressed", "level")

    def __init__(self, start: float, level: str) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0
        self.level = level


class RateLimitedLog:
    """Logs through ``log`` at most ``burst`` events of each name per ``period`` seconds
    (default :data:`LOG_BURST` per :data:`LOG_PERIOD`).

    :meth:`warning` / :meth:`info` / :meth:`error` take the same arguments as structlog's and
    return True if the event was logged, False if it was only counted. The count of a period's
    suppressed events is logged as ``<event>.suppressed`` (same level; fields ``suppressed``
    and ``period``) when the period ends: by a timer on the running event loop if there is one,
    else at the next event of that name or the next :meth:`flush`. Event names are the code's
    own constants, so the per-name state is bounded. Loop thread only (not thread-safe).
    """

    def __init__(
        self,
        log: Any,
        *,
        burst: int | None = None,
        period: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        burst = LOG_BURST if burst is None else burst  # read at construction: tests may patch
        period = LOG_PERIOD if period is None else period
        if burst < 0 or period <= 0:
            raise ValueError(f"burst must be >= 0 and period > 0, got {burst!r}, {period!r}")
        self.log = log
        self.burst = burst
        self.period = period
        self.clock = clock
        self.windows: dict[str, _Window] = {}
        self.timer: asyncio.TimerHandle | None = None

    def info(self, event: str, **fields: Any) -> bool:
        return self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> bool:
        return self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> bool:
        return self._emit("error", event, fields)

    def suppressed(self) -> dict[str, int]:
        """Events counted but not yet reported, by name (for tests and statistics)."""
        return {name: w.suppressed for name, w in self.windows.items() if w.suppressed}

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> bool:
        now = self.clock()
        window = self.windows.get(event)
        if window is None or now - window.start >= self.period:
            if window is not None:
                self._report(event, window)
            window = self.windows[event] = _Window(now, level)
        if window.logged < self.burst:
            window.logged += 1
            getattr(self.log, level)(event, **fields)
            return True
        window.suppressed += 1
        if window.suppressed == 1:
            self._arm(window.start + self.period - now)
        return False

    def _report(self, event: str, window: _Window) -> None:
        if window.suppressed:
            getattr(self.log, window.level)(
                f"{event}.suppressed", suppressed=window.suppressed, period=self.period
            )
            window.suppressed = 0

    def _arm(self, delay: float) -> None:
        if self.timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: reported at the next event of that name or flush()
        self.timer = loop.call_later(max(delay, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.flush(ended_only=True)

    def flush(self, *, ended_only: bool = False) -> None:
        """Report every suppressed count now (``ended_only``: only of periods that ended)."""
        now = self.clock()
        pending_start: float | None = None
        for event, window in list(self.windows.items()):
            if not ended_only or now - window.start >= self.period:
                self._report(event, window)
                if now - window.start >= self.period:
                    del self.windows[event]
            elif window.suppressed:
                pending_start = window.start if pending_start is None else min(pending_start, window.start)
        if pending_start is not None:
            self._arm(pending_start + self.period - now)

    def close(self) -> None:
        """Report what is suppressed and cancel the timer (the owner is stopping)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.flush()
