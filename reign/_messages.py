"""Messages the library itself sends to mailboxes.

Both are frozen, slotted dataclasses, registered with the codec under fixed wire names
(``reign.MailboxClosed``, ``reign.MultipleClaim``) so they cross nodes like user messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._ids import MailboxID

__all__ = ["MailboxClosed", "MultipleClaim"]


@dataclass(frozen=True, slots=True)
class MailboxClosed:
    """Sent to a watcher when the mailbox ``id`` closes or its node is lost (Erlang ``DOWN``)."""

    id: MailboxID


@dataclass(frozen=True, slots=True)
class MultipleClaim:
    """Sent to every claimant of ``name`` when the name gains another claimant."""

    name: str
