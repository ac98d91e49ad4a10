"""Driving ``tests/fault_node.py`` children from a test, and checking what their streams saw.

A :class:`Fleet` starts children (optionally inside a network namespace), collects every JSON
event they print into one history (each event names its node and incarnation), and sends
commands. :func:`check_streams` states the delivery promise over that history:

* no message is delivered twice, out of order, or to another incarnation than it was sent to;
* a message is missing only if a down of the pair separates it from the next message the
  receiver got: every gap ends exactly at a down mark of its sender (see ``fault_node.py``);
* between two nodes still alive at the end, nothing sent after the last down is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cluster_util import ROOT

FAULT_NODE = Path(__file__).resolve().parent / "fault_node.py"

Event = dict[str, Any]


class Child:
    """One run (one incarnation) of ``fault_node.py`` for node ``node_id``."""

    def __init__(self, fleet: Fleet, node_id: int, netns: str | None) -> None:
        self.fleet = fleet
        self.node_id = node_id
        self.netns = netns
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[Event] = []
        self.ready: Event = {}
        self.reader: asyncio.Task[None] | None = None
        self.stderr_path = fleet.folder / f"node{node_id}.{len(fleet.children)}.stderr"

    async def start(self, timeout: float = 30.0) -> Event:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        argv = [*self.fleet.wrap.get(self.node_id, ()), sys.executable, str(FAULT_NODE),
                str(self.fleet.spec), str(self.node_id)]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.stderr_path, "wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=stderr, env=env, limit=1 << 22,
            )
        self.reader = asyncio.ensure_future(self._read())
        self.ready = await self.wait("ready", timeout=timeout)
        return self.ready

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            try:
                event = json.loads(line)
            except ValueError:
                event = {"ev": "garbage", "line": line.decode(errors="replace")[:200]}
            self.events.append(event)
            self.fleet.history.append(event)

    @property
    def inc(self) -> int:
        return int(self.ready["inc"])

    @property
    def inbox(self) -> str:
        return str(self.ready["inbox"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())

    def find(self, ev: str, pred: Callable[[Event], bool] = lambda e: True, since: int = 0) -> list[Event]:
        return [e for e in self.events[since:] if e["ev"] == ev and pred(e)]

    async def wait(self, ev: str, pred: Callable[[Event], bool] = lambda e: True, *,
                   since: int = 0, timeout: float = 20.0) -> Event:
        """The first event ``ev`` (from index ``since``) with ``pred`` true; fails after timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.find(ev, pred, since)
            if found:
                return found[0]
            if self.proc is not None and self.proc.returncode is not None and self.reader is not None \
                    and self.reader.done():
                raise AssertionError(f"node {self.node_id} exited ({self.proc.returncode}) before "
                                     f"{ev!r}: {self.stderr_tail()}")
            if loop.time() > deadline:
                raise TimeoutError(f"node {self.node_id} printed no {ev!r} within {timeout} s; "
                                   f"last events {self.events[-5:]}; stderr: {self.stderr_tail()}")
            await asyncio.sleep(0.02)

    async def request(self, cmd: str, reply: str, *, wait_s: float = 20.0, **fields: Any) -> Event:
        """Send ``cmd`` with a fresh id and wait (``wait_s``) for the ``reply`` event carrying it."""
        self.fleet.requests += 1
        rid = self.fleet.requests
        self.send(cmd, id=rid, **fields)
        return await self.wait(reply, lambda e: e.get("id") == rid, timeout=wait_s)

    async def lookup(self, *names: str) -> dict[str, list[str]]:
        return (await self.request("lookup", "lookup", names=list(names)))["result"]

    async def sync(self, timeout: float = 10.0) -> None:
        event = await self.request("sync", "synced", wait_s=timeout + 5, timeout=timeout)
        assert event["ok"], f"names.sync timed out on node {self.node_id}"

    def status(self, peer: int, up: bool, since: int = 0) -> list[Event]:
        return self.find("status", lambda e: e["peer"] == peer and e["up"] == up, since)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    async def kill(self) -> None:
        """kill -9, then wait for the process and for the last of its output."""
        if self.alive():
            self.signal(signal.SIGKILL)
        await self.close()

    async def exit(self, timeout: float = 10.0) -> None:
        """Graceful: end of input stops the node; kill -9 if it does not exit in time."""
        if self.alive():
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), timeout)
            except (TimeoutError, OSError, BrokenPipeError):
                self.signal(signal.SIGKILL)
        await self.close()

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot die of SIGKILL otherwise
            except ProcessLookupError:
                pass
        await self.proc.wait()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Fleet:
    """Every child of one test, and the merged history of their events."""

    def __init__(self, folder: Path, spec: Path, netns: dict[int, str] | None = None,
                 wrap: dict[int, list[str]] | None = None) -> None:
        self.folder = folder
        self.spec = spec
        self.netns = netns or {}
        self.wrap = wrap or {}  # node id -> argv prefix (e.g. one that sets an rlimit) for its children
        self.children: list[Child] = []
        self.current: dict[int, Child] = {}
        self.history: list[Event] = []
        self.requests = 0

    async def start(self, node_id: int) -> Child:
        child = Child(self, node_id, self.netns.get(node_id))
        self.children.append(child)
        self.current[node_id] = child
        await child.start()
        return child

    async def start_all(self, ids: Iterable[int]) -> list[Child]:
        return list(await asyncio.gather(*(self.start(i) for i in ids)))

    def __getitem__(self, node_id: int) -> Child:
        return self.current[node_id]

    async def wait_mesh(self, ids: Iterable[int], timeout: float = 30.0) -> None:
        """Until every listed node reports every other one up (by its latest status event)."""
        ids = list(ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = [(a, b) for a in ids for b in ids if a != b and not self.is_up(a, b)]
            if not missing:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"mesh not up within {timeout} s; missing {missing}")
            await asyncio.sleep(0.02)

    def is_up(self, node_id: int, peer: int) -> bool:
        statuses = self.current[node_id].find("status", lambda e: e["peer"] == peer)
        return bool(statuses) and statuses[-1]["up"]

    async def close(self) -> None:
        await asyncio.gather(*(c.kill() for c in self.children), return_exceptions=True)


