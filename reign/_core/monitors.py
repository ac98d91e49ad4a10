"""The monitors and links between this node and one peer, as plain tables (sans-IO).

Erlang's ``monitor``/``'DOWN'`` and ``link``/exit signals across two nodes. One
:class:`PeerMonitors` per peer:

* ``watches``: mailboxes *on the peer* that local watchers watch, each with its set of
  watchers. The peer is asked once per target (MONITOR when the first watcher arrives,
  DEMONITOR when the last one leaves), however many local watchers share it.
* ``watched``: serials of *our* mailboxes the peer asked to watch (its MONITOR frames). The
  runtime sends DOWN for one of them when it closes, and drops them all when the peer is lost.
* ``links``: ``(our serial, their mailbox)`` pairs linked across this connection, whichever side
  made the link (a link is symmetric). When the peer is lost every one of them becomes a
  ``"noconnection"`` exit signal for our side.

Invariants (checked by ``tests/test_monitors.py``):

1. No entry of ``watches`` has an empty set of watchers.
2. Each method's return value says exactly which frame the caller must send (``True`` from
   :meth:`add_watch` = send MONITOR, from :meth:`remove_watch` = send DEMONITOR, from
   :meth:`local_closed` = send DOWN) or which watchers it must notify; the tables are already
   updated when it returns, so a notice is never sent twice for one watch.
3. After :meth:`peer_lost` every table is empty.
4. ``links`` holds a pair at most once: :meth:`add_link` says whether to send LINK,
   :meth:`remove_link` whether to send UNLINK.

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

    __slots__ = ("watches", "watched", "links")

    def __init__(self) -> None:
        self.watches: dict[MailboxID, set[W]] = {}
        self.watched: set[int] = set()
        self.links: set[tuple[int, MailboxID]] = set()

    def __repr__(self) -> str:
        return (
            f"<PeerMonitors watches={len(self.watches)} watched={len(self.watched)} "
            f"links={len(self.links)}>"
        )

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

    def keep_incarnation(self, incarnation: int) -> tuple[dict[MailboxID, set[W]], set[tuple[int, MailboxID]]]:
        """The peer came up as ``incarnation``: watches and links of any other one end now.

        Returns ``(ended watches, ended links)``: their watchers are to be notified and their
        local ends signalled (``"noproc"``: that run of the peer is gone). What remains is what
        to send MONITOR and LINK for on the new connection.
        """
        stale = {t: w for t, w in self.watches.items() if t.incarnation != incarnation}
        for target in stale:
            del self.watches[target]
        stale_links = {pair for pair in self.links if pair[1].incarnation != incarnation}
        self.links -= stale_links
        return stale, stale_links

    # ------------------------------------------------------------ links (both directions)

    def add_link(self, serial: int, remote: MailboxID) -> bool:
        """Our ``serial`` and the peer's ``remote`` are linked; False if they already were."""
        pair = (serial, remote)
        if pair in self.links:
            return False
        self.links.add(pair)
        return True

    def remove_link(self, serial: int, remote: MailboxID) -> bool:
        """The link between ``serial`` and ``remote`` is gone; False if there was none."""
        pair = (serial, remote)
        if pair not in self.links:
            return False
        self.links.discard(pair)
        return True

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

    def peer_lost(self) -> tuple[dict[MailboxID, set[W]], set[int], set[tuple[int, MailboxID]]]:
        """The connection is gone: every watch and link ends.

        Returns ``(watches, watched, links)``: our watchers to notify per target, our serials
        the peer watched (whose watch tokens the runtime drops), and the links whose local ends
        get a ``"noconnection"`` exit signal. Every table is empty afterwards.
        """
        watches, self.watches = self.watches, {}
        watched, self.watched = self.watched, set()
        links, self.links = self.links, set()
        return watches, watched, links
