"""CPU instructions per message for reign's cluster pipeline and a raw-TLS baseline (callgrind).

What it measures: the instructions executed per one-way message and per ping-pong round trip
by two reign nodes talking mutual TLS over loopback, and by the raw-TLS baseline of
``bench/_raw_tls.py`` (reign's framing over uvloop TLS, no codec, no mailboxes) doing the same
work, plus the reign/raw ratio. Both ends (sender and receiver, or pinger and echo) run in ONE
process, so each figure is the sum of both sides' work.

Why: instruction counts are nearly deterministic (repeat ping-pong runs agree within about
1 %), while wall-clock figures on the shared benchmark VM swing by 2x from run to run. A ratio
of instruction counts is a stable way to quote how much reign costs on top of bare TLS
framing. One-way figures vary more (seen: 37-40 k per message across runs) because how many
messages arrive per read, and so how far per-read costs are shared, depends on timing.

How: each workload is this script re-executed with a hidden ``--child KIND N`` argument under
``valgrind --tool=callgrind``, twice, with N1 and N2 operations. The per-op figure is
``(total(N2) - total(N1)) / (N2 - N1)``, which cancels interpreter start-up, imports,
certificate generation and TLS handshakes. ``--top K`` also lists the K functions whose
self cost per op grows the most (from ``callgrind_annotate``).

Run: ``.venv/bin/python bench/instructions.py [--only oneway,big,pingpong] [--top K] [--jobs 2]``

Each valgrind child takes roughly 15-60 s; the default (all three rows) runs 12 of them, about
4 minutes in all.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BATCH = 1000
TIMEOUT = 30.0
BIG = bytes(4096)


@dataclass(frozen=True)
class Case:
    """One table row: a reign workload and its raw-TLS counterpart, each run at n1 and n2."""

    label: str
    reign_kind: str
    raw_kind: str
    n1: int
    n2: int
    unit: str


CASES: dict[str, Case] = {
    "oneway": Case("one-way small dict", "oneway", "raw_oneway", 5_000, 25_000, "message"),
    "big": Case("one-way 4 KiB", "big", "raw_big", 2_000, 6_000, "message"),
    "pingpong": Case("ping-pong round trip", "pingpong", "raw_pingpong", 1_000, 5_000, "round trip"),
}


# ============================================================================ child workloads


def quiet_logs() -> None:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


async def reign_pair(folder: Path, body: Callable[[Any, Any], Any]) -> None:
    """Two connected reign nodes (ids 1 and 2) in this process; runs ``await body(n1, n2)``."""
    import reign
    from reign.testing import make_cluster, wait_until

    spec = make_cluster(folder, [1, 2])
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await wait_until(lambda: n1.statistics().peers[2].state == n2.statistics().peers[1].state == "up")
        await body(n1, n2)


def reign_oneway(n: int, make: Callable[[int], Any]) -> Callable[[Any, Any], Any]:
    """Node 1 sends ``n`` messages to a mailbox on node 2, which receives them all."""

    async def body(n1: Any, n2: Any) -> None:
        a2, m2 = n2.new_mailbox()
        target = n1.address(str(a2))

        async def consume() -> None:
            for _ in range(n):
                await m2.receive()

        consumer = asyncio.create_task(consume())
        send = target.send
        for start in range(0, n, BATCH):
            for i in range(start, min(start + BATCH, n)):
                send(make(i))
            await n1.wait_drained(2, timeout=TIMEOUT)
            await asyncio.sleep(0)
        await asyncio.wait_for(consumer, TIMEOUT)

    return body


def reign_pingpong(n: int) -> Callable[[Any, Any], Any]:
    """``n`` round trips from a mailbox on node 1 to an echo task on node 2."""

    async def body(n1: Any, n2: Any) -> None:
        a1, m1 = n1.new_mailbox()
        a2, m2 = n2.new_mailbox()
        target = n1.address(str(a2))

        async def echo() -> None:
            while True:
                reply_to, x = await m2.receive()
                reply_to.send(x)

        echoer = asyncio.create_task(echo())
        send, receive = target.send, m1.receive
        for i in range(n):
            send((a1, i))
            await receive()
        echoer.cancel()

    return body


async def raw_pair(folder: Path, body: Callable[[Any, Any], Any]) -> None:
    """A raw-TLS server (node 0's credentials) and a client (node 1's) in this process; runs
    ``await body(conn, address)`` where ``address`` is a reign address for payload building."""
    import reign
    from reign._config import tls as _tls
    from reign.testing import free_ports, make_cluster

    import _raw_tls as raw

    spec = reign.ClusterSpec.load(make_cluster(folder, [0, 1]))
    port = free_ports(1)[0]
    server = await raw.serve("127.0.0.1", port, _tls.server_context(*spec.load_credentials(0)))
    conn = await raw.connect("127.0.0.1", port, _tls.client_context(*spec.load_credentials(1)))
    node = reign.create_from_spec(spec, 1)  # never started: only mints an address
    address = node.new_mailbox()[0]
    try:
        await body(conn, address)
    finally:
        conn.transport.close()
        server.close()
        await server.wait_closed()


def raw_oneway(n: int, message: Any) -> Callable[[Any, Any], Any]:
    async def body(conn: Any, address: Any) -> None:
        from reign._core import codec as _codec

        import _raw_tls as raw

        payload = _codec.encode(message)
        await raw.oneway(conn, lambda i: payload, n, BATCH)

    return body


def raw_pingpong(n: int) -> Callable[[Any, Any], Any]:
    async def body(conn: Any, address: Any) -> None:
        from reign._core import codec as _codec

        import _raw_tls as raw

        await raw.pingpong(conn, _codec.encode((address, 1234)), n)

    return body


def child_workload(kind: str, n: int) -> tuple[Callable[..., Any], Callable[[Any, Any], Any]]:
    """(pair builder, body) for a child kind."""
    workloads: dict[str, Callable[[], tuple[Callable[..., Any], Callable[[Any, Any], Any]]]] = {
        "oneway": lambda: (reign_pair, reign_oneway(n, lambda i: {"op": "inc", "seq": i})),
        "big": lambda: (reign_pair, reign_oneway(n, lambda i: BIG)),
        "pingpong": lambda: (reign_pair, reign_pingpong(n)),
        "raw_oneway": lambda: (raw_pair, raw_oneway(n, {"op": "inc", "seq": 123456})),
        "raw_big": lambda: (raw_pair, raw_oneway(n, BIG)),
        "raw_pingpong": lambda: (raw_pair, raw_pingpong(n)),
    }
    return workloads[kind]()


def child_main(kind: str, n: int) -> None:
    import reign

    quiet_logs()
    pair, body = child_workload(kind, n)
    folder = Path(tempfile.mkdtemp(prefix="reign-instr-"))
    try:
        reign.run(pair(folder, body))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ============================================================================ valgrind runs


COLLECTED = re.compile(r"^==\d+==\s+Collected\s*:\s*([\d,]+)", re.MULTILINE)


@dataclass
class Run:
    kind: str
    n: int
    total: int
    out_file: Path
    seconds: float


def run_child(kind: str, n: int, out_dir: Path) -> Run:
    """This script's ``--child kind n`` under callgrind; the total instruction count."""
    out_file = out_dir / f"callgrind.{kind}.{n}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
            sys.executable, str(Path(__file__).resolve()), "--child", kind, str(n)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    t0 = time.monotonic()
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - t0
    match = COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or match is None:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        raise RuntimeError(f"child {kind} {n} failed (exit {proc.returncode}):\n{tail}")
    return Run(kind, n, int(match.group(1).replace(",", "")), out_file, seconds)


