"""The registry against a hostile peer: issue 13's scenarios 1 and 4, measured over real TLS.

Run: ``.venv/bin/python bench/registry_hostile.py [--only one_name,spread,many,unfinished,flap,long_name]``

Node 2 (the victim) runs in this process with a local claimant of ``svc``; node 3 (a
bystander, same loop) is connected to it; every node has ``net_ticktime`` 4. Node 1 is a
hand-driven peer: node 1's real certificate, a correct HELLO, then crafted registry CONTROL
frames built with reign's own sans-IO protocol object. Each scenario reports what the node did
with the frames (applied, or the connection closed and why), the longest the loop stalled
(a 5 ms probe timer), what the local claimant received, and memory (RSS growth, as the issue
measured it, each scenario in a fresh process; with ``--tracemalloc`` also traced memory):

* ``one_name``: 30,000 claims of ``svc`` in one ``reg.changes`` frame.
* ``spread``: the same 30,000 claims in frames of 5,000 (the largest a node accepts by
  default), then ``lookup("svc")`` timed.
* ``many``: 400,000 distinct claims in frames of 5,000.
* ``unfinished``: ``reg.begin`` and 150,000 claims in chunks, never ``reg.end``; watched for
  ``--unfinished-wait`` seconds (the victim's spec sets ``registry_snapshot_timeout`` to 5 s
  where the code knows it).
* ``flap``: 100,000 pairs of frames ``+svc`` / ``-svc`` (one change each).
* ``long_name``: one claim whose name is 1 MiB.

The bystander's view of the victim (``peer.down`` events) is reported for every scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import uvloop

import reign
from reign._config.certs import cluster_identity
from reign._config.tls import client_context
from reign._core.codec import decode, encode
from reign._core.protocol import Control, Established, PeerProtocol
from reign.testing import make_cluster

from _bench_util import quiet_logs

SCENARIOS = ("one_name", "spread", "many", "unfinished", "flap", "long_name")
HOSTILE, VICTIM, BYSTANDER = 1, 2, 3
PROBE_INTERVAL = 0.005


def traced_mib() -> float:
    return tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else 0.0


def memory(rss0: float, traced0: float) -> str:
    text = f"RSS {rss_mib() - rss0:+.1f} MiB"
    if tracemalloc.is_tracing():
        text += f", traced {traced_mib() - traced0:+.1f} MiB (peak {peak_mib() - traced0:+.1f})"
    return text


def peak_mib() -> float:
    return tracemalloc.get_traced_memory()[1] / 2**20 if tracemalloc.is_tracing() else 0.0


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class LagProbe:
    """A timer every 5 ms; ``worst`` is the longest it fired late (the loop was blocked)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(PROBE_INTERVAL)
            self.worst = max(self.worst, loop.time() - t - PROBE_INTERVAL)

    def stop(self) -> float:
        self.task.cancel()
        return self.worst


