"""Messages and exit reasons the runtime itself produces (system messages).

Frozen, slotted dataclasses, registered with the codec under fixed wire names
(``reign.MailboxClosed``, ``reign.Exit``, ``reign.MultipleClaim``, ``reign.Crash``), with
``check_fields=True``: a received one whose fields are not of their annotated types (an ``id``
that is not a MailboxID) is a DecodeError, never delivered (``reason: Any`` is not checked).

*System messages* (:data:`SYSTEM_MESSAGES`: ``MailboxClosed``, ``Exit``, ``MultipleClaim``) come
only from the runtime: ``Address.send`` refuses one as the message itself (``TypeError``) and a
peer's MESSAGE frame that decodes to one is a protocol error, so a notice cannot be forged.
Inside another value (a tuple forwarding a notice, say) they travel like any registered type.

Exit reasons (Erlang's, spelled as strings): ``"normal"``, ``"shutdown"``, ``"killed"``,
``"noproc"``, ``"noconnection"``, a :class:`Crash`, or any encodable value given to
``close``/``exit``. ``"kill"`` is not a reason a mailbox ends with: ``exit(addr, "kill")`` ends the
target with ``"killed"``.
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass
from typing import Any

from .._errors import Failure
from .address import system_message
from .codec.types import register_type
from .ids import MailboxID

__all__ = [
    "MailboxClosed",
    "Exit",
    "MultipleClaim",
    "Crash",
    "SYSTEM_MESSAGES",
    "NORMAL",
    "SHUTDOWN",
    "KILL",
    "KILLED",
    "NOPROC",
    "NOCONNECTION",
    "MAX_TRACEBACK_CHARS",
]

NORMAL = "normal"
SHUTDOWN = "shutdown"
KILL = "kill"
KILLED = "killed"
NOPROC = "noproc"
NOCONNECTION = "noconnection"

#: Longest traceback text a :class:`Crash` carries: the innermost frames are kept. A deep
#: recursion's traceback runs to megabytes; 16 KiB keeps ~100 frames, enough to find the bug,
#: and keeps every notice of a crash well inside the smallest frame a spec allows (1 KiB
#: messages are the minimum, so the reason of a remote DOWN may be cut to fit: see the runtime).
MAX_TRACEBACK_CHARS = 16 * 1024


@system_message
@register_type(name="reign.MailboxClosed", check_fields=True)
@dataclass(frozen=True, slots=True)
class MailboxClosed:
    """Sent to a watcher when the mailbox ``id`` closes or its node is lost (Erlang ``'DOWN'``).

    ``reason`` is why: ``"normal"``, ``"shutdown"``, ``"killed"``, ``"noproc"`` (it was already
    gone when the watch was made), ``"noconnection"`` (its node was lost or is unreachable), a
    :class:`Crash`, or the value given to ``close``/``exit``.
    """

    id: MailboxID
    reason: Any = NORMAL


@system_message
@register_type(name="reign.Exit", check_fields=True)
@dataclass(frozen=True, slots=True)
class Exit:
    """An exit signal turned into a message (Erlang ``{'EXIT', From, Reason}``).

    Only a mailbox that traps exits (``mbox.trap_exits = True``) receives these: from a linked
    mailbox that closed (``id`` is it), or from ``reign.exit`` (``id`` is the calling process, or
    None when the caller was not a process).
    """

    id: MailboxID | None
    reason: Any


@system_message
@register_type(name="reign.MultipleClaim", check_fields=True)
@dataclass(frozen=True, slots=True)
class MultipleClaim:
    """Sent to every claimant of ``name`` when the name gains another claimant."""

    name: str


@register_type(name="reign.Crash", check_fields=True)
@dataclass(frozen=True, slots=True)
class Crash:
    """The exit reason of a process whose function raised: the exception's type name, its
    message and the formatted traceback (all ``str``, so the reason crosses nodes)."""

    type: str
    message: str
    traceback: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> Crash:
        """The reason for a process that ended with ``exc``."""
        text = "".join(_traceback.format_exception(exc))
        if len(text) > MAX_TRACEBACK_CHARS:
            text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        return cls(name, str(exc)[:MAX_TRACEBACK_CHARS], text)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


#: Messages only the runtime may produce: refused by ``Address.send`` and from peers.
SYSTEM_MESSAGES = frozenset({MailboxClosed, Exit, MultipleClaim})


def _failure_fields(failure: Failure) -> list[Any]:
    return [failure.type, failure.message, failure.payload]


def _failure_from_fields(fields: list[Any]) -> Failure:
    type_, message, payload = fields
    if type(type_) is not str or type(message) is not str:
        raise TypeError("a Failure's type and message are str")
    return Failure(type_, message, payload)


register_type(Failure, name="reign.Failure", to_fields=_failure_fields, from_fields=_failure_from_fields)