def run_all(jobs: list[tuple[str, int]], out_dir: Path, parallel: int) -> dict[tuple[str, int], Run]:
    """Every (kind, n) under valgrind, ``parallel`` at a time; progress on stderr."""

    def one(job: tuple[str, int]) -> Run:
        run = run_child(*job, out_dir)
        print(f"  {run.kind:13} N={run.n:>6,}  {run.total:>15,} instructions  ({run.seconds:.0f} s)",
              file=sys.stderr, flush=True)
        return run

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        runs = list(pool.map(one, jobs))
    return {(r.kind, r.n): r for r in runs}


def per_op(runs: dict[tuple[str, int], Run], kind: str, n1: int, n2: int) -> float:
    return (runs[kind, n2].total - runs[kind, n1].total) / (n2 - n1)


# ============================================================================ per-function costs


ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*?)\s*$")
BUILD_PREFIX = re.compile(r"(?:/tmp/)?python-build[^/]*/(?:Python-[\d.]+/)?")
RECURSION = re.compile(r"'\d+(?= |$)")
LIBRARY = re.compile(r"\[(?:[^\]]*/)?([^\]/]+)\]$")


def normalise(name: str) -> str:
    """``file:function [library]`` without the python-build source prefix (it varies per
    build), callgrind's recursion-depth suffix (``'2``) and the library's directory."""
    name = BUILD_PREFIX.sub("", name)
    name = RECURSION.sub("", name)
    return LIBRARY.sub(r"[\1]", name)