def ranges(seqs: list[int]) -> str:
    return ", ".join(str(s) for s in seqs[:20]) + (" ..." if len(seqs) > 20 else "")


def check_streams(history: list[Event], final: dict[tuple[int, int], Event] | None = None) -> dict[str, int]:
    """Assert the delivery promise over a fleet's history (see the module docstring).

    ``final`` maps ``(node, inc)`` of each node alive at the end to its last ``report`` event;
    the tails of streams between them are then checked against the senders' ``streams``
    summaries. Returns counters for the test's own assertions and output.
    """
    violations = [e for e in history if e["ev"] == "violation"]
    assert not violations, f"delivery violations: {violations[:10]}"
    inbox_of = {(e["node"], e["inc"]): e["inbox"] for e in history if e["ev"] == "ready"}
    marks: dict[tuple[int, int, str], set[int]] = {}
    for e in history:
        if e["ev"] == "down_mark":
            marks.setdefault((e["node"], e["inc"], e["target"]), set()).add(e["seq"])
    gaps = [e for e in history if e["ev"] == "gap"]
    bad = []
    lost = 0
    for gap in gaps:
        target = inbox_of[(gap["node"], gap["inc"])]
        allowed = marks.get((gap["sender"], gap["sinc"], target), set())
        lost += gap["last"] - gap["first"] + 1
        if gap["last"] + 1 not in allowed:
            bad.append((gap, sorted(allowed)))
    assert not bad, f"messages lost while the pair stayed connected (gap, sender's down marks): {bad[:10]}"
    tails = 0
    if final is not None:
        summaries = [e for e in history if e["ev"] == "streams" and (e["node"], e["inc"]) in final]
        for summary in summaries:
            for stream in summary["streams"]:
                receiver = [k for k in final if inbox_of[k] == stream["target"]]
                if not receiver:
                    continue  # a stream to a dead incarnation: its tail fell into a down window
                got = final[receiver[0]]["received"].get(f"{summary['node']}.{summary['inc']}")
                last = got["last"] if got else -1
                missing = stream["sent"] - 1 - last
                assert missing >= 0, (stream, got)
                if missing and stream["sent"] not in stream["downs"]:
                    raise AssertionError(
                        f"node {summary['node']} -> node {receiver[0][0]}: the last {missing} of "
                        f"{stream['sent']} messages never arrived, with no down after them "
                        f"(downs at {stream['downs']})")
                tails += missing
    return {"gaps": len(gaps), "lost": lost, "tail_lost": tails,
            "downs": sum(len(v) for v in marks.values())}


async def quiesce(fleet: Fleet, ids: list[int], timeout: float = 20.0) -> dict[tuple[int, int], Event]:
    """Stop every stream, then wait until each live receiver got the last seq of each stream to
    it (or ``timeout``); returns each node's final report keyed by ``(node, inc)``."""
    marks = {i: len(fleet[i].events) for i in ids}
    for i in ids:
        fleet[i].send("stop_streams")
    summaries = {i: await fleet[i].wait("streams", since=marks[i]) for i in ids}
    expected: dict[int, dict[str, int]] = {i: {} for i in ids}
    inbox_owner = {fleet[i].inbox: i for i in ids}
    for i in ids:
        for stream in summaries[i]["streams"]:
            owner = inbox_owner.get(stream["target"])
            if owner is not None:
                expected[owner][f"{i}.{fleet[i].inc}"] = stream["sent"] - 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reports = {i: await fleet[i].request("report", "report") for i in ids}
        done = all(
            reports[r]["received"].get(key, {"last": -1})["last"] >= last
            for r in ids for key, last in expected[r].items()
        )
        if done or loop.time() > deadline:
            return {(i, fleet[i].inc): reports[i] for i in ids}
        await asyncio.sleep(0.2)