class HostilePeer:
    """Node 1 by hand: TLS with its real certificate, HELLO/ACCEPT, ticks, crafted CONTROL."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: PeerProtocol) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.controls: list[Any] = []
        self.closed = asyncio.get_running_loop().create_future()
        self.tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._tick())]
        self.seq = 0
        self.error: Exception | None = None

    @classmethod
    async def connect(cls, spec_path: Path, victim: reign.Node) -> HostilePeer:
        cert, key, ca = reign.ClusterSpec.load(spec_path).load_credentials(HOSTILE)
        host, port = victim.spec.node(victim.id).listen_address  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection(host, port, ssl=client_context(cert, key, ca))
        protocol = PeerProtocol(local_node=HOSTILE, local_incarnation=7, cluster_id=cluster_identity(ca),
                                expected_peer=victim.id, max_frame_bytes=64 * 2**20)
        writer.write(protocol.data_to_send())
        events: list[Any] = []
        while Established not in map(type, events):
            events += protocol.receive_data(await asyncio.wait_for(reader.read(65536), 10))
            writer.write(protocol.data_to_send())
        peer = cls(reader, writer, protocol)
        while victim.statistics().peers[HOSTILE].state != "up":
            await asyncio.sleep(0.01)
        return peer

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(1 << 20):
                for event in self.protocol.receive_data(data):
                    if type(event) is Control:
                        self.controls.append(decode(event.payload, lambda m: m))
        except Exception as exc:
            self.error = exc
        if not self.closed.done():
            self.closed.set_result(None)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.writer.write(self.protocol.tick())

    def send(self, payload: Any) -> None:
        self.writer.write(self.protocol.control(encode(payload)))

    async def drain(self) -> None:
        await self.writer.drain()

    async def synced(self, timeout: float = 120.0) -> bool:
        """Ask the victim to answer once it applied everything sent; False if it closed instead."""
        self.seq += 1
        seq = self.seq
        try:
            self.send(["reg.sync", seq])
            await self.drain()
        except ConnectionError:
            return False
        deadline = time.monotonic() + timeout
        while ["reg.synced", seq] not in self.controls:
            if self.closed.done():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError("no reg.synced")
            await asyncio.sleep(0.005)
        return True

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.writer.transport.abort()


def claims_frames(kind: str, names: list[str], per_frame: int, op: str | None = "+") -> list[Any]:
    """``kind`` payloads claiming ``names`` (serial i + 1 for the i-th), ``per_frame`` each."""
    frames = []
    for start in range(0, len(names), per_frame):
        flat: list[Any] = []
        for i in range(start, min(start + per_frame, len(names))):
            flat += ([op] if op else []) + [names[i], i + 1]
        frames.append([kind, flat])
    return frames


def scenario_payloads(scenario: str) -> list[Any]:
    if scenario == "one_name":
        return [["reg.changes", [x for i in range(30_000) for x in ("+", "svc", i + 1)]]]
    if scenario == "spread":
        return claims_frames("reg.changes", ["svc"] * 30_000, 5000)
    if scenario == "many":
        return claims_frames("reg.changes", [f"n{i:07d}" for i in range(400_000)], 5000)
    if scenario == "unfinished":
        return [["reg.begin"], *claims_frames("reg.chunk", [f"u{i:07d}" for i in range(150_000)], 5000, op=None)]
    if scenario == "flap":
        return [["reg.changes", [op, "svc", 1]] for _ in range(100_000) for op in ("+", "-")]
    if scenario == "long_name":
        return [["reg.changes", ["+", "x" * 2**20, 1]]]
    raise SystemExit(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")


def time_frames(victim: reign.Node) -> list[float]:
    """Seconds the victim spends on each registry frame (its ``names.control``)."""
    times: list[float] = []
    names: Any = victim.names
    handler = names.control

    def timed(peer: int, payload: Any) -> None:
        t = time.perf_counter()
        try:
            handler(peer, payload)
        finally:
            times.append(time.perf_counter() - t)

    names.control = timed
    return times


async def run(spec: Path, scenario: str, args: argparse.Namespace) -> None:
    victim = reign.create_from_spec_file(spec, VICTIM)
    bystander = reign.create_from_spec_file(spec, BYSTANDER)
    downs: list[int] = []
    victim_downs: list[tuple[int, bool]] = []
    async with victim, bystander:
        bystander.add_connection_status_callback(lambda p, up: downs.append(p) if not up else None)
        victim.add_connection_status_callback(lambda p, up: victim_downs.append((p, up)))
        await victim.wait_connected(BYSTANDER, timeout=20)
        addr, mbox = victim.new_mailbox()
        victim.names.register("svc", addr)
        peer = await HostilePeer.connect(spec, victim)
        peer.send(["reg.begin"])
        peer.send(["reg.end"])
        assert await peer.synced()
        if scenario == "unfinished":  # a new connection, whose snapshot never ends
            peer.close()
            await asyncio.sleep(0.2)
            peer = await HostilePeer.connect(spec, victim)
            victim_downs.clear()
        payloads = scenario_payloads(scenario)
        frames = [peer.protocol.control(encode(p)) for p in payloads]  # built before measuring
        del payloads
        frame_times = time_frames(victim)
        gc.collect()
        rss0, traced0 = rss_mib(), traced_mib()
        if tracemalloc.is_tracing():
            tracemalloc.reset_peak()
        probe = LagProbe()
        t0 = time.perf_counter()
        outcome = ""
        try:
            for i, frame in enumerate(frames):
                peer.writer.write(frame)
                if i % 200 == 199:
                    await peer.drain()
            await peer.drain()
        except ConnectionError:
            pass
        del frames
        if scenario == "unfinished":
            answered = await peer.synced()
            t_sent = time.perf_counter() - t0
            held = memory(rss0, traced0)
            waited = 0.0
            while waited < args.unfinished_wait and not peer.closed.done():
                await asyncio.sleep(0.25)
                waited += 0.25
            gc.collect()
            outcome = (f"150k claims sent in {t_sent:.2f} s, {'answered' if answered else 'closed'}, "
                       f"{held} held; after {waited:.1f} s: connection "
                       f"{'closed' if peer.closed.done() else 'still open'}, {memory(rss0, traced0)}")
        else:
            applied = await peer.synced()
            elapsed = time.perf_counter() - t0
            outcome = (f"{'applied' if applied else 'connection closed'} after {elapsed:.2f} s, "
                       f"{memory(rss0, traced0)}")
        lag = probe.stop()
        await asyncio.sleep(1.0)  # late notices
        notices = 0
        while True:
            try:
                msg = mbox.receive_nowait()
            except reign.Empty:
                break
            notices += isinstance(msg, reign.MultipleClaim)
        samples = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(1000):
                victim.names.lookup("svc")
            samples.append((time.perf_counter() - t) / 1000)
        worst = max(frame_times, default=0.0)
        print(f"{scenario:>10}: {outcome}")
        print(f"{'':>10}  {len(frame_times)} frames, the costliest {worst * 1000:.1f} ms; "
              f"loop stalled at most {lag * 1000:.0f} ms; local claimant got {notices} MultipleClaim; "
              f"lookup('svc') {statistics.median(samples) * 1e6:.1f} us; "
              f"bystander saw the victim down {downs.count(VICTIM)} time(s); "
              f"victim saw node 1 go down {victim_downs.count((HOSTILE, False))} time(s)")
        peer.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_cluster(Path(tmp), [HOSTILE, VICTIM, BYSTANDER], net_ticktime=4, **tuning())
        if args.tracemalloc:
            tracemalloc.start()
        await run(spec, args.only, args)


def tuning() -> dict[str, Any]:
    """Spec fields the code under test knows (the bench also runs against older code)."""
    fields = getattr(reign.ClusterSpec, "__dataclass_fields__", {})
    return {"registry_snapshot_timeout": 5} if "registry_snapshot_timeout" in fields else {}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--unfinished-wait", type=float, default=8.0)
    parser.add_argument("--tracemalloc", action="store_true", help="also report traced memory (slower)")
    arguments = parser.parse_args()
    scenarios = arguments.only.split(",")
    if len(scenarios) > 1:  # each in a fresh process, so RSS growth is its own
        for scenario in scenarios:
            extra = ["--tracemalloc"] if arguments.tracemalloc else []
            subprocess.run([sys.executable, __file__, "--only", scenario,
                            "--unfinished-wait", str(arguments.unfinished_wait), *extra], check=False)
    else:
        quiet_logs()
        uvloop.run(main(arguments))
