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
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["get_logger"]


def get_logger(name: str) -> Any:
    """A structlog logger for ``name`` (``"reign.cluster"``, ...) that writes to ``logging``."""
    return structlog.wrap_logger(logging.getLogger(name))
