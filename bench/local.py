"""Local mailbox benchmark, interleaved with a plain ``asyncio.Queue`` baseline on the same loop.

Run: ``.venv/bin/python bench/local.py [--rounds 5] [--messages 200000]``

Prints medians over the rounds (reign and baseline alternate within each round, so both see
the same machine noise), the ratio, and the issue's target for each figure:

* one-way: a producer task sends N messages (yielding every 1,000), a consumer receives them.
* ping-pong: two tasks bounce one message N/10 times.
* receive_match: 1,000 non-matching messages queued; cost of one selective receive that
  finds the match after them (baseline: a Python scan of a deque).
* memory: bytes per idle mailbox, 100k mailboxes (tracemalloc; baseline: 100k asyncio.Queue).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections import deque

import uvloop

import reign

BATCH = 1000


async def oneway_reign(node: reign.Node, n: int) -> float:
    addr, mbox = node.new_mailbox()
    send, receive = addr.send, mbox.receive

    async def producer() -> None:
        for start in range(0, n, BATCH):
            for i in range(start, min(start + BATCH, n)):
                send(i)
            await asyncio.sleep(0)

    async def consumer() -> None:
        for _ in range(n):
            await receive()

    t0 = time.perf_counter()
    await asyncio.gather(producer(), consumer())
    elapsed = time.perf_counter() - t0
    mbox.close()
    return n / elapsed


async def oneway_queue(n: int) -> float:
    q: asyncio.Queue[int] = asyncio.Queue()
    put, get = q.put_nowait, q.get

    async def producer() -> None:
        for start in range(0, n, BATCH):
            for i in range(start, min(start + BATCH, n)):
                put(i)
            await asyncio.sleep(0)

    async def consumer() -> None:
        for _ in range(n):
            await get()

    t0 = time.perf_counter()
    await asyncio.gather(producer(), consumer())
    return n / (time.perf_counter() - t0)


async def pingpong_reign(node: reign.Node, n: int) -> float:
    a_addr, a_box = node.new_mailbox()
    b_addr, b_box = node.new_mailbox()

    async def ponger() -> None:
        for _ in range(n):
            msg = await b_box.receive()
            a_addr.send(msg)

    async def pinger() -> None:
        for i in range(n):
            b_addr.send(i)
            await a_box.receive()

    t0 = time.perf_counter()
    await asyncio.gather(ponger(), pinger())
    elapsed = time.perf_counter() - t0
    a_box.close()
    b_box.close()
    return n / elapsed


async def pingpong_queue(n: int) -> float:
    a: asyncio.Queue[int] = asyncio.Queue()
    b: asyncio.Queue[int] = asyncio.Queue()

    async def ponger() -> None:
        for _ in range(n):
            a.put_nowait(await b.get())

    async def pinger() -> None:
        for i in range(n):
            b.put_nowait(i)
            await a.get()

    t0 = time.perf_counter()
    await asyncio.gather(ponger(), pinger())
    return n / (time.perf_counter() - t0)


async def match_reign(node: reign.Node, reps: int) -> float:
    addr, mbox = node.new_mailbox()
    for i in range(1000):
        addr.send(("noise", i))
    total = 0.0
    for _ in range(reps):
        addr.send("wanted")
        t0 = time.perf_counter()
        await mbox.receive_match(lambda m: m == "wanted")
        total += time.perf_counter() - t0
    mbox.close()
    return total / reps * 1e6


def match_scan(reps: int) -> float:
    q: deque[object] = deque(("noise", i) for i in range(1000))
    pred = lambda m: m == "wanted"  # noqa: E731 - the same predicate reign is given
    total = 0.0
    for _ in range(reps):
        q.append("wanted")
        t0 = time.perf_counter()
        for index, msg in enumerate(q):
            if pred(msg):
                del q[index]
                break
        total += time.perf_counter() - t0
    return total / reps * 1e6


def memory_reign(count: int) -> float:
    node = reign.no_clustering()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    boxes = [node.new_mailbox() for _ in range(count)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del boxes
    return (after - before) / count


def memory_queue(count: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    queues = [asyncio.Queue() for _ in range(count)]  # type: ignore[var-annotated]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del queues
    return (after - before) / count


async def main(rounds: int, messages: int) -> None:
    results: dict[str, list[float]] = {k: [] for k in ("ow_r", "ow_q", "pp_r", "pp_q", "m_r", "m_q")}
    async with reign.no_clustering() as node:
        for _ in range(rounds):
            results["ow_r"].append(await oneway_reign(node, messages))
            results["ow_q"].append(await oneway_queue(messages))
            results["pp_r"].append(await pingpong_reign(node, messages // 10))
            results["pp_q"].append(await pingpong_queue(messages // 10))
            results["m_r"].append(await match_reign(node, 2000))
            results["m_q"].append(match_scan(2000))
    med = {k: statistics.median(v) for k, v in results.items()}
    mem_r, mem_q = memory_reign(100_000), memory_queue(100_000)

    print(f"reign local benchmark: python {sys.version.split()[0]}, uvloop {uvloop.__version__}, "
          f"{rounds} rounds, medians")
    print(f"{'figure':34} {'reign':>14} {'baseline':>14} {'ratio':>7}  target")
    print(f"{'one-way send->receive (msgs/s)':34} {med['ow_r']:>14,.0f} {med['ow_q']:>14,.0f} "
          f"{med['ow_r'] / med['ow_q']:>6.2f}x  >= 1.5 M/s and >= 1.5x asyncio.Queue")
    print(f"{'ping-pong (round trips/s)':34} {med['pp_r']:>14,.0f} {med['pp_q']:>14,.0f} "
          f"{med['pp_r'] / med['pp_q']:>6.2f}x  >= 1.3x asyncio.Queue")
    print(f"{'receive_match past 1,000 (us)':34} {med['m_r']:>14.1f} {med['m_q']:>14.1f} "
          f"{med['m_r'] / med['m_q']:>6.2f}x  (baseline: deque scan, same predicate)")
    print(f"{'memory per idle mailbox (bytes)':34} {mem_r:>14.0f} {mem_q:>14.0f} "
          f"{mem_r / mem_q:>6.2f}x  <= 1024 bytes (baseline: asyncio.Queue)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    uvloop.run(main(args.rounds, args.messages))
