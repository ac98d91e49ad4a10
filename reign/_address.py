"""Address: the serializable, hashable handle of a mailbox (Erlang's PID).

Invariants:

* An Address compares and hashes by its :class:`MailboxID` only; the node it is bound to (the
  node that routes its sends) and the cached local mailbox are not part of its identity.
* ``send`` never blocks and never waits. On the bound node's loop thread a local delivery is
  complete when ``send`` returns; from any other thread it is handed to the loop with
  ``call_soon_threadsafe``, which keeps each thread's order.
* ``send`` returns ``False`` only when the target is known to be gone; ``True`` is not a
  delivery promise (a remote mailbox may close while the message is in flight).
"""

from __future__ import annotations

from threading import get_ident
from typing import TYPE_CHECKING, Any

from ._ids import MailboxID
from ._mailbox import _MatchWaiter

if TYPE_CHECKING:
    from ._mailbox import Mailbox
    from ._node import Node

__all__ = ["Address"]


class Address:
    """Where to send messages for one mailbox, usable from anywhere in the cluster.

    Get one from ``node.new_mailbox()``, from ``node.address(text_or_bytes)``, or inside a
    received message. Addresses are immutable, hashable and compare by :attr:`id`.
    """

    __slots__ = ("id", "_node", "_mbox")

    id: MailboxID
    _node: Node
    _mbox: Mailbox | None

    def __init__(self, mailbox_id: MailboxID, node: Node, mailbox: Mailbox | None = None) -> None:
        object.__setattr__(self, "id", mailbox_id)
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_mbox", mailbox)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Address is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Address is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is Address:
            return self.id == other.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"Address({self.id})"

    def __str__(self) -> str:
        return str(self.id)

    def __bytes__(self) -> bytes:
        return bytes(self.id)

    def __reduce__(self) -> Any:
        raise TypeError("reign addresses are never pickled; send bytes(addr) or str(addr)")

    def send(self, msg: Any) -> bool:
        """Queue ``msg`` for the mailbox; never blocks. Safe from any thread.

        Returns ``False`` when the target is known to be gone (a closed local mailbox, an
        address from an earlier incarnation of its node, a node that is not in the cluster),
        ``True`` otherwise. Raises :class:`reign.EncodeError` when a message bound for another
        node cannot be encoded.
        """
        mbox = self._mbox
        if mbox is None:
            return self._node._route(self.id, msg)
        if mbox._closed:
            return False
        node = mbox._node
        thread_id = node._thread_id
        if thread_id == get_ident() or thread_id is None:
            # Inlined fast paths of Mailbox._deliver: hand the message to a plain waiting
            # receiver, or append it when nobody waits.
            waiters = mbox._waiters
            if waiters:
                waiter = waiters[0]
                if type(waiter) is not _MatchWaiter and not waiter.done():
                    waiters.popleft()
                    waiter.set_result(msg)
                else:
                    mbox._deliver(msg)
            else:
                queue = mbox._queue
                if queue is None:
                    mbox._deliver(msg)
                else:
                    queue.append(msg)
        else:
            try:
                node._loop.call_soon_threadsafe(mbox._deliver, msg)  # type: ignore[union-attr]
            except RuntimeError:  # the node's loop is closed: the node is gone
                return False
        return True

    def on_close_notify(self, watcher: Address) -> None:
        """Ask for ``MailboxClosed(self.id)`` to be sent to ``watcher`` once this mailbox closes.

        Like Erlang's ``monitor``: the notice comes at once if the target is already closed,
        unknown, from an earlier incarnation, or on a node that is lost; and when the target's
        node is lost later. A watch on a node this node has never been connected to yet waits
        for that first connection (the mesh may still be forming). Registering the same watcher
        twice gives one notice. When the watcher's own mailbox closes, its watches end.
        Thread-safe.
        """
        if type(watcher) is not Address:
            raise TypeError(f"watcher must be an Address, not {type(watcher).__name__}")
        self._node._call_on_loop(self._node._link, self.id, watcher)

    def remove_notify(self, watcher: Address) -> None:
        """Cancel an :meth:`on_close_notify`; a notice already on its way may still arrive."""
        if type(watcher) is not Address:
            raise TypeError(f"watcher must be an Address, not {type(watcher).__name__}")
        self._node._call_on_loop(self._node._unlink, self.id, watcher)
