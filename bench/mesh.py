"""Full-mesh benchmark: N reign nodes (default 256) over mutual TLS on 127.0.0.1.

Run: ``.venv/bin/python bench/mesh.py [--nodes 256] [--procs P] [--rounds 3]
[--ticktime 60] [--timeout 300]``

The nodes are spread round-robin over P worker processes (this script with ``--worker``;
default: one per CPU, more if the file-descriptor limit requires it), each running its nodes on
one uvloop loop. Certificates for every node are made once per run (``reign._certs``, ECDSA
P-256) in a temporary folder. The bench process only coordinates, over the workers' stdin and
stdout (reign's log events go to a per-worker counter; the first few warnings to stderr).

Figures:

* time to full mesh: from "start" (every worker starts all its nodes at once) until every node
  sees every other node up (N*(N-1)/2 TLS connections, each one handshake), with progress;
* all-to-all round: every node sends one message to a mailbox on every other node
  (N*(N-1) messages); time from "go" until every mailbox has its N-1 messages; several rounds;
* memory: RSS of the worker processes per node, and per node above an idle worker (Python,
  reign and the certificates loaded, no nodes) — roughly per connection end: / (N-1).

Before starting, the run estimates its memory (connection ends x (read buffer + ~56 KiB)) and
refuses when that exceeds 75% of MemAvailable (``--force`` overrides): this machine is shared.

Two EXPERIMENT options patch reign inside the workers (never by default; the output says so):
``--read-buffer BYTES`` sets ``reign._runtime.cluster.READ_BUFFER_BYTES`` (one per node, shared by its
connections), ``--dial-limit K`` lets at most K dials (connect + TLS + HELLO) be in flight per
worker process, on top of reign's own per-node limit (``DIAL_CONCURRENCY``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reign
from reign._runtime import cluster as _reign_cluster

import _bench_util as util

#: File descriptors a worker needs beyond one per connection end and listener.
FD_MARGIN = 256
#: Read buffer each node allocates once and shares across its connections (reign._runtime.cluster);
#: only used for the memory estimate.
READ_BUFFER_BYTES: int = getattr(_reign_cluster, "READ_BUFFER_BYTES", 256 * 1024)
#: Measured RSS per connection end besides the read buffer (TLS state, transports, protocol
#: objects): ~50 KiB with 64 nodes; used only for the memory estimate.
PER_CONNECTION_END_OVERHEAD = 56 * 1024
#: RSS of a worker with Python, reign and the spec loaded, no nodes.
IDLE_WORKER_RSS = 45 * 2**20
#: How many warnings a worker prints to stderr in full (the rest are only counted).
PRINTED_WARNINGS = 5


# ============================================================================ worker process


class LogCounter:
    """A structlog processor: counts events by name and level, prints the first few warnings."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.printed = 0

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> Any:
        import structlog

        self.counts[f"{method}:{event.get('event')}"] += 1
        if method in ("warning", "error", "critical", "exception") and self.printed < PRINTED_WARNINGS:
            self.printed += 1
            print(f"[worker {os.getpid()}] {method}: {event}", file=sys.stderr, flush=True)
        raise structlog.DropEvent


