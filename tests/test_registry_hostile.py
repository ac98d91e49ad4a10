"""The registry against a hostile authenticated peer, over real TLS to real nodes (issue 13, 1 and 4).

Node 2 (the victim) holds a local claimant of ``svc``; node 3 (a bystander, ``net_ticktime`` 4)
is connected to it; node 1 is a hand-driven peer (``cluster_util.raw_peer``: node 1's real
certificate, a correct HELLO, frames built with reign's own ``PeerProtocol``) that sends crafted
registry CONTROL frames. Each scenario asserts the bound (time per frame, tracemalloc, notices
received), that the refusal is logged with its reason, and that the victim keeps serving the
bystander (no down transition, and a message round trip afterwards).

Before (issue 13, and ``bench/registry_hostile.py`` on the previous code): 30,000 claims of one
name in one frame blocked the loop 12.8 s, the bystander declared the victim down and the
claimant got 30,000 notices; 400,000 claims cost 294 MiB (traced); an unfinished snapshot held its
claims as long as the peer stayed connected; flapping a name sent one notice per flip; a 1 MiB
name was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import reign
from reign._core.codec import decode, encode
from reign._core.protocol import Control
from reign._core.registry_wire import DEFAULT_FRAME_CLAIMS, DEFAULT_PEER_CLAIMS, FRAME_BUDGET

from cluster_util import drain, make_cluster, raw_peer, wait_connected, wait_for

HOSTILE, VICTIM, BYSTANDER = 1, 2, 3
#: The generous bound on one frame's processing in these tests: FRAME_BUDGET (the design target,
#: measured ~12 ms for a frame at the limit) times 5, for a shared CI machine. Before: 12.8 s.
FRAME_BOUND = 5 * FRAME_BUDGET
#: The longest the victim's loop may stall (a 5 ms probe timer): one tick interval of the
#: bystander (net_ticktime 4 s / 4), the "tick budget" the issue states.
STALL_BOUND = 1.0
#: Median cost of one lookup of a name with 30,000 claimants. Before: 47-111 us here (2.4 ms
#: in the issue's run), as lookup sorted every claimant; now it reads one attribute (~0.5 us).
LOOKUP_BOUND = 10e-6
#: One peer's claims may cost the node this much (tracemalloc, over the baseline): the ~64 MiB
#: the issue asks for. Before: 294 MiB for 400,000 claims.
PEER_MEMORY_BUDGET = 64 * 2**20
#: What may stay allocated after the peer's claims are dropped (logs, caches, buffers).
RELEASED_SLACK = 8 * 2**20
#: registry_snapshot_timeout in the unfinished-snapshot test (seconds).
SNAPSHOT_TIMEOUT = 3.0


@pytest.fixture
def own_heap() -> Iterator[None]:
    """Keep the rest of the test process's heap out of the cyclic GC while a test times frames:
    a full collection of everything earlier tests left behind would land in some frame and be
    counted as its cost (the victim's own objects are still collected as usual)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return make_cluster(tmp_path, [HOSTILE, VICTIM, BYSTANDER], net_ticktime=4,
                        registry_snapshot_timeout=SNAPSHOT_TIMEOUT)


