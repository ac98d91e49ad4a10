"""Crashes and freezes of real node processes (``tests/fault_node.py``) over real TLS.

* kill -9 of one node of three: its watchers everywhere are told once, within the tick window;
  its names vanish everywhere; the other two keep talking.
* SIGSTOP of one node for three ticks: the others declare it down by ticks alone (TCP would not
  notice), it rejoins after SIGCONT, and the sequence-numbered streams to and from it show no
  duplicate, no reordering, and gaps only at the senders' down marks.
* restart of a node with the same id: nothing addressed to the old incarnation reaches the new
  one (neither what was buffered while it was dead nor what is sent later), watchers on a third
  node are told, old names stay gone and the new claims replace them.

The delivery checks are :func:`fault_util.check_streams`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from cluster_util import make_cluster
from fault_util import Fleet, check_streams, quiesce

pytestmark = pytest.mark.slow

#: net_ticktime of these clusters (seconds): small so down detection by ticks is quick, yet
#: four ticks a second keep a loaded 2-CPU machine from declaring healthy peers down.
TICK = 2.0
#: How long to keep listening for a duplicate notice after the expected ones arrived.
SETTLE = 0.5
#: Messages per second on each stream.
RATE = 200


def _address_parts(text: str) -> tuple[int, int, int]:
    node, inc, serial = text.strip("<>").split(".")
    return int(node), int(inc), int(serial)


async def test_kill_nine_notifies_every_watcher_once_and_the_others_keep_talking(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2, 3], net_ticktime=TICK)
    fleet = Fleet(tmp_path, spec)
    try:
        n1, n2, n3 = await fleet.start_all([1, 2, 3])
        await fleet.wait_mesh([1, 2, 3])
        names = ["victim.a", "victim.b", "victim.c"]
        n2.send("mailboxes", count=3, names=names)
        victim = [n2.inbox, *(await n2.wait("mailboxes"))["addrs"]]
        for survivor in (n1, n3):
            for addr in victim + victim[:1]:  # the inbox is watched twice: one notice
                survivor.send("watch", addr=addr)
            await survivor.wait("watching", lambda e: e["addr"] == victim[0])
        await n2.sync()
        for survivor in (n1, n3):
            found = await survivor.lookup(*names, "inbox.2")
            assert sorted(a for addrs in found.values() for a in addrs) == sorted(victim)
        for child, peers in ((n1, [2, 3]), (n2, [1, 3]), (n3, [1, 2])):
            child.send("stream", peers=peers, rate=RATE)
        await asyncio.sleep(1.0)
        await asyncio.sleep(0.2)  # LINKs are on the wire before the kill

        marks = {c.node_id: len(c.events) for c in (n1, n3)}
        killed_at = time.monotonic()
        await n2.kill()
        for survivor in (n1, n3):
            since = marks[survivor.node_id]
            for addr in victim:
                notice = await survivor.wait("closed", lambda e, a=addr: e["id"] == a, since=since,
                                             timeout=TICK * 2)
                assert notice["t"] - killed_at < TICK, f"notice after {notice['t'] - killed_at:.2f} s"
            down = await survivor.wait("status", lambda e: e["peer"] == 2 and not e["up"], since=since)
            assert down["t"] - killed_at < TICK
        await asyncio.sleep(SETTLE)
        for survivor in (n1, n3):
            notices = [e["id"] for e in survivor.find("closed", since=marks[survivor.node_id])]
            assert sorted(notices) == sorted(victim), f"node {survivor.node_id}: {notices}"
            found = await survivor.lookup(*names, "inbox.2")
            assert found == {name: [] for name in [*names, "inbox.2"]}

        # The two others keep talking: round trips, and their streams lost nothing.
        n1.send("ping", to=n3.inbox, token="1->3")
        n3.send("ping", to=n1.inbox, token="3->1")
        await n1.wait("pong", lambda e: e["token"] == "1->3", timeout=5)
        await n3.wait("pong", lambda e: e["token"] == "3->1", timeout=5)
        final = await quiesce(fleet, [1, 3])
        counts = check_streams(fleet.history, final)
        for a, b in ((n1, 3), (n3, 1)):
            assert not a.status(b, False), f"node {a.node_id} saw node {b} down"
        assert counts["gaps"] == 0  # nothing reached node 2 after the kill to reveal a gap
    finally:
        await fleet.close()


async def test_sigstop_is_detected_by_ticks_and_streams_survive_the_freeze(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2, 3], net_ticktime=TICK)
    fleet = Fleet(tmp_path, spec)
    try:
        n1, n2, n3 = await fleet.start_all([1, 2, 3])
        await fleet.wait_mesh([1, 2, 3])
        for child, peers in ((n1, [2, 3]), (n2, [1, 3]), (n3, [1, 2])):
            child.send("stream", peers=peers, rate=RATE)
        await asyncio.sleep(1.5)

        marks = {c.node_id: len(c.events) for c in (n1, n2, n3)}
        stopped_at = time.monotonic()
        n2.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(3 * TICK)
            for other in (n1, n3):
                downs = other.status(2, False, since=marks[other.node_id])
                assert downs, f"node {other.node_id} never declared the frozen node down"
                latency = downs[0]["t"] - stopped_at
                # Only ticks can tell: never before net_ticktime, at most a tick interval later.
                assert TICK * 0.9 <= latency <= TICK * 1.25 + 0.75, f"declared down after {latency:.2f} s"
                assert len(downs) == 1
                report = await other.request("report", "report")
                assert report["peers"]["2"]["state"] == "down"  # statistics agree
        finally:
            n2.signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        for other in (n1, n3):
            up = await other.wait("status", lambda e: e["peer"] == 2 and e["up"],
                                  since=marks[other.node_id], timeout=15)
            assert up["t"] > resumed_at
        for peer in (1, 3):  # the frozen node notices, on waking, that it lost its peers
            await n2.wait("status", lambda e, p=peer: e["peer"] == p and not e["up"],
                          since=marks[2], timeout=10)
            await n2.wait("status", lambda e, p=peer: e["peer"] == p and e["up"],
                          since=marks[2], timeout=15)
        await fleet.wait_mesh([1, 2, 3])
        await asyncio.sleep(1.0)  # streams run on over the new connections

        final = await quiesce(fleet, [1, 2, 3])
        counts = check_streams(fleet.history, final)
        for a, b in ((n1, 3), (n3, 1)):
            assert not a.status(b, False), f"node {a.node_id} saw node {b} down"
        gaps = [e for e in fleet.history if e["ev"] == "gap"]
        assert all(2 in (g["node"], g["sender"]) for g in gaps), gaps
        for child in (n1, n2, n3):  # every stream kept flowing after the freeze
            assert all(r["count"] > RATE for r in final[(child.node_id, child.inc)]["received"].values())
        print(f"\nSIGSTOP {3 * TICK:g} s: {counts}")
    finally:
        await fleet.close()


async def test_restart_with_the_same_id_never_delivers_to_the_new_incarnation(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2, 3], net_ticktime=TICK)
    fleet = Fleet(tmp_path, spec)
    try:
        n1, n2, n3 = await fleet.start_all([1, 2, 3])
        await fleet.wait_mesh([1, 2, 3])
        names = ["svc.a", "svc.b"]
        n2.send("mailboxes", count=2, names=names)
        old = [n2.inbox, *(await n2.wait("mailboxes"))["addrs"]]
        n2.send("register", name="shared")
        n3.send("register", name="shared")
        await n3.wait("registered")
        for watcher in (n1, n3):
            for addr in old:
                watcher.send("watch", addr=addr)
            await watcher.wait("watching", lambda e: e["addr"] == old[-1])
        for child in (n1, n3):
            child.send("stream", peers=[2], rate=RATE)
        await n2.sync()
        await n3.sync()
        await n3.wait("multiple_claim", lambda e: e["name"] == "shared")
        await asyncio.sleep(0.5)

        marks = {c.node_id: len(c.events) for c in (n1, n3)}
        await n2.kill()
        for watcher in (n1, n3):
            for addr in old:
                await watcher.wait("closed", lambda e, a=addr: e["id"] == a,
                                   since=marks[watcher.node_id], timeout=TICK * 2)
        # While node 2 is dead, messages to its old addresses are buffered (it may only be
        # unreachable): they must be dropped when it returns as a new incarnation.
        for sender in (n1, n3):
            for i, addr in enumerate(old):
                sender.send("send", to=addr, msg=["to the old incarnation", sender.node_id, i])
        await asyncio.sleep(0.3)
        for sender in (n1, n3):
            assert all(e["ok"] for e in sender.find("sent", since=marks[sender.node_id]))

        n2b = await fleet.start(2)
        assert n2b.inc != n2.inc
        n2b.send("mailboxes", count=2, names=names)
        new = [n2b.inbox, *(await n2b.wait("mailboxes"))["addrs"]]
        # Same serials, other incarnation: exactly what must not be confused.
        assert [_address_parts(a)[2] for a in new] == [_address_parts(a)[2] for a in old]
        await fleet.wait_mesh([1, 2, 3])
        await n2b.sync()
        for watcher in (n1, n3):
            await watcher.sync()
        marks = {c.node_id: len(c.events) for c in (n1, n3)}
        for sender in (n1, n3):
            for i, addr in enumerate(old):
                sender.send("send", to=addr, msg=["to the old incarnation, later", sender.node_id, i])
                sender.send("watch", addr=addr)  # on a dead incarnation: notified at once
        for sender in (n1, n3):
            for addr in old:
                await sender.wait("closed", lambda e, a=addr: e["id"] == a,
                                  since=marks[sender.node_id], timeout=5)
            assert [e["ok"] for e in sender.find("sent", since=marks[sender.node_id])] == [False] * len(old)
            found = await sender.lookup(*names, "inbox.2", "shared")
            assert found == {"svc.a": [new[1]], "svc.b": [new[2]], "inbox.2": [new[0]],
                             "shared": [n3.inbox]}
        await asyncio.sleep(1.0)  # the streams found the new inbox.2 and run on
        final = await quiesce(fleet, [1, 2, 3])
        check_streams(fleet.history, final)  # includes: no "misdelivered" violation
        assert not n2b.find("message"), n2b.find("message")  # none of the old-address messages
        for watcher in (n1, n3):  # one notice per old address before the restart, one after
            notices = [e["id"] for e in watcher.find("closed")]
            assert sorted(notices) == sorted(old * 2)
        for sender in (n1, n3):
            started = [e["target"] for e in sender.find("stream_start")]
            assert started == [old[0], new[0]]
    finally:
        await fleet.close()