async def worker_main(
    spec_path: str, ids: list[int], read_buffer: int | None, dial_limit: int | None
) -> None:
    import structlog

    from reign._runtime import cluster as _cluster

    if read_buffer:  # experiment only: what a smaller per-connection read buffer would save
        _cluster.READ_BUFFER_BYTES = read_buffer
    if dial_limit:  # experiment only: at most this many dials (TCP + TLS + HELLO) in flight
        gate = asyncio.Semaphore(dial_limit)
        dial = _cluster.Cluster._dial

        async def gated_dial(self: Any, peer: Any) -> None:
            async with gate:
                await dial(self, peer)

        _cluster.Cluster._dial = gated_dial  # type: ignore[method-assign]

    counter = LogCounter()
    structlog.configure(
        processors=[counter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(*parts: Any) -> None:
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()

    async def expect(word: str) -> list[str]:
        line = (await reader.readline()).decode()
        if not line:
            os._exit(0)
        fields = line.split(" ", 1)
        if fields[0].strip() != word:
            raise RuntimeError(f"worker expected {word!r}, got {line[:80]!r}")
        return fields[1:]

    spec = reign.ClusterSpec.load(spec_path)
    n = len(spec.nodes)
    rss_idle = util.rss_bytes()
    nodes = [reign.create_from_spec(spec, i) for i in ids]
    boxes = {}
    addresses = {}
    for node in nodes:
        addr, box = node.new_mailbox()
        boxes[node.id] = box
        addresses[node.id] = str(addr)
    up: dict[int, set[int]] = {node.id: set() for node in nodes}

    for node in nodes:
        def status(peer: int, connected: bool, mine: set[int] = up[node.id]) -> None:
            if connected:
                mine.add(peer)
            else:
                mine.discard(peer)

        node.add_connection_status_callback(status)
    say("created", rss_idle, util.rss_bytes(), json.dumps(addresses, separators=(",", ":")))

    # -------------------------------------------------------------- phase 1: form the mesh
    await expect("start")
    for node in nodes:
        await node.start()
    say("started", time.monotonic())
    want = len(nodes) * (n - 1)
    last_report = 0.0
    while True:
        links = sum(len(s) for s in up.values())
        now = time.monotonic()
        if links == want:
            break
        if now - last_report >= 1.0:
            say("progress", now, links, json.dumps(dict(counter.counts), separators=(",", ":")))
            last_report = now
        await asyncio.sleep(0.02)
    meshed_at = time.monotonic()
    # cross-check with statistics(): every peer of every local node is "up"
    for node in nodes:
        states = collections.Counter(p.state for p in node.statistics().peers.values())
        if states.get("up", 0) != n - 1:
            raise RuntimeError(f"node {node.id}: callbacks say meshed but statistics say {dict(states)}")
    say("meshed", meshed_at, util.rss_bytes())

    # -------------------------------------------------------------- phase 2: all-to-all rounds
    all_addresses = json.loads((await expect("addrs"))[0])
    targets = {
        node.id: [node.address(a) for i, a in all_addresses.items() if int(i) != node.id]
        for node in nodes
    }
    say("armed")
    while True:
        fields = await reader.readline()
        if not fields or fields.split()[0] != b"round":
            break
        r = int(fields.split()[1])
        t0 = time.monotonic()
        for node in nodes:
            msg = ("hello", node.id, r)
            for target in targets[node.id]:
                target.send(msg)
        sent_at = time.monotonic()

        async def collect(box: reign.Mailbox) -> None:
            for _ in range(n - 1):
                await box.receive()

        await asyncio.wait_for(asyncio.gather(*(collect(b) for b in boxes.values())), 120)
        say("round_done", r, time.monotonic(), sent_at - t0)

    # -------------------------------------------------------------- phase 3: report, exit
    connects = sum(p.connects for node in nodes for p in node.statistics().peers.values())
    say("stats", util.rss_bytes(), connects, json.dumps(dict(counter.counts), separators=(",", ":")))
    await expect("quit")
    os._exit(0)  # closing 10^4 TLS connections gracefully is not what this bench measures


# ============================================================================ coordinator


class Worker:
    def __init__(self, index: int, ids: list[int], proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.ids = ids
        self.proc = proc
        self.links = 0
        self.events: collections.Counter[str] = collections.Counter()

    async def line(self, word: str, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                raise RuntimeError(f"worker {self.index} exited (code {await self.proc.wait()})")
            fields = raw.decode().rstrip("\n").split(" ")
            if fields[0] == word:
                return fields[1:]
            if fields[0] == "progress":
                self.links = int(fields[2])
                self.events = collections.Counter(json.loads(fields[3]))
                continue
            raise RuntimeError(f"worker {self.index}: expected {word!r}, got {raw[:100]!r}")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")


def failures(workers: list[Worker]) -> str:
    """Handshake trouble so far, from the workers' log-event counters."""
    total: collections.Counter[str] = collections.Counter()
    for w in workers:
        total.update(w.events)
    keys = ("warning:peer.handshake.rejected", "warning:node.tls.rejected", "info:peer.dial.failed",
            "warning:peer.down")
    return ", ".join(f"{k.split(':')[1]} {total[k]:,}" for k in keys)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def plan_processes(n: int, wanted: int | None) -> tuple[int, int]:
    """(process count, fd limit per process) so every worker has enough file descriptors."""
    procs = wanted or max(2, os.cpu_count() or 2)
    procs = min(procs, n)
    while True:
        per = math.ceil(n / procs)
        need = per * n + FD_MARGIN  # (n-1) connection ends + 1 listener per node
        limit = util.raise_fd_limit(need)
        if limit >= need or procs >= n:
            return procs, limit
        if wanted:
            raise SystemExit(f"--procs {wanted}: a worker needs {need} file descriptors, limit is {limit}")
        procs += 1


async def coordinator(args: argparse.Namespace) -> int:
    util.quiet_logs()
    n = args.nodes
    folder = Path(tempfile.mkdtemp(prefix="reign-mesh-"))
    workers: list[Worker] = []
    try:
        procs, fd_limit = plan_processes(n, args.procs)
        read_buffer = args.read_buffer or READ_BUFFER_BYTES
        # One read buffer per node (reign shares it across the node's connections).
        estimate = (n * read_buffer + n * (n - 1) * PER_CONNECTION_END_OVERHEAD
                    + procs * IDLE_WORKER_RSS)
        available = mem_available()
        print(f"memory estimate: {estimate / 2**30:.1f} GiB for {n * (n - 1):,} connection ends "
              f"({PER_CONNECTION_END_OVERHEAD / 1024:.0f} KiB each) and {n} read buffers of "
              f"{read_buffer / 1024:.0f} KiB; {available / 2**30:.1f} GiB available")
        if estimate > 0.75 * available and not args.force:
            print("refusing to run: the estimate exceeds 75% of available memory (other processes "
                  "share this machine); use --read-buffer to try a smaller read buffer, or --force")
            return 2
        t = time.monotonic()
        spec_path = util.make_cluster(folder, range(n), net_ticktime=args.ticktime)
        cert_time = time.monotonic() - t
        pairs = n * (n - 1) // 2
        print(f"reign mesh benchmark: {n} nodes in {procs} processes (ids round-robin), mutual TLS "
              f"1.3 on 127.0.0.1, net_ticktime {args.ticktime:g} s, {os.cpu_count()} CPUs; "
              f"fd limit {fd_limit} per process")
        patches = []
        if args.read_buffer:
            patches.append(f"READ_BUFFER_BYTES={args.read_buffer}")
        if args.dial_limit:
            patches.append(f"at most {args.dial_limit} dials in flight per process")
        print("reign as is" if not patches else
              "EXPERIMENT, reign patched in the workers: " + "; ".join(patches))
        print(f"certificates: CA + {n} node certificates in {cert_time:.1f} s")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for index in range(procs):
            ids = list(range(index, n, procs))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path),
                "--ids", ",".join(map(str, ids)),
                *(["--read-buffer", str(args.read_buffer)] if args.read_buffer else []),
                *(["--dial-limit", str(args.dial_limit)] if args.dial_limit else []),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, limit=1 << 24,
            )
            workers.append(Worker(index, ids, proc))
        addresses: dict[str, str] = {}
        rss_idle = rss_created = 0
        for w in workers:
            idle, created, addrs = await w.line("created", 120)
            rss_idle += int(idle)
            rss_created += int(created)
            addresses.update(json.loads(addrs))
        print(f"workers ready: {procs} processes, RSS {rss_idle / 2**20:.0f} MiB idle, "
              f"{rss_created / 2**20:.0f} MiB with {n} node objects (not started)", flush=True)

        # ---------------------------------------------------------- full mesh
        t_start = time.monotonic()
        for w in workers:
            w.send("start")
        for w in workers:
            await w.line("started", 60)
        meshed: dict[int, tuple[float, int]] = {}
        pending = {w.index: asyncio.create_task(w.line("meshed", args.timeout)) for w in workers}
        next_report = t_start + args.progress
        total_links = n * (n - 1)
        while pending:
            done, _ = await asyncio.wait(pending.values(), timeout=0.2)
            for task in done:
                index = next(i for i, t in pending.items() if t is task)
                del pending[index]
                at, rss = task.result()
                meshed[index] = (float(at), int(rss))
                workers[index].links = len(workers[index].ids) * (n - 1)
            now = time.monotonic()
            if now >= next_report and pending:
                links = sum(w.links for w in workers)
                print(f"  {now - t_start:6.1f} s: {links / 2:,.0f} of {pairs:,} connections up "
                      f"({100 * links / total_links:.0f}%); {failures(workers)}", flush=True)
                next_report += args.progress
            if now - t_start > args.timeout:
                links = sum(w.links for w in workers)
                print(f"TIMEOUT: no full mesh after {args.timeout:.0f} s; {links / 2:,.0f} of "
                      f"{pairs:,} connections up; {failures(workers)}")
                for task in pending.values():
                    task.cancel()
                return 1
        mesh_time = max(at for at, _ in meshed.values()) - t_start
        rss_meshed = sum(rss for _, rss in meshed.values())
        print(f"time to full mesh: {mesh_time:.1f} s  ({pairs:,} TLS connections, every node sees "
              f"every other up; per process: " + ", ".join(
                  f"{meshed[w.index][0] - t_start:.1f} s" for w in workers)
              + f"; RSS then {rss_meshed / 2**20:,.0f} MiB)", flush=True)

        # ---------------------------------------------------------- all-to-all rounds
        blob = json.dumps(addresses, separators=(",", ":"))
        for w in workers:
            w.send(f"addrs {blob}")
        for w in workers:
            await w.line("armed", 120)
        round_times = []
        for r in range(args.rounds):
            t_go = time.monotonic()
            for w in workers:
                w.send(f"round {r}")
            ends, send_times = [], []
            for w in workers:
                _, end, send_time = await w.line("round_done", 180)
                ends.append(float(end))
                send_times.append(float(send_time))
            round_times.append(max(ends) - t_go)
            print(f"all-to-all round {r + 1}: {n * (n - 1):,} messages (one per ordered node pair) "
                  f"in {round_times[-1] * 1000:,.0f} ms  (sending took {max(send_times) * 1000:,.0f} ms "
                  f"per process; {n * (n - 1) / round_times[-1]:,.0f} msgs/s)", flush=True)

        # ---------------------------------------------------------- memory and counters
        for w in workers:
            w.send("done")
        rss_end = 0
        connects = 0
        events: collections.Counter[str] = collections.Counter()
        for w in workers:
            rss, c, counts = await w.line("stats", 60)
            rss_end += int(rss)
            connects += int(c)
            events.update(json.loads(counts))
        per_node = rss_end / n
        above_idle = (rss_end - rss_idle) / n
        print(f"memory: {rss_end / 2**20:,.0f} MiB RSS in {procs} processes = {per_node / 2**20:.1f} MiB "
              f"per node; {above_idle / 2**20:.1f} MiB per node above idle workers "
              f"(~{above_idle / (n - 1) / 1024:.0f} KiB per connection end)")
        print(f"connections made: {connects // 2:,} for {pairs:,} pairs "
              f"({connects // 2 - pairs:,} reconnects); log events: "
              + (", ".join(f"{k}={v}" for k, v in sorted(events.items())) or "none"))
        print(f"summary: nodes {n}, mesh {mesh_time:.1f} s, all-to-all "
              + "/".join(f"{t * 1000:.0f}" for t in round_times) + " ms, "
              f"{per_node / 2**20:.1f} MiB/node")
        return 0
    finally:
        for w in workers:
            if w.proc.returncode is None:
                try:
                    w.send("quit")
                except (ConnectionError, RuntimeError):
                    pass
        for w in workers:
            try:
                await asyncio.wait_for(w.proc.wait(), 3)
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=256)
    parser.add_argument("--procs", type=int, default=None,
                        help="worker processes (default: one per CPU, more if fds require)")
    parser.add_argument("--rounds", type=int, default=3, help="all-to-all rounds")
    parser.add_argument("--ticktime", type=float, default=60.0, help="net_ticktime, seconds")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on the mesh after this")
    parser.add_argument("--progress", type=float, default=5.0, help="progress line every so many s")
    parser.add_argument("--read-buffer", type=int, default=None, metavar="BYTES",
                        help="EXPERIMENT: patch reign._runtime.cluster.READ_BUFFER_BYTES (256 KiB, one per "
                             "node) in the workers to show what it costs")
    parser.add_argument("--dial-limit", type=int, default=None, metavar="K",
                        help="EXPERIMENT: patch reign so each worker process has at most K dials "
                             "(connect + TLS + HELLO) in flight, on top of reign's per-node DIAL_CONCURRENCY")
    parser.add_argument("--force", action="store_true",
                        help="run even if the memory estimate exceeds 75%% of MemAvailable")
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        util.raise_fd_limit(len(args.ids.split(",")) * 256 + FD_MARGIN)
        reign.run(worker_main(args.worker, [int(i) for i in args.ids.split(",")], args.read_buffer,
                               args.dial_limit))
        return
    if not 2 <= args.nodes <= 256:
        parser.error("--nodes must be 2..256")
    sys.exit(reign.run(coordinator(args)))


if __name__ == "__main__":
    main()
