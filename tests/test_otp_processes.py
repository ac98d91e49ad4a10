"""gen_server and supervisors across OS processes, where a kill -9 matters.

Node 1 runs in this test's loop; node 2 is a ``tests/fault_node.py`` child (real TLS, real
process) running :class:`fault_node.Echo` servers and supervisors on command. Killing node 2
with SIGKILL must end every call and stop waiting on it with ``"noconnection"`` — never a hang
— and a server whose parent was on node 2 must run ``terminate`` (if it traps exits). Timeouts
are hang guards only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import reign

from cluster_util import make_cluster
from fault_util import Child, Fleet
from otp_util import GUARD, Probe, closed_reason, wait_until, watch

pytestmark = pytest.mark.slow

TICK = 4.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[reign.Node, Child]]:
    spec = make_cluster(tmp_path, [1, 2], net_ticktime=TICK)
    fleet = Fleet(tmp_path, spec)
    try:
        async with reign.create_from_spec_file(spec, 1) as n1:
            n2 = await fleet.start(2)
            await n1.wait_connected(2, timeout=30)
            yield n1, n2
    finally:
        await fleet.close()


async def remote_server(n1: reign.Node, n2: Child, name: str) -> reign.Address:
    await n2.request("gen_server", "gen_server", name=name)
    await wait_until(lambda: n1.names.lookup(name) is not None)
    addr = n1.names.lookup(name)
    assert addr is not None
    return addr


async def test_calls_to_a_server_on_a_killed_node_fail_with_noconnection(cluster: tuple[reign.Node, Child]) -> None:
    n1, n2 = cluster
    server = await remote_server(n1, n2, "echo")
    assert await reign.call(server, ("echo", [1, "two"]), timeout=GUARD) == [1, "two"]
    with pytest.raises(reign.Failure) as failed:
        await reign.call(server, "no such request", timeout=GUARD)
    assert failed.value.type == "unknown"
    pending = [asyncio.create_task(reign.call(server, "hold", timeout=None)) for _ in range(3)]
    looping_done: list[Any] = []

    async def call_in_a_loop() -> None:  # a caller busy calling when the node dies
        try:
            while True:
                await reign.call(server, ("echo", 1), timeout=None)
        except reign.ServerExited as exc:
            looping_done.append(exc.reason)

    looping = asyncio.create_task(call_in_a_loop())
    watcher = await watch(n1, server)
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in pending)
    await n2.kill()
    for task in pending:
        with pytest.raises(reign.ServerExited) as exited:
            await asyncio.wait_for(task, GUARD)
        assert exited.value.reason == "noconnection"
    await asyncio.wait_for(looping, GUARD)
    assert looping_done == ["noconnection"]
    assert await closed_reason(watcher) == "noconnection"
    # Later calls to the lost node's server fail at once too, timeout or not.
    for timeout in (None, GUARD):
        with pytest.raises(reign.ServerExited) as again:
            await asyncio.wait_for(reign.call(server, ("echo", 2), timeout=timeout), GUARD)
        assert again.value.reason == "noconnection"


async def test_stop_of_a_server_whose_node_is_killed_raises_noconnection(cluster: tuple[reign.Node, Child]) -> None:
    n1, n2 = cluster
    server = await remote_server(n1, n2, "stubborn")
    assert await reign.call(server, "block_terminate", timeout=GUARD) == "blocking"
    stopping = asyncio.create_task(reign.stop(server, timeout=None))
    await asyncio.sleep(0.1)
    assert not stopping.done()
    await n2.kill()
    with pytest.raises(reign.ServerExited) as exited:
        await asyncio.wait_for(stopping, GUARD)
    assert exited.value.reason == "noconnection"


async def test_a_remote_supervisor_restarts_its_crashed_child_and_the_name_follows(
    cluster: tuple[reign.Node, Child],
) -> None:
    n1, n2 = cluster
    event = await n2.request("supervisor", "supervisor", name="sup.echo")
    sup = n1.address(event["sup"])
    first = n1.address(event["child"])
    await wait_until(lambda: n1.names.lookup("sup.echo") == first)
    with pytest.raises(reign.ServerExited) as crashed:
        await reign.call(first, "crash", timeout=GUARD)
    reason = crashed.value.reason
    assert isinstance(reason, reign.Crash) and (reason.type, reason.message) == ("RuntimeError", "asked to crash")
    await wait_until(lambda: n1.names.lookup("sup.echo") not in (None, first))
    second = n1.names.lookup("sup.echo")
    assert second is not None
    assert await reign.call(second, ("echo", "again"), timeout=GUARD) == "again"
    (child_id, child), = await reign.Supervisor.which_children(sup)
    assert (child_id, child) == ("echo", second)
    # killed from here: restarted there, under yet another address
    reign.exit(second, "kill")
    await wait_until(lambda: n1.names.lookup("sup.echo") not in (None, first, second))
    sup_watcher = await watch(n1, sup)
    held = asyncio.create_task(reign.call(n1.names.lookup("sup.echo"), "hold", timeout=None))  # type: ignore[arg-type]
    management = asyncio.create_task(reign.Supervisor.which_children(sup))
    await management
    await n2.kill()
    with pytest.raises(reign.ServerExited) as lost:
        await asyncio.wait_for(held, GUARD)
    assert lost.value.reason == "noconnection"
    assert await closed_reason(sup_watcher) == "noconnection"
    with pytest.raises(reign.ServerExited) as gone:
        await asyncio.wait_for(reign.Supervisor.which_children(sup), GUARD)
    assert gone.value.reason == "noconnection"
    await wait_until(lambda: n1.names.lookup("sup.echo") is None)


async def test_a_server_whose_parent_node_is_killed(cluster: tuple[reign.Node, Child]) -> None:
    n1, n2 = cluster
    parent = n1.address(n2.inbox)  # a plain mailbox of node 2: our servers' parent
    trapping_log: list[Any] = []
    trapping = await Probe.start(n1, trapping_log, trap=True, link=parent)
    plain_log: list[Any] = []
    plain = await Probe.start(n1, plain_log, link=parent)
    assert await reign.call(trapping, ("echo", 1), timeout=GUARD) == 1
    trapping_watcher = await watch(n1, trapping)
    plain_watcher = await watch(n1, plain)
    await n2.kill()
    # The parent's Exit (noconnection) runs terminate in a trapping server ...
    assert await closed_reason(trapping_watcher) == "noconnection"
    assert trapping_log[-1] == ("terminate", "noconnection")
    # ... and kills a non-trapping one without it.
    assert await closed_reason(plain_watcher) == "noconnection"
    assert plain_log == [("init", (), {})]


async def test_a_local_supervisor_restarts_a_child_that_died_of_a_lost_link(cluster: tuple[reign.Node, Child]) -> None:
    n1, n2 = cluster
    remote = n1.address(n2.inbox)
    events: list[Any] = []

    class LinkedToRemote(reign.GenServer):
        async def init(self) -> None:
            target = self.node.names.lookup("inbox.2")  # gone after the kill: then no link
            if target is not None:
                self.mailbox.link(target)
            events.append(("start", target))

    await n1.names.wait_for("inbox.2", timeout=GUARD)  # node 2's claim has reached node 1
    sup = await reign.Supervisor.start(n1, [reign.ChildSpec("linked", LinkedToRemote)], intensity=10)
    (_, first), = await reign.Supervisor.which_children(sup)
    assert events == [("start", remote)]
    first_watcher = await watch(n1, first)  # type: ignore[arg-type]
    await n2.kill()
    assert await closed_reason(first_watcher) == "noconnection"
    # restarted (again, if it still found the name before the registry dropped it) until the
    # child starts without the lost link
    await wait_until(lambda: events[-1] == ("start", None))
    (_, second), = await reign.Supervisor.which_children(sup)
    assert second not in (None, first)
    assert await reign.call(sup, ("which_children",), timeout=GUARD) == [("linked", second)]