def self_costs(out_file: Path) -> dict[str, int]:
    """Instructions per function (self cost, exclusive), from ``callgrind_annotate``."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", str(out_file)],
        capture_output=True, text=True, check=True,
    ).stdout
    costs: dict[str, int] = {}
    for line in text.splitlines():
        match = ANNOTATE_LINE.match(line)
        if match is None or ":" not in match.group(2):  # skips PROGRAM TOTALS
            continue
        name = normalise(match.group(2))
        costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def top_functions(run1: Run, run2: Run, k: int) -> list[tuple[str, float]]:
    """The ``k`` functions with the largest self-cost growth per op between the two runs."""
    c1, c2 = self_costs(run1.out_file), self_costs(run2.out_file)
    ops = run2.n - run1.n
    diffs = [(name, (c2.get(name, 0) - c1.get(name, 0)) / ops) for name in set(c1) | set(c2)]
    diffs.sort(key=lambda item: item[1], reverse=True)
    return diffs[:k]


# ============================================================================ report


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for row in rows:
        print(fmt.format(*row))


def report(cases: list[Case], runs: dict[tuple[str, int], Run]) -> None:
    rows = []
    for case in cases:
        r = per_op(runs, case.reign_kind, case.n1, case.n2)
        b = per_op(runs, case.raw_kind, case.n1, case.n2)
        rows.append((case.label, f"{r:,.0f}", f"{b:,.0f}", f"{r / b:.2f}",
                     f"{case.n1:,} / {case.n2:,}"))
    table(rows, ("figure (per op)", "reign instr/op", "raw TLS instr/op", "reign/raw", "N1 / N2"))


def report_top(cases: list[Case], runs: dict[tuple[str, int], Run], k: int) -> None:
    for case in cases:
        for kind in (case.reign_kind, case.raw_kind):
            print(f"\ntop {k} functions by self instructions per {case.unit}, {kind}:")
            for name, cost in top_functions(runs[kind, case.n1], runs[kind, case.n2], k):
                print(f"  {cost:>10,.0f}  {name}")


def valgrind_version() -> str:
    return subprocess.run(["valgrind", "--version"], check=False, capture_output=True,
                          text=True).stdout.strip()


def parent_main(args: argparse.Namespace) -> None:
    for tool in ("valgrind", "callgrind_annotate") if args.top else ("valgrind",):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} is not installed (this benchmark runs `valgrind --tool=callgrind`)")
    started = time.monotonic()
    cases = [CASES[name] for name in args.only]
    print("reign instructions-per-op benchmark (valgrind callgrind, deterministic)")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"Python {platform.python_version()} ({sys.executable}), {valgrind_version()}")
    print("Both ends run in ONE process over mutual TLS on 127.0.0.1: each figure is the sum of "
          "sender and receiver (pinger and echo) work.")
    print("instr/op = (total(N2) - total(N1)) / (N2 - N1): start-up, imports and handshakes cancel.")
    print(flush=True)
    jobs = [(kind, n) for case in cases for kind in (case.reign_kind, case.raw_kind)
            for n in (case.n1, case.n2)]
    out_dir = Path(tempfile.mkdtemp(prefix="reign-callgrind-"))
    try:
        runs = run_all(jobs, out_dir, args.jobs)
        print(file=sys.stderr, flush=True)
        report(cases, runs)
        if args.top:
            report_top(cases, runs, args.top)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - started:.1f} s ({len(jobs)} valgrind runs, {args.jobs} at a time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(CASES),
                        help=f"comma-separated subset of {','.join(CASES)} (default: all)")
    parser.add_argument("--top", type=int, default=0, metavar="K",
                        help="also list the K functions with the largest self cost per op")
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2),
                        help="valgrind children run at a time (default 1)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], int(args.child[1]))
        return
    args.only = list(dict.fromkeys(filter(None, args.only.split(","))))
    unknown = set(args.only) - set(CASES)
    if unknown or not args.only:
        parser.error(f"--only: expected a subset of {','.join(CASES)}, got {args.only}")
    parent_main(args)


if __name__ == "__main__":
    main()
