"""Who may hold a connection slot: bounds on unauthenticated connections, and duplicate node ids.

Two small pure classes (no I/O, the clock is passed in) that the connection manager
(:mod:`.cluster`) consults; both are unit-tested on their own.

:class:`PreAuthAdmission` bounds connections that are not yet a node: from ``accept`` until the
HELLO exchange completed (TLS handshake included). Invariants:

* At most ``total`` such connections at once, and at most ``per_source`` from one source
  address. At either bound a new connection is admitted and an *older* one is evicted (OpenSSH's
  MaxStartups refuses new ones instead): at the per-source bound the oldest of that source, at
  the total bound the oldest of the source that holds the most slots. Why drop the oldest: a
  slot then cannot be *held* (idle sockets, stalled ClientHellos); keeping a legitimate
  handshake (a few milliseconds) out takes a sustained rate of new connections, more than
  ``total`` in those milliseconds. Why the largest source: a source with one slot (a real node
  dialling) is evicted last, after every flooding source was cut down to one slot.
* ``shed(n)`` evicts in the same order, for when file descriptors run out; ``limit`` can be
  lowered below ``total`` (the cluster does, after EMFILE) and restored.
* Tokens are the caller's objects (hashable); every admitted token is released exactly once
  by the caller or returned once as evicted.

:class:`IncarnationGuard` tells a restarted node from the same node id running twice, for one
peer. Invariants:

* A restart replaces an incarnation with a new one, which never comes back. So an incarnation
  that was *superseded* (another incarnation came up after it) and returns is proof of two live
  processes with one id: a *contest* starts (reported once, by the caller, as
  ``peer.duplicate_node``).
* During a contest, an incarnation that would replace the one that is up is refused, unless it
  is the older of the two (incarnations start with the start time in milliseconds, so every
  node of the cluster prefers the same process) and no replacement happened during the current
  hold-down period. Each allowed replacement doubles the hold-down period (``hold_min`` up to
  ``hold_max``): at most one transition per period. A peer that is down admits any incarnation
  (a contest must not keep the node id out when one of the two processes is gone).
* A contest ends after ``forget`` seconds without a refused or allowed replacement (the
  duplicate was stopped); the history is bounded (:data:`HISTORY` incarnations).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = [
    "DUPLICATE_FORGET",
    "DUPLICATE_HOLD_MAX",
    "DUPLICATE_HOLD_MIN",
    "HISTORY",
    "IncarnationGuard",
    "PreAuthAdmission",
]

T = TypeVar("T", bound=Hashable)

#: Incarnations remembered per peer: more than the processes that could plausibly share an id.
HISTORY = 8
#: First hold-down period of a contested node id, in seconds. Longer than a redial (the
#: dialler retries within RECONNECT_MAX, 2 s), so the refused process is refused at least once.
DUPLICATE_HOLD_MIN = 5.0
#: Longest hold-down period: one transition per minute at worst, Erlang's default net_ticktime.
DUPLICATE_HOLD_MAX = 60.0
#: Seconds without a contested connection attempt after which a contest is over. A refused
#: duplicate redials every few seconds, so this only ends once one of the two processes stopped.
DUPLICATE_FORGET = 120.0


class PreAuthAdmission(Generic[T]):
    """Bounds connections not yet authenticated, in total and per source (see module docstring)."""

    def __init__(self, total: int, per_source: int) -> None:
        if total < 1 or per_source < 1:
            raise ValueError(f"total and per_source must be >= 1, got {total!r}, {per_source!r}")
        self.total = total
        self.per_source = per_source
        self.limit = total  # the total bound in force (lowered after EMFILE)
        # source -> its tokens, oldest first (a dict is an ordered set with O(1) removal)
        self._by_source: dict[str, dict[T, int]] = {}
        self._source_of: dict[T, str] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._source_of)

    def __contains__(self, token: object) -> bool:
        return token in self._source_of

    def count(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def admit(self, source: str, token: T) -> list[T]:
        """Admit ``token`` from ``source``; returns the tokens evicted to make room (oldest)."""
        if token in self._source_of:
            raise ValueError("token admitted twice")
        evicted: list[T] = []
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.per_source:
            evicted.append(self._evict_oldest(source))
        while len(self._source_of) >= self.limit:
            evicted.append(self._evict_largest())
        self._seq += 1
        self._by_source.setdefault(source, {})[token] = self._seq
        self._source_of[token] = source
        return evicted

    def release(self, token: T) -> bool:
        """Forget ``token`` (authenticated or closed); False if it was not held."""
        source = self._source_of.pop(token, None)
        if source is None:
            return False
        mine = self._by_source[source]
        del mine[token]
        if not mine:
            del self._by_source[source]
        return True

    def shed(self, count: int) -> list[T]:
        """Evict up to ``count`` tokens, largest source's oldest first."""
        return [self._evict_largest() for _ in range(min(count, len(self._source_of)))]

    def _evict_oldest(self, source: str) -> T:
        token = next(iter(self._by_source[source]))
        self.release(token)
        return token

    def _evict_largest(self) -> T:
        # O(number of sources) <= limit; ties go to the source whose oldest token is oldest.
        best: str | None = None
        best_key = (0, 0)
        for source, tokens in self._by_source.items():
            key = (len(tokens), -next(iter(tokens.values())))
            if best is None or key > best_key:
                best, best_key = source, key
        assert best is not None
        return self._evict_oldest(best)


