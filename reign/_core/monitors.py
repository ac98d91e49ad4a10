"""The monitors between this node and one peer, in both directions, as plain tables (sans-IO).

Erlang's ``monitor``/``'DOWN'`` across two nodes. One :class:`PeerMonitors` per peer:

* ``watches``: mailboxes *on the peer* that local watchers watch, each with its set of
  watchers. The peer is asked once per target (MONITOR when the first watcher arrives,
  DEMONITOR when the last one leaves), however many local watchers share it.
* ``watched``: serials of *our* mailboxes the peer asked to watch (its MONITOR frames). The
  runtime sends DOWN for one of them when it closes, and drops them all when the peer is lost.

Invariants (checked by ``tests/test_monitors.py``):

1. No entry of ``watches`` has an empty set of watchers.
2. Each method's return value says exactly which frame the caller must send (``True`` from
   :meth:`add_watch` = send MONITOR, from :meth:`remove_watch` = send DEMONITOR, from
   :meth:`local_closed` = send DOWN) or which watchers it must notify; the tables are already
   updated when it returns, so a notice is never sent twice for one watch.
3. After :meth:`peer_lost` both tables are empty.

Watchers are opaque here (the runtime's mailboxes); they only need to be hashable.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from .ids import MailboxID

__all__ = ["PeerMonitors"]

W = TypeVar("W", bound=Hashable)


class PeerMonitors(Generic[W]):
    """The monitor tables for one peer node (see the module header)."""

    __slots__ = ("watches", "watched")

    def __init__(self) -> None:
        self.watches: dict[MailboxID, set[W]] = {}
        self.watched: set[int] = set()

    def __repr__(self) -> str:
        return f"<PeerMonitors watches={len(self.watches)} watched={len(self.watched)}>"

    # ------------------------------------------------------------ our watchers of the peer

    def add_watch(self, target: MailboxID, watcher: W) -> bool:
        """``watcher`` watches ``target``; True if it is the first watcher (send MONITOR)."""
        watchers = self.watches.get(target)
        if watchers is None:
            self.watches[target] = {watcher}
            return True
        watchers.add(watcher)
        return False

    def remove_watch(self, target: MailboxID, watcher: W) -> bool:
        """``watcher`` stops watching ``target``; True if none is left (send DEMONITOR)."""
        watchers = self.watches.get(target)
        if watchers is None or watcher not in watchers:
            return False
        watchers.discard(watcher)
        if watchers:
            return False
        del self.watches[target]
        return True

    def target_down(self, target: MailboxID) -> set[W]:
        """The peer said ``target`` closed: its watchers, to notify (the watch is over)."""
        return self.watches.pop(target, set())

    def keep_incarnation(self, incarnation: int) -> dict[MailboxID, set[W]]:
        """The peer came up as ``incarnation``: watches of any other one end now.

        Returns the ended watches (their watchers are to be notified); the remaining ones are
        the targets to send MONITOR for on the new connection.
        """
        stale = {t: w for t, w in self.watches.items() if t.incarnation != incarnation}
        for target in stale:
            del self.watches[target]
        return stale

    # ------------------------------------------------------------ the peer's watches of us

    def peer_monitors(self, serial: int) -> bool:
        """The peer watches our mailbox ``serial``; False if it already did."""
        if serial in self.watched:
            return False
        self.watched.add(serial)
        return True

    def peer_demonitors(self, serial: int) -> bool:
        """The peer no longer watches ``serial``; False if it did not."""
        if serial not in self.watched:
            return False
        self.watched.discard(serial)
        return True

    def local_closed(self, serial: int) -> bool:
        """Our mailbox ``serial`` closed: True if the peer watched it (send DOWN)."""
        return self.peer_demonitors(serial)

    # ------------------------------------------------------------ the connection is lost

    def peer_lost(self) -> tuple[dict[MailboxID, set[W]], set[int]]:
        """The connection is gone: every watch ends.

        Returns ``(watches, watched)``: our watchers to notify per target, and our serials the
        peer watched (whose watch tokens the runtime drops). Both tables are empty afterwards.
        """
        watches, self.watches = self.watches, {}
        watched, self.watched = self.watched, set()
        return watches, watched
