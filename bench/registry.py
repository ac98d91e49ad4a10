"""Registry benchmark: real TLS nodes on loopback, all in one process and one uvloop loop.

Run: ``.venv/bin/python bench/registry.py [--nodes 16] [--rounds 200] [--names 100000]``

Prints:

* visibility: a 16-node full mesh; one node registers a fresh name and the loop spins until all
  15 other nodes see it. Median / p90 / max over ``--rounds`` registrations (rotating the
  registering node), and the same for ``names.sync()`` returning after a register.
* join: one node holds ``--names`` claims (100 mailboxes); a second node starts and joins.
  Time from its ``start()`` to the connection being up (TLS + HELLO), and to every name being
  visible on it (snapshot: encode, send, decode, merge); then ``names.sync()`` on the old node.

All nodes share one loop (one CPU), so every figure includes the sending *and* receiving work
of every node involved: on separate machines the wall-clock figures would be lower.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import structlog
import uvloop

import reign
from reign.testing import make_cluster


async def wait_connected(nodes: list[reign.Node], timeout: float) -> None:
    await asyncio.gather(*(node.wait_connected(timeout=timeout) for node in nodes))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def summary(label: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p90 = samples[int(len(samples) * 0.9) - 1]
    print(f"  {label:<34} median {ms(statistics.median(samples))}  p90 {ms(p90)}  max {ms(samples[-1])}")


async def visibility(folder: Path, count: int, rounds: int) -> None:
    spec = make_cluster(folder, range(count), net_ticktime=60)
    nodes = [reign.create_from_spec_file(spec, i) for i in range(count)]
    t0 = time.perf_counter()
    await asyncio.gather(*(n.start() for n in nodes))
    try:
        await wait_connected(nodes, timeout=120)
        print(f"{count}-node mesh up in {time.perf_counter() - t0:.2f} s")
        boxes = [n.new_mailbox()[0] for n in nodes]
        seen, synced = [], []
        for r in range(rounds):
            i = r % count
            name = f"bench.{r}"
            others = [n for n in nodes if n is not nodes[i]]
            t = time.perf_counter()
            nodes[i].names.register(name, boxes[i])
            while not all(n.names.seen_names(name)[0] for n in others):
                await asyncio.sleep(0)
            seen.append(time.perf_counter() - t)
            name = f"bench.sync.{r}"
            t = time.perf_counter()
            nodes[i].names.register(name, boxes[i])
            await nodes[i].names.sync()
            synced.append(time.perf_counter() - t)
            assert all(n.names.seen_names(name)[0] for n in others)
        print(f"registration visible on all {count - 1} other nodes ({rounds} rounds):")
        summary("register -> seen everywhere", seen)
        summary("register + sync() returned", synced)
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


async def join(folder: Path, count: int) -> None:
    spec = make_cluster(folder, [1, 2], net_ticktime=60)
    # The joiner has the lower id, so it dials at once (the lower id dials the higher): the
    # figure is not inflated by the other node's redial backoff.
    old = reign.create_from_spec_file(spec, 2)
    new = reign.create_from_spec_file(spec, 1)
    async with old:
        boxes = [old.new_mailbox()[0] for _ in range(100)]
        names = [f"service.{i:07d}" for i in range(count)]
        t = time.perf_counter()
        for i, name in enumerate(names):
            old.names.register(name, boxes[i % 100])
        print(f"{count} local registrations: {ms(time.perf_counter() - t)}")
        t0 = time.perf_counter()
        await new.start()
        try:
            await wait_connected([old, new], timeout=60)
            t_up = time.perf_counter()
            last = names[-1]
            while not new.names.seen_names(last)[0]:
                await asyncio.sleep(0)
            t_seen = time.perf_counter()
            await old.names.sync(timeout=60)
            t_sync = time.perf_counter()
            assert all(new.names.seen_names(*names))
            print(f"a node joins a node holding {count} names:")
            print(f"  connection up (TLS + HELLO)        {ms(t_up - t0)}")
            print(f"  all names visible on the new node  {ms(t_seen - t0)}  (snapshot alone ~{ms(t_seen - t_up)})")
            print(f"  then old.names.sync() returned     {ms(t_sync - t0)}")
        finally:
            await new.stop()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        await visibility(folder / "mesh", args.nodes, args.rounds)
        await join(folder / "join", args.names)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--names", type=int, default=100_000)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    uvloop.run(main(parser.parse_args()))
