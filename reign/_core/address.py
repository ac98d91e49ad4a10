"""Address: the serializable, hashable handle of a mailbox (Erlang's PID).

An Address is a value: a :class:`~reign.MailboxID` plus the node that routes its sends. It
holds no I/O of its own, so the codec (sans-IO) can build and recognise it; what ``send``
does is decided by the objects it is bound to, through two narrow seams:

* :class:`Router` (the node): routes by id, and registers or cancels monitors;
* :class:`LocalTarget` (the mailbox, for an address of a mailbox of the same node):
  ``post(msg)``, the one local delivery path, safe from any thread.

Invariants:

* An Address compares and hashes by its :class:`MailboxID` only; the router and the local
  target are not part of its identity.
* ``send`` never blocks and never waits; ``True`` is not a delivery promise (a remote mailbox
  may close while the message is in flight), ``False`` means the target is known to be gone.
* ``send`` refuses the runtime's own notices as the message itself (:func:`system_message`
  registers them: ``MailboxClosed``, ``Exit``, ``MultipleClaim``, and forbids subclasses of
  them), so no code can forge one.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from .ids import MailboxID

__all__ = ["Address", "Router", "LocalTarget", "detach_local", "system_message", "is_system_message"]

_T = TypeVar("_T")

#: Types only the runtime may send (see :func:`system_message`).
_SYSTEM_TYPES: set[type] = set()


class Router(Protocol):
    """What an Address needs from the node it is bound to (``reign._runtime.node.Node``)."""

    def route(self, target: MailboxID, msg: Any) -> bool:
        """Deliver ``msg`` to ``target`` wherever it is; False when it is known to be gone."""
        ...

    def monitor(self, target: MailboxID, watcher: Address) -> None:
        """Send ``MailboxClosed`` for ``target`` to ``watcher`` once, when it closes."""
        ...

    def demonitor(self, target: MailboxID, watcher: Address) -> None:
        """Cancel :meth:`monitor`."""
        ...

    def exit_signal(self, target: MailboxID, reason: Any) -> None:
        """Send ``target`` an exit signal with ``reason`` from the calling process (``reign.exit``)."""
        ...


class LocalTarget(Protocol):
    """A mailbox of the router's own node, as its address sees it."""

    def post(self, msg: Any) -> bool:
        """Queue ``msg`` (any thread); False if the mailbox is closed."""
        ...


class Address:
    """Where to send messages for one mailbox, usable from anywhere in the cluster.

    Get one from ``node.new_mailbox()``, from ``node.address(text_or_bytes)``, or inside a
    received message. Addresses are immutable, hashable and compare by :attr:`id`.
    """

    __slots__ = ("id", "_router", "_local")

    id: MailboxID
    _router: Router
    _local: LocalTarget | None

    def __init__(self, mailbox_id: MailboxID, router: Router, local: LocalTarget | None = None) -> None:
        object.__setattr__(self, "id", mailbox_id)
        object.__setattr__(self, "_router", router)
        object.__setattr__(self, "_local", local)

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
        node cannot be encoded, and ``TypeError`` for a system message (``MailboxClosed``,
        ``Exit``, ``MultipleClaim``): those come only from the runtime.
        """
        if type(msg) in _SYSTEM_TYPES:
            raise TypeError(f"{type(msg).__name__} is a system message: only the runtime sends it")
        local = self._local
        if local is not None:
            return local.post(msg)
        return self._router.route(self.id, msg)

    @property
    def node(self) -> Router:
        """The node this address is bound to: it routes the address's sends."""
        return self._router

    def on_close_notify(self, watcher: Address) -> None:
        """Ask for ``MailboxClosed(self.id)`` to be sent to ``watcher`` once this mailbox closes.

        Like Erlang's ``monitor``: the notice comes at once if the target is already closed,
        unknown, from an earlier incarnation, or on a node that is lost; and when the target's
        node is lost later. A watch on a node this node has never been connected to yet waits
        for that first connection (the mesh may still be forming). Registering the same watcher
        twice gives one notice. When the watcher's own mailbox closes, its watches end.
        Thread-safe. Raises ``TypeError`` if ``watcher`` is not an Address.
        """
        if type(watcher) is not Address:
            raise TypeError(f"watcher must be an Address, not {type(watcher).__name__}")
        self._router.monitor(self.id, watcher)

    def remove_notify(self, watcher: Address) -> None:
        """Cancel an :meth:`on_close_notify`; a notice already on its way may still arrive."""
        if type(watcher) is not Address:
            raise TypeError(f"watcher must be an Address, not {type(watcher).__name__}")
        self._router.demonitor(self.id, watcher)


def detach_local(address: Address) -> None:
    """The mailbox of ``address`` closed: its sends now go through the router (which finds no
    mailbox and returns False), and the address no longer keeps the closed mailbox alive."""
    object.__setattr__(address, "_local", None)


def system_message(cls: type[_T]) -> type[_T]:
    """Class decorator: ``Address.send`` refuses instances of ``cls`` (runtime notices).

    ``cls`` cannot be subclassed: a subclass would pass the exact type check ``send`` makes
    and still look like the notice to a receiver (``isinstance``, ``case MailboxClosed()``).
    """
    _SYSTEM_TYPES.add(cls)
    # setattr: mypy refuses assigning to a method of a class
    setattr(cls, "__init_subclass__", classmethod(_refuse_subclass))  # noqa: B010
    return cls


def _refuse_subclass(cls: type, /, **kwargs: Any) -> None:
    raise TypeError(f"{cls.__mro__[1].__name__} is a system message type and cannot be subclassed")


def is_system_message(msg: object) -> bool:
    """Whether ``msg`` is one of the runtime's notices (which ``Address.send`` refuses)."""
    return type(msg) in _SYSTEM_TYPES
