"""Links, watches and exit reasons across OS processes, where a kill -9 matters.

Node 1 runs in the test; nodes 2 and 3 are ``tests/link_node.py`` children. Killing a node
with SIGKILL must end, on every other node, the processes linked to its processes (whichever
side made the link) with ``"noconnection"``, tell their watchers the same, and hand trapping
ones ``Exit(id, "noconnection")``. A graceful stop says ``"shutdown"`` instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import reign
from reign import Exit, MailboxClosed

from cluster_util import ROOT, make_cluster, wait_for
from proc_util import HANG, Observer, on

pytestmark = pytest.mark.slow

LINK_NODE = Path(__file__).resolve().parent / "link_node.py"


class Child:
    """A ``link_node.py`` child: JSON commands in, JSON events out."""

    def __init__(self, spec: Path, node_id: int, folder: Path) -> None:
        self.spec = spec
        self.node_id = node_id
        self.stderr_path = folder / f"node{node_id}.stderr"
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.reader: asyncio.Task[None] | None = None
        self.requests = 0

    async def start(self) -> dict[str, Any]:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(self.stderr_path, "wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(LINK_NODE), str(self.spec), str(self.node_id),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env,
            )
        self.reader = asyncio.ensure_future(self._read())
        return await self.wait("ready", timeout=30)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())

    def find(self, ev: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["ev"] == ev and all(e.get(k) == v for k, v in match.items())]

    async def wait(self, ev: str, timeout: float = HANG, **match: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (found := self.find(ev, **match)):
            if self.reader is not None and self.reader.done():
                raise AssertionError(f"node {self.node_id} ended before {ev} {match}: {self.stderr()}")
            if loop.time() > deadline:
                raise TimeoutError(f"node {self.node_id}: no {ev} {match}; events {self.events[-5:]}; {self.stderr()}")
            await asyncio.sleep(0.01)
        return found[0]

    async def request(self, cmd: str, reply: str, **fields: Any) -> dict[str, Any]:
        self.requests += 1
        self.send(cmd, id=self.requests, **fields)
        return await self.wait(reply, id=self.requests)

    async def spawn(self, tag: str, *, trap: bool, link: reign.Address | None = None) -> str:
        self.send("spawn", tag=tag, trap=trap, link=None if link is None else str(link))
        await self.wait("started", tag=tag)
        return str((await self.wait("spawned", tag=tag))["addr"])

    async def links(self, addr: str) -> list[str]:
        return list((await self.request("links", "links", addr=addr))["links"])

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.close()

    async def stop(self) -> None:
        """End of input: the node stops gracefully."""
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), HANG)
            except TimeoutError:
                self.proc.send_signal(signal.SIGKILL)
        await self.close()

    async def close(self) -> None:
        if self.proc is None:
            return
        await self.proc.wait()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, HANG)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


async def _wait_links(child: Child, addr: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG
    while len(links := await child.links(addr)) < count:
        assert loop.time() < deadline, f"{addr} on node {child.node_id} has links {links}, expected {count}"
        await asyncio.sleep(0.01)


async def test_kill_nine_ends_links_and_watches_on_every_other_node_with_noconnection(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2, 3])
    c2, c3 = Child(spec, 2, tmp_path), Child(spec, 3, tmp_path)
    try:
        async with reign.create_from_spec_file(spec, 1) as n1:
            await asyncio.gather(c2.start(), c3.start())
            await n1.wait_connected(timeout=30)
            await c2.request("wait_connected", "connected")
            await c3.request("wait_connected", "connected")

            victim = n1.address(await c3.spawn("victim", trap=False))
            obs = Observer(n1)
            obs.watch(victim)
            plain = await obs.linked(victim, trap=False)  # node 1 -> node 3
            trapper = await obs.linked(victim, trap=True)
            back_plain = await obs.process()
            back_trap = await obs.process(trap=True)
            rev = n1.address(await c3.spawn("rev", trap=False, link=back_plain))  # node 3 -> node 1
            rev_trap = n1.address(await c3.spawn("rev_trap", trap=True, link=back_trap))
            c2.send("watch", tag="w", addr=str(victim))  # node 2 -> node 3
            await c2.spawn("c2_plain", trap=False, link=victim)
            await c2.spawn("c2_trap", trap=True, link=victim)
            await _wait_links(c3, str(victim), 4)  # node 3 has all four links to the victim
            await wait_for(lambda: _links(n1, back_plain) == {rev.id} and _links(n1, back_trap) == {rev_trap.id})

            await c3.kill()

            await obs.expect(
                MailboxClosed(victim.id, "noconnection"),
                MailboxClosed(plain.id, "noconnection"),
                ("got", trapper, Exit(victim.id, "noconnection")),
                MailboxClosed(back_plain.id, "noconnection"),
                ("got", back_trap, Exit(rev_trap.id, "noconnection")),
            )
            await obs.alive(trapper)
            await obs.alive(back_trap)
            v = str(victim)
            assert (await c2.wait("down", tag="w"))["reason"] == "noconnection"
            assert (await c2.wait("down", tag="c2_plain"))["reason"] == "noconnection"
            assert (await c2.wait("got", tag="c2_trap"))["msg"] == {"Exit": [v, "noconnection"]}
            assert n1.statistics().peers[2].state == "up"  # the survivors stay connected
            assert len(c2.find("down")) == 2 and len(c2.find("got")) == 1
    finally:
        await asyncio.gather(c2.kill(), c3.kill())


async def _crasher(mbox: reign.Mailbox) -> None:
    await mbox.receive()
    raise ValueError("crashed on node 1")


async def test_reasons_cross_processes_and_a_graceful_stop_says_shutdown(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2])
    c2 = Child(spec, 2, tmp_path)
    try:
        async with reign.create_from_spec_file(spec, 1) as n1:
            await c2.start()
            await n1.wait_connected(2, timeout=30)

            victim = n1.address(await c2.spawn("victim", trap=False))
            obs = Observer(n1)
            obs.watch(victim)
            plain = await obs.linked(victim, trap=False)
            trapper = await obs.linked(victim, trap=True)

            catcher = n1.address(await c2.spawn("catcher", trap=True))
            crasher = n1.spawn(_crasher, link=catcher)
            await _wait_links(c2, str(catcher), 1)
            crasher.send("go")
            got = await c2.wait("got", tag="catcher")
            assert got["msg"] == {"Exit": [str(crasher), {"Crash": ["ValueError", "crashed on node 1"]}]}

            async def exiter(mbox: reign.Mailbox) -> None:
                reign.exit(catcher, ("custom", 1))
                reign.exit(catcher, "normal")

            sender = n1.spawn(exiter)
            await wait_for(lambda: len(c2.find("got", tag="catcher")) == 3)
            assert [e["msg"] for e in c2.find("got", tag="catcher")[1:]] == [
                {"Exit": [str(sender), ["custom", 1]]}, {"Exit": [str(sender), "normal"]},
            ]
            reign.exit(catcher, "kill")
            assert (await c2.wait("down", tag="catcher"))["reason"] == "killed"

            await _wait_links(c2, str(victim), 2)
            await c2.stop()
            await obs.expect(
                MailboxClosed(victim.id, "shutdown"),
                MailboxClosed(plain.id, "shutdown"),
                ("got", trapper, Exit(victim.id, "shutdown")),
            )
            assert on(n1, trapper).send("ping")
            assert await obs.box.receive(timeout=HANG) == ("got", trapper, "ping")
    finally:
        await c2.kill()


def _links(node: reign.Node, addr: reign.Address) -> set[reign.MailboxID]:
    mbox = node.local_mailbox(addr.id)
    return set(mbox.links) if mbox is not None else set()
