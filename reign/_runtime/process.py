"""Processes: an asyncio task that owns a mailbox, and ends when either ends (Erlang's spawn).

:func:`start_process` runs ``fn(mbox, *args)`` as a task bound to ``mbox``:

* ``fn`` starts on a later loop iteration, never inside ``spawn``; an exit signal that arrives
  before it first runs ends the process without running any of ``fn`` (the task is cancelled
  before its first step).
* The process exits with ``"normal"`` when ``fn`` returns, with a :class:`~reign.Crash` when it
  raises (logged as ``process.crashed``), with ``"shutdown"`` when its node stops or its task
  is cancelled by anything else; its mailbox closes with that reason, so watchers and links on
  every node learn it.
* When the mailbox is closed first (an exit signal, ``mbox.close(reason)``, ``"kill"``) the
  mailbox's reason stands and the task is cancelled: the process ends at its next ``await``.

:func:`current_process` is Erlang's ``self()`` for code running in a process's task (or in a
task it started, which inherits its context).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.address import Address
from .._core.messages import NORMAL, SHUTDOWN, Crash
from .log import get_logger
from .mailbox import Mailbox

__all__ = ["current_process", "exit", "start_process", "ProcessFunction"]

_log = get_logger("reign.process")

ProcessFunction = Callable[..., Awaitable[object]]

_current: contextvars.ContextVar[Mailbox | None] = contextvars.ContextVar("reign_process", default=None)


def current_process() -> Mailbox | None:
    """The mailbox of the process this code runs in, or None outside any process."""
    return _current.get()


def start_process(loop: asyncio.AbstractEventLoop, mbox: Mailbox, fn: ProcessFunction, args: tuple[Any, ...]) -> asyncio.Task[None]:
    """Run ``fn(mbox, *args)`` as the process owning ``mbox``; returns its task (already bound)."""
    if not callable(fn):
        raise TypeError(f"a process function must be callable, not {type(fn).__name__}")
    context = contextvars.copy_context()
    context.run(_current.set, mbox)
    task = loop.create_task(_run(mbox, fn, args), context=context)  # unnamed: a name costs ~100 bytes
    mbox.bind_task(task)
    return task


async def _run(mbox: Mailbox, fn: ProcessFunction, args: tuple[Any, ...]) -> None:
    try:
        await fn(mbox, *args)
    except asyncio.CancelledError:
        mbox.terminate(SHUTDOWN, cancel_task=False)  # nothing if an exit signal closed it first
        raise
    except Exception as exc:
        if not mbox.closed:
            reason = Crash.from_exception(exc)
            _log.error("process.crashed", process=str(mbox.id), error=reason.type, reason=reason.message)
            mbox.terminate(reason, cancel_task=False)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: the process ends, and so does the program
        mbox.terminate(Crash.from_exception(exc), cancel_task=False)
        raise
    else:
        mbox.terminate(NORMAL, cancel_task=False)


def exit(address: Address, reason: Any) -> None:
    """Send ``address`` an exit signal with ``reason`` (Erlang's ``exit(Pid, Reason)``).

    From any thread, to a mailbox on any node. A target that does not trap exits ends with
    ``reason`` (``"normal"`` is ignored, except by a process sending it to itself); one that
    traps receives ``Exit(sender, reason)`` where ``sender`` is the calling process's id (None
    outside processes). ``"kill"`` cannot be trapped: the target ends with ``"killed"``. A
    target that is gone is ignored. Raises ``TypeError`` for a non-Address and
    :class:`reign.EncodeError` for a reason that could not cross nodes.
    """
    if type(address) is not Address:
        raise TypeError(f"exit needs an Address, not {type(address).__name__}")
    address.node.exit_signal(address.id, reason)
