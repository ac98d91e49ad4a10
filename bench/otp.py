"""OTP-layer benchmark: gen_server calls, supervisor restarts and idle servers, against
baselines measured in the same run (figures for issue 12).

Run: ``.venv/bin/python bench/otp.py [--rounds 5] [--calls 20000] [--remote-calls 3000]``

* **local call**: ``reign.call`` round trips per second to a GenServer on the same node, against
  the hand-written call pattern on plain mailboxes (monitor the server, send ``(request,
  reply_to, ref)``, ``receive_match`` on the reply with that ref or the server's
  ``MailboxClosed``, ``remove_notify``), served by an equally plain loop. Interleaved rounds;
  the ratio of medians is the figure (target: reign.call >= 1.2x the pattern).
* **remote call**: ``reign.call`` to a GenServer on another node (a second OS process, mutual
  TLS on loopback) against a plain send/receive ping-pong to an echo mailbox on that same node.
  Ratio of median round-trip times (target: call <= 1.3x ping-pong).
* **supervisor restart**: a one_for_one supervisor's child is killed (``reign.exit(child,
  "kill")``); time until the new child is registered under the child's name (median and p90
  of 1,000; target: median <= 200 us).
* **idle GenServer memory**: tracemalloc bytes per started, idle GenServer (10,000; target
  <= 4 KiB), with a plain idle mailbox as the baseline.
* ``--callgrind``: the local call figure again as instructions per call under valgrind's
  callgrind (deterministic, unlike the wall clock on this VM): each workload runs at two call
  counts and the difference is divided by the difference in calls, so start-up cancels.

Wall-clock figures on this shared VM swing; the ratios against the baseline of the same run
are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import reign
import reign.testing

import _bench_util as util

SERVER_NAME = "bench.server"
ECHO_NAME = "bench.echo"


class Adder(reign.GenServer):
    async def init(self) -> None:
        self.total = 0

    async def handle_call(self, request: Any, caller: reign.Caller) -> Any:
        self.total += request
        return self.total


class Idle(reign.GenServer):
    async def init(self) -> None:
        self.state = None


# ------------------------------------------------------------------------------ local call


async def hand_written_server(mbox: reign.Mailbox) -> None:
    total = 0
    while True:
        request, reply_to, ref = await mbox.receive()
        total += request
        reply_to.send(("reply", ref, total))


async def hand_written_calls(node: reign.Node, server: reign.Address, n: int) -> float:
    me, mbox = node.new_mailbox()
    refs = itertools.count()
    t0 = time.perf_counter()
    for i in range(n):
        ref = next(refs)
        server.on_close_notify(me)
        server.send((i, me, ref))
        sid = server.id
        reply = await mbox.receive_match(
            lambda m, ref=ref, sid=sid: (type(m) is tuple and m[0] == "reply" and m[1] == ref)
            or (type(m) is reign.MailboxClosed and m.id == sid),
            timeout=5,
        )
        server.remove_notify(me)
        assert type(reply) is tuple
    elapsed = time.perf_counter() - t0
    mbox.close()
    return n / elapsed


async def reign_calls(server: reign.Address, n: int) -> float:
    call = reign.call
    t0 = time.perf_counter()
    for i in range(n):
        await call(server, i)
    return n / (time.perf_counter() - t0)


async def local_calls(rounds: int, n: int) -> tuple[list[float], list[float]]:
    async with reign.no_clustering() as node:
        server = await Adder.start(node)
        plain = node.spawn(hand_written_server)
        ours, theirs = [], []
        await reign_calls(server, 1000)  # warm up both
        await hand_written_calls(node, plain, 1000)
        for _ in range(rounds):
            ours.append(await reign_calls(server, n))
            theirs.append(await hand_written_calls(node, plain, n))
    return ours, theirs


# ------------------------------------------------------------------------------ remote call


async def child_main(spec_path: str) -> None:
    util.quiet_logs()
    async with reign.create_from_spec_file(spec_path, 2) as node:
        server = await Adder.start(node, name=SERVER_NAME)
        node.names.register(SERVER_NAME, server)
        echo_addr, echo = node.new_mailbox()
        node.names.register(ECHO_NAME, echo_addr)

        async def echo_loop() -> None:
            async for reply_to, x in echo:
                reply_to.send(x)

        task = asyncio.create_task(echo_loop())
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        task.cancel()


async def remote_calls(rounds: int, n: int) -> tuple[list[float], list[float]]:
    folder = Path(tempfile.mkdtemp(prefix="reign-bench-otp-"))
    spec = reign.testing.make_cluster(folder, [1, 2], net_ticktime=60)
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
        assert line.startswith("READY"), line
        async with reign.create_from_spec_file(spec, 1) as node:
            await node.wait_connected(2, timeout=30)
            server = await node.names.wait_for(SERVER_NAME, timeout=30)
            echo = await node.names.wait_for(ECHO_NAME, timeout=30)
            me, mbox = node.new_mailbox()

            async def pingpong(count: int) -> float:
                send, receive = echo.send, mbox.receive
                t0 = time.perf_counter()
                for i in range(count):
                    send((me, i))
                    await receive(timeout=5)
                return (time.perf_counter() - t0) / count

            async def calls(count: int) -> float:
                call = reign.call
                t0 = time.perf_counter()
                for i in range(count):
                    await call(server, i)
                return (time.perf_counter() - t0) / count

            await pingpong(500)
            await calls(500)
            ours, theirs = [], []
            for _ in range(rounds):
                ours.append(await calls(n))
                theirs.append(await pingpong(n))
        return ours, theirs
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(10)


# ------------------------------------------------------------------------------ restart, memory


async def restarts(count: int) -> list[float]:
    async with reign.no_clustering() as node:
        spec = reign.ChildSpec(id="adder", start=Adder, kwargs={"name": SERVER_NAME})
        sup = await reign.Supervisor.start(node, [spec], intensity=count * 2, period=1.0)
        samples = []
        for _ in range(count):
            old = node.whereis(SERVER_NAME)
            assert old is not None
            t0 = time.perf_counter()
            reign.exit(old, "kill")
            while True:
                new = node.whereis(SERVER_NAME)
                if new is not None and new != old:
                    break
                await asyncio.sleep(0)
            samples.append(time.perf_counter() - t0)
        await reign.stop(sup)
    return samples


async def idle_memory(count: int) -> tuple[float, float]:
    async with reign.no_clustering() as node:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        servers = [await Idle.start(node) for _ in range(count)]
        await asyncio.sleep(0)
        gc.collect()
        per_server = (tracemalloc.get_traced_memory()[0] - base) / count
        tracemalloc.stop()
        for server in servers:
            reign.exit(server, "kill")
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        boxes = [node.new_mailbox() for _ in range(count)]
        gc.collect()
        per_mailbox = (tracemalloc.get_traced_memory()[0] - base) / count
        tracemalloc.stop()
        del boxes
    return per_server, per_mailbox


# ------------------------------------------------------------------------------ callgrind


async def callgrind_child(kind: str, n: int) -> None:
    async with reign.no_clustering() as node:
        if kind == "call":
            server = await Adder.start(node)
            await reign_calls(server, n)
        else:
            plain = node.spawn(hand_written_server)
            await hand_written_calls(node, plain, n)


def callgrind(n1: int = 2_000, n2: int = 10_000) -> None:
    import re

    totals: dict[tuple[str, int], int] = {}
    for kind in ("call", "hand"):
        for n in (n1, n2):
            with tempfile.TemporaryDirectory() as folder:
                argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
                        sys.executable, __file__, "--callgrind-child", kind, str(n)]
                proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
                found = re.search(r"Collected\s*:\s*([\d,]+)", proc.stderr)
                if proc.returncode != 0 or found is None:
                    raise RuntimeError(f"callgrind {kind} {n} failed: {proc.stderr[-2000:]}")
                totals[kind, n] = int(found.group(1).replace(",", ""))
    per = {kind: (totals[kind, n2] - totals[kind, n1]) / (n2 - n1) for kind in ("call", "hand")}
    print(f"local call        reign.call {per['call']:,.0f} instr/call   hand-written pattern {per['hand']:,.0f}"
          f" instr/call   speed ratio {per['hand'] / per['call']:.2f}x   (target >= 1.2x)")


# ------------------------------------------------------------------------------ report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--remote-calls", type=int, default=3_000)
    parser.add_argument("--restarts", type=int, default=1_000)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per local call")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        reign.run(child_main(args.child))
        return
    if args.callgrind_child:
        util.quiet_logs()
        reign.run(callgrind_child(args.callgrind_child[0], int(args.callgrind_child[1])))
        return
    util.quiet_logs()
    med = statistics.median
    print(f"reign OTP benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}); medians of {args.rounds} rounds")

    ours, theirs = reign.run(local_calls(args.rounds, args.calls))
    print(f"local call        reign.call {med(ours) / 1000:7.1f} k/s   hand-written pattern {med(theirs) / 1000:7.1f} k/s"
          f"   ratio {med(ours) / med(theirs):.2f}x   (target >= 1.2x)")

    ours, theirs = reign.run(remote_calls(args.rounds, args.remote_calls))
    print(f"remote call       reign.call {med(ours) * 1e6:7.1f} us     ping-pong {med(theirs) * 1e6:7.1f} us"
          f"           ratio {med(ours) / med(theirs):.2f}x   (target <= 1.3x)")

    samples = sorted(reign.run(restarts(args.restarts)))
    p90 = samples[int(len(samples) * 0.9)]
    print(f"supervisor restart  median {med(samples) * 1e6:7.1f} us   p90 {p90 * 1e6:7.1f} us"
          f"                        (target median <= 200 us)")

    per_server, per_mailbox = reign.run(idle_memory(args.servers))
    print(f"idle GenServer    {per_server:7.0f} bytes each   idle mailbox {per_mailbox:5.0f} bytes"
          f"                 (target <= 4096 bytes)")
    if args.callgrind:
        callgrind()


if __name__ == "__main__":
    main()
