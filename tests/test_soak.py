"""Soak: four node processes, mixed traffic, random kills and restarts, for SOAK_SECONDS.

Every node streams sequence-numbered messages to every other (small values, dicts carrying
addresses, a registered class, byte strings up to 256 KiB) while claiming and dropping a shared
name twice a second. Nodes 3 and 4, one at a time, are killed (kill -9, or a graceful stop) and
restarted under the same id, or frozen (SIGSTOP) for 1.5 ticks. Nodes 1 and 2 live throughout.

Promises checked (:func:`fault_util.check_streams`): no message is duplicated, reordered or
delivered to another incarnation than its address names; a message is lost only across a down
of its pair (each gap ends at a down mark of its sender); nodes 1 and 2 never lose each other
nor a message between them; when all are up at the end, every stream between live nodes is
complete; and the resident memory of nodes 1 and 2 grows by less than RSS_GROWTH_LIMIT.
The random schedule's seed is printed; ``SOAK_SEED=<n>`` replays it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from cluster_util import make_cluster
from fault_util import Fleet, check_streams, quiesce

#: Seconds of traffic with faults (CI runs the whole of it).
SOAK_SECONDS = 60.0
#: Messages per second on each of the 12 streams.
RATE = 150
#: net_ticktime of the soak cluster (seconds).
TICK = 2.0
#: Nodes that live throughout (their memory is measured) and nodes that get killed.
LONG_LIVED = (1, 2)
VICTIMS = (3, 4)
IDS = LONG_LIVED + VICTIMS
#: Largest resident-memory growth of a long-lived node from warm-up to the end, in KiB.
RSS_GROWTH_LIMIT = 50 * 1024


def _start_streams(fleet: Fleet, node_id: int) -> None:
    fleet[node_id].send("stream", peers=[i for i in IDS if i != node_id], rate=RATE, mix=True)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 90)
async def test_soak_mixed_traffic_with_kills_and_restarts(tmp_path: Path) -> None:
    seed = int(os.environ.get("SOAK_SEED", time.time_ns() % 2**32))
    rnd = random.Random(seed)
    print(f"\nsoak seed {seed} (SOAK_SEED={seed} replays the schedule)")
    spec = make_cluster(tmp_path, IDS, net_ticktime=TICK)
    fleet = Fleet(tmp_path, spec)
    faults: list[str] = []
    try:
        await fleet.start_all(IDS)
        await fleet.wait_mesh(IDS)
        for i in IDS:
            _start_streams(fleet, i)
        await asyncio.sleep(3.0)  # warm-up: buffers, pools and the first big messages
        rss_start = {i: fleet[i].rss_kb() for i in LONG_LIVED}
        loop = asyncio.get_running_loop()
        end = loop.time() + SOAK_SECONDS
        while loop.time() < end - 6:
            await asyncio.sleep(rnd.uniform(1.5, 4.0))
            victim = rnd.choice(VICTIMS)
            child = fleet[victim]
            roll = rnd.random()
            if roll < 0.2:  # a freeze: declared down by ticks, then back as the same incarnation
                child.signal(signal.SIGSTOP)
                await asyncio.sleep(1.5 * TICK)
                child.signal(signal.SIGCONT)
                faults.append(f"freeze {victim}")
                await fleet.wait_mesh(IDS)
                continue
            if roll < 0.75:
                await child.kill()
                faults.append(f"kill -9 {victim}")
            else:
                await child.exit()
                faults.append(f"stop {victim}")
            await asyncio.sleep(rnd.uniform(0.1, 2.0))
            await fleet.start(victim)
            await fleet.wait_mesh(IDS)
            _start_streams(fleet, victim)
        await asyncio.sleep(max(0.0, end - loop.time()))

        await fleet.wait_mesh(IDS)
        await asyncio.sleep(1.0)
        final = await quiesce(fleet, list(IDS), timeout=30)
        rss_end = {i: fleet[i].rss_kb() for i in LONG_LIVED}
        counts = check_streams(fleet.history, final)
        errors = [e for e in fleet.history if e["ev"] == "error"]
        assert not errors, errors
        a, b = LONG_LIVED
        assert not fleet[a].status(b, False) and not fleet[b].status(a, False)
        assert not [g for g in fleet.history if g["ev"] == "gap" and {g["node"], g["sender"]} == {a, b}]
        delivered = sum(r["count"] for report in final.values() for r in report["received"].values())
        growth = {i: rss_end[i] - rss_start[i] for i in LONG_LIVED}
        print(f"faults: {len(faults)} ({', '.join(faults)})")
        print(f"{delivered} messages delivered to the final incarnations; {counts}")
        print(f"RSS of nodes {LONG_LIVED}: start {rss_start} KiB, growth {growth} KiB")
        assert len(faults) >= SOAK_SECONDS / 10
        assert all(g < RSS_GROWTH_LIMIT for g in growth.values()), growth
    finally:
        await fleet.close()