class IncarnationGuard:
    """One peer's incarnations: restarts versus a duplicate node id (see module docstring)."""

    def __init__(
        self,
        *,
        hold_min: float = DUPLICATE_HOLD_MIN,
        hold_max: float = DUPLICATE_HOLD_MAX,
        forget: float = DUPLICATE_FORGET,
    ) -> None:
        self.hold_min = hold_min
        self.hold_max = hold_max
        self.forget = forget
        #: incarnation -> remote address it last came up from; insertion order = first seen.
        self.seen: dict[int, str] = {}
        self.superseded: set[int] = set()
        self.last_up: int | None = None
        self.contested = False
        self.hold = hold_min
        self.hold_until = 0.0
        self.last_contest = 0.0
        self.refused = 0

    def check(self, incarnation: int, up: int | None, now: float) -> tuple[bool, bool]:
        """May ``incarnation`` come up now, with ``up`` the incarnation up now (None: down)?

        Returns ``(admit, detected)``; ``detected`` is True once per contest, when the proof of
        a duplicate arrives (the caller logs it).
        """
        if self.contested and now - self.last_contest > self.forget:
            self.contested = False
            self.hold = self.hold_min
        if up is None or up == incarnation:
            return True, False
        detected = False
        if incarnation in self.superseded and not self.contested:
            self.contested = detected = True
            self.hold = self.hold_min
            self.hold_until = now  # the first resolution may happen at once
        if not self.contested:
            return True, False  # a restart (the old connection not yet seen dead): replace
        self.last_contest = now
        if now < self.hold_until or incarnation > up:
            self.refused += 1
            return False, detected
        self.hold_until = now + self.hold
        self.hold = min(self.hold * 2, self.hold_max)
        return True, detected

    def came_up(self, incarnation: int, remote: str) -> None:
        """``incarnation`` is up (from ``remote``): the one up before it is now superseded."""
        previous = self.last_up
        if previous is not None and previous != incarnation:
            self.superseded.add(previous)
        self.superseded.discard(incarnation)
        self.seen.pop(incarnation, None)
        self.seen[incarnation] = remote
        self.last_up = incarnation
        while len(self.seen) > HISTORY:
            oldest = next(iter(self.seen))
            del self.seen[oldest]
            self.superseded.discard(oldest)

    def remote_of(self, incarnation: int) -> str | None:
        return self.seen.get(incarnation)