class Hostile:
    """Node 1 by hand: ticks (so it stays up), reads the victim's frames, sends crafted ones."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: Any) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.controls: list[Any] = []
        self.closed = asyncio.Event()
        self.seq = 0
        self.tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._tick())]

    @classmethod
    async def connect(cls, spec: Path, victim: reign.Node, *, snapshot: bool = True) -> Hostile:
        peer = cls(*await raw_peer(spec, HOSTILE, victim))
        if snapshot:
            peer.send(["reg.begin"])
            peer.send(["reg.end"])
            assert await peer.synced()
        return peer

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(1 << 20):
                for event in self.protocol.receive_data(data):
                    if type(event) is Control:
                        self.controls.append(decode(event.payload, lambda m: m))
        except (ConnectionError, reign.ProtocolError):
            pass
        finally:
            self.closed.set()

    async def _tick(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not self.closed.is_set():
                await asyncio.sleep(0.5)
                self.writer.write(self.protocol.tick())

    def frame(self, payload: Any) -> bytes:
        return self.protocol.control(encode(payload))  # type: ignore[no-any-return]

    def send(self, payload: Any) -> None:
        self.writer.write(self.frame(payload))

    async def send_frames(self, frames: list[bytes], every: int = 10) -> bool:
        """Write ``frames``, ``every`` at a time, each batch once the victim applied the one
        before (a ``reg.sync`` round trip); False as soon as the victim closed the connection.

        (A peer that writes everything at once makes the victim's connection process every
        frame its TLS buffer holds back to back: the bound per frame holds, the loop time per
        read is the connection layer's to bound, for every frame type alike.)"""
        for start in range(0, len(frames), every):
            with contextlib.suppress(ConnectionError):
                for frame in frames[start:start + every]:
                    self.writer.write(frame)
            if not await self.synced():
                return False
        return True

    async def synced(self, timeout: float = 60) -> bool:
        """True once the victim has applied everything sent; False if it closed instead."""
        self.seq += 1
        seq = self.seq
        with contextlib.suppress(ConnectionError):
            self.send(["reg.sync", seq])
        deadline = time.monotonic() + timeout
        while ["reg.synced", seq] not in self.controls:
            if self.closed.is_set():
                return False
            assert time.monotonic() < deadline, "the victim neither answered nor closed"
            await asyncio.sleep(0.005)
        return True

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.writer.transport.abort()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Probe:
    """A 5 ms timer on the victim's loop: ``worst`` is the longest it fired late."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - t - 0.005)

    async def stop(self) -> float:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return self.worst


def frame_times(node: reign.Node) -> list[float]:
    """Seconds ``node`` spends on each registry frame (its names.control, as the cluster calls it)."""
    times: list[float] = []
    names: Any = node.names
    handler = names.control

    def timed(peer: int, payload: Any) -> None:
        t = time.perf_counter()
        try:
            handler(peer, payload)
        finally:
            times.append(time.perf_counter() - t)

    names.control = timed
    return times


class Cluster:
    """The victim and the bystander, with their status logs."""

    def __init__(self, victim: reign.Node, bystander: reign.Node) -> None:
        self.victim, self.bystander = victim, bystander
        self.claimant, self.mbox = victim.new_mailbox()
        victim.names.register("svc", self.claimant)
        self.bystander_saw: list[tuple[int, bool]] = []
        bystander.add_connection_status_callback(lambda peer, up: self.bystander_saw.append((peer, up)))

    async def still_serving(self) -> None:
        """The bystander never saw the victim go down, and a round trip through it works now."""
        assert (VICTIM, False) not in self.bystander_saw
        echo, echo_box = self.victim.new_mailbox()
        me, my_box = self.bystander.new_mailbox()
        self.bystander.address(str(echo)).send(("ping", str(me)))
        msg = await echo_box.receive(timeout=10)
        self.victim.address(msg[1]).send("pong")
        assert await my_box.receive(timeout=10) == "pong"
        self.bystander.names.register("after", me)
        await self.bystander.names.sync(timeout=10)
        assert self.victim.names.lookup("after") == self.victim.address(str(me))

    def notices(self) -> int:
        return sum(isinstance(m, reign.MultipleClaim) for m in drain(self.mbox))


@contextlib.asynccontextmanager
async def victim_and_bystander(spec: Path) -> AsyncIterator[Cluster]:
    victim = reign.create_from_spec_file(spec, VICTIM)
    bystander = reign.create_from_spec_file(spec, BYSTANDER)
    async with victim, bystander:
        await wait_connected([victim, bystander])
        yield Cluster(victim, bystander)


def refusals(logs: list[dict[str, Any]]) -> list[str]:
    return [e["reason"] for e in logs if e["event"] == "peer.protocol_error" and e.get("node") == VICTIM
            and e.get("peer") == HOSTILE]


def changes(names: list[str], first_serial: int = 1, op: str = "+") -> list[Any]:
    return ["reg.changes", [v for i, name in enumerate(names) for v in (op, name, first_serial + i)]]


# ------------------------------------------------------------------------------ scenario 1


@pytest.mark.usefixtures("own_heap")
async def test_30000_claims_of_one_name_in_one_frame_are_refused_at_once(spec: Path) -> None:
    async with victim_and_bystander(spec) as c:
        peer = await Hostile.connect(spec, c.victim)
        frame = peer.frame(changes(["svc"] * 30_000))  # 263 KiB
        times = frame_times(c.victim)
        with capture_logs() as logs:
            probe = Probe()
            peer.writer.write(frame)
            await asyncio.wait_for(peer.closed.wait(), 10)
            stall = await probe.stop()
        assert len(times) == 1 and times[0] < FRAME_BOUND
        assert stall < STALL_BOUND
        [reason] = refusals(logs)
        assert f"30000 records, over the limit of {DEFAULT_FRAME_CLAIMS} per frame (registry_frame_claims)" in reason
        await wait_for(lambda: c.victim.statistics().peers[HOSTILE].state != "up")
        assert c.victim.names.lookup_all("svc") == [c.claimant]  # nothing of the frame applied
        await asyncio.sleep(0.3)
        assert c.notices() == 0
        await c.still_serving()
        await peer.aclose()


@pytest.mark.usefixtures("own_heap")
async def test_30000_claims_of_one_name_at_the_frame_limit_stay_within_the_budget(spec: Path) -> None:
    async with victim_and_bystander(spec) as c:
        peer = await Hostile.connect(spec, c.victim)
        frames = [peer.frame(changes(["svc"] * 5000, 1 + 5000 * i)) for i in range(6)]
        times = frame_times(c.victim)
        probe = Probe()
        peer.writer.write(b"".join(frames))  # all at once: the victim reads them back to back
        assert await peer.synced()
        stall = await probe.stop()
        assert len(times) == 7 and max(times) < FRAME_BOUND, times
        assert stall < STALL_BOUND
        names = c.victim.names
        assert len(names.lookup_all("svc")) == 30_001 and names.multiple_claim_count == 1
        # One notice at once, at most one more for the rest of the burst (the interval's end).
        await asyncio.sleep(1.5)
        assert 1 <= c.notices() <= 2
        samples = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(1000):
                names.lookup("svc")
            samples.append((time.perf_counter() - t) / 1000)
        assert statistics.median(samples) < LOOKUP_BOUND
        assert names.lookup("svc") == c.victim.address(f"<{HOSTILE}.7.1>")  # the smallest
        await c.still_serving()
        await peer.aclose()
        await wait_for(lambda: names.lookup_all("svc") == [c.claimant])


# ------------------------------------------------------------------------------ scenario 4


async def test_400000_distinct_claims_from_one_peer_cost_at_most_the_peer_budget(spec: Path) -> None:
    async with victim_and_bystander(spec) as c:
        peer = await Hostile.connect(spec, c.victim)
        frames = [peer.frame(changes([f"n{i:07d}" for i in range(a, a + 5000)], a + 1))
                  for a in range(0, 400_000, 5000)]
        with capture_logs() as logs:
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                assert not await peer.send_frames(frames, every=4)
                peak = tracemalloc.get_traced_memory()[1] - baseline
                await wait_for(lambda: not c.victim.names.seen_names("n0000000")[0])
                held = tracemalloc.get_traced_memory()[0] - baseline
            finally:
                tracemalloc.stop()
        [reason] = refusals(logs)
        assert f"over the limit of {DEFAULT_PEER_CLAIMS} (registry_peer_claims)" in reason
        assert peak < PEER_MEMORY_BUDGET, f"{peak / 2**20:.1f} MiB"
        assert held < RELEASED_SLACK, f"{held / 2**20:.1f} MiB still held"
        assert not any(c.victim.names.seen_names("n0000001", "n0199999"))
        await c.still_serving()
        await peer.aclose()


async def test_an_unfinished_snapshot_is_dropped_after_its_timeout(spec: Path) -> None:
    async with victim_and_bystander(spec) as c:
        peer = await Hostile.connect(spec, c.victim, snapshot=False)
        names = [f"u{i:06d}" for i in range(50_000)]
        frames = [peer.frame(["reg.begin"])]
        frames += [peer.frame(["reg.chunk", [v for i in range(a, a + 5000) for v in (names[i], i + 1)]])
                   for a in range(0, len(names), 5000)]
        with capture_logs() as logs:
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                t0 = time.monotonic()
                assert await peer.send_frames(frames, every=4)  # applied as it arrives...
                assert all(c.victim.names.seen_names(names[0], names[-1]))
                pending = tracemalloc.get_traced_memory()[0] - baseline
                await asyncio.wait_for(peer.closed.wait(), SNAPSHOT_TIMEOUT + 5)
                elapsed = time.monotonic() - t0
                held = tracemalloc.get_traced_memory()[0] - baseline
            finally:
                tracemalloc.stop()
        assert elapsed >= SNAPSHOT_TIMEOUT - 0.5  # ...until its deadline, not before
        assert not any(c.victim.names.seen_names(names[0], names[-1]))
        assert pending > 8 * 2**20 and held < pending / 4, (pending, held)  # the memory was released
        [timeout] = [e for e in logs if e["event"] == "names.snapshot.timeout"]
        assert timeout["peer"] == HOSTILE and timeout["claims"] == len(names)
        [reason] = refusals(logs)
        assert "registry snapshot not complete" in reason and "registry_snapshot_timeout" in reason
        await c.still_serving()
        await peer.aclose()


async def test_a_peer_that_never_begins_its_snapshot_is_disconnected_too(spec: Path) -> None:
    async with victim_and_bystander(spec) as c:
        with capture_logs() as logs:
            peer = await Hostile.connect(spec, c.victim, snapshot=False)
            assert await peer.synced()  # it answers syncs, ticks, and sends nothing else
            await asyncio.wait_for(peer.closed.wait(), SNAPSHOT_TIMEOUT + 5)
        [reason] = refusals(logs)
        assert "registry snapshot not complete" in reason and "0 claims received" in reason
        await c.still_serving()
        await peer.aclose()


async def test_a_peer_flapping_a_name_causes_a_handful_of_notices(spec: Path) -> None:
    async with victim_and_bystander(spec) as c:
        peer = await Hostile.connect(spec, c.victim)
        flips = 20_000
        frames = [peer.frame(["reg.changes", [op, "svc", 1]]) for _ in range(flips) for op in "+-"]
        frames.append(peer.frame(["reg.changes", ["+", "svc", 1]]))  # ends in conflict
        t0 = time.monotonic()
        assert await peer.send_frames(frames, every=500)
        elapsed = time.monotonic() - t0
        interval = c.victim.spec.registry_notice_interval  # type: ignore[union-attr]
        await asyncio.sleep(interval + 0.5)  # the coalesced notice of the last interval
        got = c.notices()
        # Before: one notice per flip (20,001). Now: one at once, then at most one per interval;
        # and the conflict that stands at the end is reported.
        assert 2 <= got <= 2 + elapsed / interval, (got, elapsed)
        assert c.victim.names.lookup_all("svc") == [c.victim.address(f"<{HOSTILE}.7.1>"), c.claimant]
        await c.still_serving()
        await peer.aclose()


async def test_a_remote_name_of_1_mib_is_refused(spec: Path) -> None:
    async with victim_and_bystander(spec) as c:
        peer = await Hostile.connect(spec, c.victim)
        with capture_logs() as logs:
            peer.send(["reg.changes", ["+", "ok", 1, "+", "x" * 2**20, 2]])
            await asyncio.wait_for(peer.closed.wait(), 10)
        [reason] = refusals(logs)
        assert "a name is at most 512 UTF-8 bytes, this one is 1048576" in reason
        assert c.victim.names.seen_names("ok", "x" * 2**20) == [False, False]
        await c.still_serving()
        await peer.aclose()


async def test_a_second_snapshot_on_one_connection_is_refused(spec: Path) -> None:
    async with victim_and_bystander(spec) as c:
        peer = await Hostile.connect(spec, c.victim)
        peer.send(changes(["kept"]))
        assert await peer.synced()
        with capture_logs() as logs:
            peer.send(["reg.begin"])  # would set aside every claim of the peer in one frame
            await asyncio.wait_for(peer.closed.wait(), 10)
        [reason] = refusals(logs)
        assert "a second snapshot on one connection" in reason
        await c.still_serving()
        await peer.aclose()


# ------------------------------------------------------------------------------ the sender's side


async def test_a_node_refuses_local_claims_its_peers_would_refuse(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2], net_ticktime=4, registry_peer_claims=13)
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await wait_connected([n1, n2])
        addr, _ = n1.new_mailbox()
        for i in range(10):
            n1.names.register(f"s{i}", addr)  # one claim unit each
        n1.names.register("y" * 512, addr)  # three units: 13, the limit
        with pytest.raises(reign.CantGloballyRegisterError, match=r"registry_peer_claims"):
            n1.names.register("z" * 512, addr)  # 16 > 13
        n1.names.register("s0", addr)  # already claimed: a no-op, not refused
        n1.names.unregister("y" * 512, addr)
        n1.names.register("last", addr)
        n1.names.register("more", addr)
        await n1.names.sync(timeout=10)
        assert all(n2.names.seen_names(*(f"s{i}" for i in range(10)), "last", "more"))
        assert n2.statistics().peers[1].connects == 1  # never refused, never redialled
