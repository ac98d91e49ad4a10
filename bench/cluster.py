"""Two-process cluster benchmark over mutual TLS on loopback, with a raw-TLS baseline.

Run: ``.venv/bin/python bench/cluster.py [--rounds 5] [--small 200000] [--big 50000]
[--pings 3000] [--kills 5] [--pinned] [--skip-pinned]``

The bench process is reign node 1; it spawns a child process (this script with ``--child``)
that is node 0 and also serves the raw-TLS baseline (``bench/_raw_tls.py``: reign's MESSAGE
framing over uvloop mutual TLS with the same certificates, BufferedProtocol reads, frames
coalesced per loop iteration, no codec). Within each round reign and the baseline alternate, so
both see the same machine noise; figures are medians over the rounds.

* one-way small: the sender sends N small messages (a dict ``{"op": "inc", "seq": i}``, and a
  tuple ``("inc", i)`` as a second row), awaiting ``node.wait_drained`` and yielding to the loop
  every 1,000; the receiver awaits ``mailbox.receive()`` for each and answers with its
  ``time.monotonic()`` when it has the N-th (CLOCK_MONOTONIC is system-wide). Rate =
  N / (receiver's time of the N-th - sender's start). The baseline sends frames of the same
  size (the CBOR bytes of one such message) and only counts them.
* one-way 4 KiB: the same with ``bytes(4096)`` messages; msgs/s and MB/s of payload.
* ping-pong: one message at a time to an echo mailbox on the child that answers it; median
  round trip in µs. Unpinned, then with both processes pinned to CPU 0 (cross-CPU wake-ups
  dominate unpinned round trips on a 2-core VM, see FACTS.md). ``--pinned`` instead pins the
  whole run (every figure) by re-executing under ``taskset -c 0``.
* kill -9: a fresh child per repetition; a watcher mailbox on this node watches an address on
  the child (``on_close_notify``); time from ``kill(SIGKILL)`` to the watcher receiving
  ``MailboxClosed``. Baseline: time to ``connection_lost`` of a raw TLS connection to the
  same child process (same kill).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reign
from reign._config import tls as _tls
from reign._core import codec as _codec

import _bench_util as util
import _raw_tls as raw

BATCH = 1000
#: A one-way run that makes no progress for this long is reported as a stall, not waited on.
STALL_SECONDS = 30.0
PARENT_ID = 1
CHILD_ID = 0
FIGURES = ("small", "tuple", "big", "pingpong", "kill")
TARGETS = {
    "small": 350_000,  # msgs/s
    "big": 60_000,  # msgs/s
    "pingpong_ratio": 1.5,  # x raw round trip
    "kill_ms": 50.0,
}


def small_dict(i: int) -> Any:
    return {"op": "inc", "seq": i}


def small_tuple(i: int) -> Any:
    return ("inc", i)


BIG = bytes(4096)


def big_bytes(i: int) -> Any:
    return BIG


# ============================================================================ child process


async def child_main(spec_path: str, raw_port: int) -> None:
    util.quiet_logs()
    spec = reign.ClusterSpec.load(spec_path)
    node = reign.create_from_spec(spec, CHILD_ID)
    cert, key, ca = spec.load_credentials(CHILD_ID)
    server_ssl = _tls.server_context(cert, key, ca)
    loop = asyncio.get_running_loop()
    async with node:
        echo_addr, echo_box = node.new_mailbox()
        sink_addr, sink_box = node.new_mailbox()
        server = await raw.serve("127.0.0.1", raw_port, server_ssl)

        async def echo() -> None:
            async for msg in echo_box:
                msg[0].send(msg[1])

        async def sink() -> None:
            receive = sink_box.receive
            while True:
                _, n, reply_to = await receive()
                cpu0 = time.process_time()
                for _ in range(n):
                    await receive()
                reply_to.send(("done", time.monotonic(), time.process_time() - cpu0))

        tasks = [asyncio.create_task(echo()), asyncio.create_task(sink())]
        print(f"ready {echo_addr} {sink_addr} {node.incarnation}", flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()  # until the parent closes our stdin
        for task in tasks:
            task.cancel()
        server.close()


class Child:
    """The other node: this script with ``--child``, optionally under ``taskset -c 0``."""

    def __init__(self, proc: asyncio.subprocess.Process, echo: str, sink: str, inc: int) -> None:
        self.proc = proc
        self.echo = echo
        self.sink = sink
        self.incarnation = inc

    @classmethod
    async def start(cls, spec_path: Path, raw_port: int, pin: bool) -> Child:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path),
                "--raw-port", str(raw_port)]
        if pin:
            argv = ["taskset", "-c", "0", *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1")
        )
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            if not line:
                raise RuntimeError("child exited before it was ready")
            if line.startswith("ready "):
                _, echo, sink, inc = line.split()
                return cls(proc, echo, sink, int(inc))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# ============================================================================ reign measurements


async def wait_up(node: reign.Node, incarnation: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        peer = node.statistics().peers[CHILD_ID]
        if peer.state == "up" and peer.incarnation == incarnation:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"child node never came up: {peer}")
        await asyncio.sleep(0.005)


def drain_diagnostics(node: reign.Node) -> str:
    """What the sender side knows about the peer when a one-way run stalls."""
    stats = node.statistics().peers[CHILD_ID]
    text = f"{stats}"
    peer = getattr(getattr(node, "_cluster", None), "peers", {}).get(CHILD_ID)
    conn = getattr(peer, "conn", None)
    if peer is not None and conn is not None:
        text += (f"; unwritten_bytes={conn.unwritten_bytes} transport_buffer={conn.transport_buffer()}"
                 f" drained_event={peer.drained.is_set()} flush_scheduled={conn.flush_scheduled}")
    return text


async def reign_oneway(
    node: reign.Node, sink: reign.Address, make: Any, n: int
) -> tuple[float, float, float]:
    """msgs/s until the receiver had the n-th message, sender CPU s, receiver CPU s.

    Bursts of BATCH sends, each followed by ``wait_drained`` (with a timeout, so a stall is
    reported instead of hanging the bench) and a yield to the loop.
    """
    reply_addr, reply_box = node.new_mailbox()
    sink.send(("count", n, reply_addr))
    send = sink.send
    wait_drained = node.wait_drained
    t0 = time.monotonic()
    cpu0 = time.process_time()
    for start in range(0, n, BATCH):
        for i in range(start, min(start + BATCH, n)):
            send(make(i))
        try:
            await wait_drained(CHILD_ID, timeout=STALL_SECONDS)
        except TimeoutError:
            raise RuntimeError(f"wait_drained stalled for {STALL_SECONDS} s after {start:,} of "
                               f"{n:,} messages: {drain_diagnostics(node)}") from None
        await asyncio.sleep(0)
    try:
        _, end, receiver_cpu = await reply_box.receive(timeout=STALL_SECONDS)
    except TimeoutError:
        raise RuntimeError(f"the receiver did not report the {n:,}th message within "
                           f"{STALL_SECONDS} s: {drain_diagnostics(node)}") from None
    sender_cpu = time.process_time() - cpu0
    reply_box.close()
    return n / (end - t0), sender_cpu, receiver_cpu


async def reign_pingpong(node: reign.Node, echo: reign.Address, n: int) -> list[float]:
    me, box = node.new_mailbox()
    send, receive = echo.send, box.receive
    perf = time.perf_counter
    times = []
    for i in range(n):
        t0 = perf()
        send((me, i))
        await receive()
        times.append(perf() - t0)
    box.close()
    return times


# ============================================================================ the run


class Results:
    def __init__(self) -> None:
        self.reign: dict[str, list[float]] = {}
        self.raw: dict[str, list[float]] = {}
        self.cpu: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def add(self, side: str, key: str, value: float) -> None:
        getattr(self, side).setdefault(key, []).append(value)

    def add_rate(self, side: str, key: str, n: int, result: tuple[float, float, float]) -> None:
        """A one-way result: the rate, and CPU µs per message on each side."""
        rate, sender_cpu, receiver_cpu = result
        self.add(side, key, rate)
        self.cpu.setdefault((side, key), []).append((sender_cpu / n * 1e6, receiver_cpu / n * 1e6))

    def med(self, side: str, key: str) -> float:
        return util.median(getattr(self, side)[key])


async def throughput_and_pingpong(
    node: reign.Node, args: argparse.Namespace, spec_path: Path, client_ssl: ssl.SSLContext,
    res: Results, pinned: bool, throughput: bool,
) -> None:
    tag = "pinned" if pinned else "unpinned"
    raw_port = util.free_ports(1)[0]
    child = await Child.start(spec_path, raw_port, pin=pinned)
    previous = util.pin_all_threads({0}) if pinned else None
    try:
        await wait_up(node, child.incarnation)
        conn = await raw.connect("127.0.0.1", raw_port, client_ssl)
        echo, sink = node.address(child.echo), node.address(child.sink)
        me = node.new_mailbox()[0]
        small_payload = _codec.encode(small_dict(123456))
        tuple_payload = _codec.encode(small_tuple(123456))
        big_payload = _codec.encode(BIG)
        ping_payload = _codec.encode((me, 1234))
        # warm up both paths (connections, pools, caches)
        await reign_oneway(node, sink, small_dict, 20_000)
        await raw.oneway(conn, lambda i: small_payload, 20_000, BATCH)
        await reign_pingpong(node, echo, 200)
        await raw.pingpong(conn, ping_payload, 200)
        only = args.only
        for _ in range(args.rounds):
            if throughput and "small" in only:
                res.add_rate("reign", "small", args.small, await reign_oneway(node, sink, small_dict, args.small))
                res.add_rate("raw", "small", args.small, await raw.oneway(conn, lambda i: small_payload, args.small, BATCH))
            if throughput and "tuple" in only:
                res.add_rate("reign", "tuple", args.small, await reign_oneway(node, sink, small_tuple, args.small))
                res.add_rate("raw", "tuple", args.small, await raw.oneway(conn, lambda i: tuple_payload, args.small, BATCH))
            if throughput and "big" in only:
                res.add_rate("reign", "big", args.big, await reign_oneway(node, sink, big_bytes, args.big))
                res.add_rate("raw", "big", args.big, await raw.oneway(conn, lambda i: big_payload, args.big, BATCH))
            if "pingpong" in only:
                for side in ("reign", "raw"):
                    cpu0, child0 = time.process_time(), util.cpu_seconds(child.proc.pid)
                    if side == "reign":
                        times = await reign_pingpong(node, echo, args.pings)
                    else:
                        times = await raw.pingpong(conn, ping_payload, args.pings)
                    res.add(side, f"rtt_{tag}", util.median(times))
                    res.cpu.setdefault((side, f"rtt_{tag}"), []).append((
                        (time.process_time() - cpu0) / args.pings * 1e6,
                        (util.cpu_seconds(child.proc.pid) - child0) / args.pings * 1e6,
                    ))
        conn.transport.close()
    finally:
        if previous is not None:
            util.restore_affinity(previous)
        await child.stop()


async def kill_test(
    node: reign.Node, args: argparse.Namespace, spec_path: Path, client_ssl: ssl.SSLContext,
    res: Results, pinned: bool,
) -> None:
    for _ in range(args.kills):
        raw_port = util.free_ports(1)[0]
        child = await Child.start(spec_path, raw_port, pin=pinned)
        await wait_up(node, child.incarnation)
        conn = await raw.connect("127.0.0.1", raw_port, client_ssl)
        echo = node.address(child.echo)
        watcher_addr, watcher = node.new_mailbox()
        echo.on_close_notify(watcher_addr)
        await reign_pingpong(node, echo, 20)  # the LINK is through and the path is warm
        await raw.pingpong(conn, b"x", 20)
        t0 = time.monotonic()
        os.kill(child.proc.pid, signal.SIGKILL)
        notice = await watcher.receive(timeout=30)
        t_reign = time.monotonic() - t0
        if not isinstance(notice, reign.MailboxClosed) or notice.id != echo.id:
            raise RuntimeError(f"unexpected notice {notice!r}")
        t_raw = await asyncio.wait_for(conn.lost, 30) - t0
        res.add("reign", "kill", t_reign * 1000)
        res.add("raw", "kill", t_raw * 1000)
        watcher.close()
        await child.proc.wait()


def report(res: Results, args: argparse.Namespace, pinned_run: bool, elapsed: float) -> None:
    rows = []

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    def rate_row(key: str, label: str, target: float | None, unit_bytes: int = 0) -> None:
        r, b = res.med("reign", key), res.med("raw", key)
        tgt = f">= {target:,} msgs/s" if target else "-"
        ok = verdict(r >= target) if target else ""
        rows.append((label, f"{r:,.0f} msgs/s", f"{b:,.0f} msgs/s", f"{r / b:.2f}", tgt, ok))
        if unit_bytes:
            rows.append((label + " (payload)", f"{r * unit_bytes / 1e6:,.1f} MB/s",
                         f"{b * unit_bytes / 1e6:,.1f} MB/s", f"{r / b:.2f}",
                         f">= {target * unit_bytes / 1e6:,.0f} MB/s" if target else "-", ""))

    if "small" in res.reign:
        rate_row("small", "one-way small dict", TARGETS["small"])
    if "tuple" in res.reign:
        rate_row("tuple", "one-way small tuple", TARGETS["small"])
    if "big" in res.reign:
        rate_row("big", "one-way 4 KiB bytes", TARGETS["big"], 4096)
    for tag in ("unpinned", "pinned"):
        key = f"rtt_{tag}"
        if key in res.reign:
            r, b = res.med("reign", key) * 1e6, res.med("raw", key) * 1e6
            limit = TARGETS["pingpong_ratio"]
            rows.append((f"ping-pong RTT median, {tag}", f"{r:,.0f} µs", f"{b:,.0f} µs",
                         f"{r / b:.2f}", f"<= {limit}x raw ({b * limit:,.0f} µs)",
                         verdict(r <= b * limit)))
    if "kill" in res.reign:
        r, b = res.med("reign", "kill"), res.med("raw", "kill")
        worst = max(res.reign["kill"])
        rows.append(("kill -9 noticed (median)", f"{r:.1f} ms", f"{b:.1f} ms", f"{r / b:.2f}" if b else "-",
                     f"<= {TARGETS['kill_ms']:.0f} ms", verdict(r <= TARGETS["kill_ms"])))
        rows.append(("kill -9 noticed (worst)", f"{worst:.1f} ms", f"{max(res.raw['kill']):.1f} ms",
                     "", f"<= {TARGETS['kill_ms']:.0f} ms", verdict(worst <= TARGETS["kill_ms"])))
    header = ("figure", "reign", "raw TLS", "reign/raw", "target", "")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(6)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for row in rows:
        print(fmt.format(*row))
    print()
    print("all samples (per round):")
    for side in ("reign", "raw"):
        for key, values in getattr(res, side).items():
            scale = 1e6 if key.startswith("rtt") else 1
            shown = ", ".join(f"{v * scale:,.1f}" if scale != 1 or key == "kill" else f"{v:,.0f}" for v in values)
            print(f"  {side:5} {key:13} {shown}")
    if res.cpu:
        print("\nCPU µs per message (one-way: sender / receiver) or per round trip (rtt: this process /"
              " echo child; from /proc, 10 ms ticks), medians over rounds:")
        for (side, key), pairs in res.cpu.items():
            snd = util.median([p[0] for p in pairs])
            rcv = util.median([p[1] for p in pairs])
            print(f"  {side:5} {key:13} {snd:6.2f} / {rcv:6.2f}")
    print(f"\ntotal {elapsed:.1f} s" + ("  (whole run pinned to CPU 0)" if pinned_run else ""))


async def parent_main(args: argparse.Namespace) -> None:
    util.quiet_logs()
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="reign-bench-"))
    try:
        spec_path = util.make_cluster(folder, [CHILD_ID, PARENT_ID], net_ticktime=60)
        spec = reign.ClusterSpec.load(spec_path)
        cert, key, ca = spec.load_credentials(PARENT_ID)
        client_ssl = _tls.client_context(cert, key, ca)
        pinned_run = os.environ.get("REIGN_BENCH_PINNED") == "1"
        print(f"reign two-process cluster benchmark: mutual TLS 1.3 (P-256) on 127.0.0.1; "
              f"Python {platform.python_version()}, uvloop, {os.cpu_count()} CPUs, "
              f"{ssl.OPENSSL_VERSION}")
        print(f"rounds {args.rounds} (medians; reign and the raw-TLS baseline alternate), "
              f"small N={args.small:,}, 4 KiB N={args.big:,}, pings {args.pings:,}, kills {args.kills}"
              + (", whole run pinned to CPU 0" if pinned_run else ""))
        print(flush=True)
        res = Results()
        node = reign.create_from_spec(spec, PARENT_ID)
        async with node:
            if args.only - {"kill"}:
                await throughput_and_pingpong(node, args, spec_path, client_ssl, res, pinned_run, True)
            if not pinned_run and not args.skip_pinned and "pingpong" in args.only:
                await throughput_and_pingpong(node, args, spec_path, client_ssl, res, True, False)
            if args.kills and "kill" in args.only:
                await kill_test(node, args, spec_path, client_ssl, res, pinned_run)
        report(res, args, pinned_run, time.monotonic() - started)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", type=int, default=200_000, help="messages per small one-way run")
    parser.add_argument("--big", type=int, default=50_000, help="messages per 4 KiB one-way run")
    parser.add_argument("--pings", type=int, default=3_000, help="round trips per ping-pong run")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 repetitions")
    parser.add_argument("--pinned", action="store_true",
                        help="pin the whole run (both processes) to CPU 0 with taskset")
    parser.add_argument("--skip-pinned", action="store_true",
                        help="do not run the pinned ping-pong after the unpinned figures")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated subset of {','.join(FIGURES)} (default: all)")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--raw-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.only = set(filter(None, args.only.split(",")))
    if args.only - set(FIGURES):
        parser.error(f"--only: unknown figures {sorted(args.only - set(FIGURES))}")
    if args.child:
        reign.run(child_main(args.child, args.raw_port))
        return
    if args.pinned and os.environ.get("REIGN_BENCH_PINNED") != "1":
        argv = ["taskset", "-c", "0", sys.executable, *sys.argv]
        os.execvpe("taskset", argv, dict(os.environ, REIGN_BENCH_PINNED="1"))
    reign.run(parent_main(args))


if __name__ == "__main__":
    main()
