"""The ported OTP examples under ``examples/`` work as their Erlang originals do.

``examples/ch3``: the channel allocator gen_server and its supervisor from the OTP Design
Principles, on one node (allocation, freeing, a crash, a kill and the restart that registers
the name again, the restart intensity) and across two real TLS nodes (a client on node 1 using
the ch3 of node 2 through its global name).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import reign
from reign.testing import make_cluster

try:
    from .cluster_util import ROOT
except ImportError:  # tests/ is not a package: pytest's rootdir-relative import
    from cluster_util import ROOT  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

CH3_DIR = ROOT / "examples" / "ch3"
#: Seconds to wait for anything that should take milliseconds; only spent when failing.
WAIT = 10.0


@pytest.fixture(scope="module")
def ex() -> Iterator[tuple[ModuleType, ModuleType]]:
    """The example's two modules, imported as the demo imports them (from its folder)."""
    import importlib

    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(CH3_DIR))
        ch3 = importlib.import_module("ch3")
        ch_sup = importlib.import_module("ch_sup")
    assert Path(ch3.__file__ or "").parent == CH3_DIR
    yield ch3, ch_sup


@pytest.fixture
async def node() -> AsyncIterator[reign.Node]:
    async with reign.no_clustering() as n:
        yield n


async def down_of(node: reign.Node, addr: reign.Address) -> Any:
    """Watch ``addr`` from a fresh mailbox and return the reason it exits with."""
    me, mbox = node.new_mailbox()
    addr.on_close_notify(me)
    msg = await mbox.receive(timeout=WAIT)
    assert type(msg) is reign.MailboxClosed and msg.id == addr.id
    mbox.close()
    return msg.reason


async def restarted(sup: reign.Address) -> reign.Address:
    """The supervisor's current ch3; the supervisor answers after any restart in progress."""
    [(child_id, child)] = await reign.Supervisor.which_children(sup)
    assert child_id == "ch3" and child is not None
    return child


# ----------------------------------------------------------------------------- one node


async def test_alloc_and_free(ex: tuple[ModuleType, ModuleType], node: reign.Node) -> None:
    ch3, ch_sup = ex
    await ch_sup.start_link(node)
    assert [await ch3.alloc(node) for _ in range(3)] == [1, 2, 3]
    ch3.free(node, 2)
    assert await ch3.alloc(node) == 2  # freed channels go to the front, as [Ch|Free]
    ch3.free(node, 99)  # never allocated: nothing changes (lists:member is false)
    assert await ch3.alloc(node) == 4


async def test_the_server_is_registered_locally_and_linked_to_its_supervisor(
    ex: tuple[ModuleType, ModuleType], node: reign.Node
) -> None:
    ch3, ch_sup = ex
    sup = await ch_sup.start_link(node)
    server = node.whereis("ch3")
    assert server is not None and server == await restarted(sup)
    assert ch3.NAME in node.registered()
    await reign.stop(sup)  # the supervisor stops its child first
    assert node.whereis("ch3") is None


async def test_a_killed_ch3_is_restarted_and_registered_again(
    ex: tuple[ModuleType, ModuleType], node: reign.Node
) -> None:
    ch3, ch_sup = ex
    sup = await ch_sup.start_link(node)
    assert await ch3.alloc(node) == 1
    old = node.whereis("ch3")
    assert old is not None
    watching = asyncio.ensure_future(down_of(node, old))
    await asyncio.sleep(0)
    reign.exit(old, "kill")
    assert await watching == "killed"
    new = await restarted(sup)
    assert new != old
    assert node.whereis("ch3") == new  # the name follows the restart
    assert await ch3.alloc(node) == 1  # a fresh state: every channel is free again
    with pytest.raises(reign.ServerExited) as exited:
        await ch3.alloc(old)  # whoever kept the old address learns it is gone
    assert exited.value.reason == "noproc"


async def test_running_out_of_channels_crashes_ch3_as_in_erlang(
    ex: tuple[ModuleType, ModuleType], node: reign.Node
) -> None:
    ch3, ch_sup = ex
    sup = await ch_sup.start_link(node)
    assert [await ch3.alloc(node) for _ in range(100)] == list(range(1, 101))
    with pytest.raises(reign.ServerExited) as exited:
        await ch3.alloc(node)  # alloc/1 has no clause for an empty free list
    crash = exited.value.reason
    assert isinstance(crash, reign.Crash) and crash.type == "ValueError" and "function_clause" in crash.message
    await restarted(sup)
    assert await ch3.alloc(node) == 1


async def test_an_unknown_request_crashes_ch3(ex: tuple[ModuleType, ModuleType], node: reign.Node) -> None:
    ch3, ch_sup = ex
    sup = await ch_sup.start_link(node)
    server = await restarted(sup)
    with pytest.raises(reign.ServerExited) as exited:
        await reign.call(server, "steal")
    assert isinstance(exited.value.reason, reign.Crash)
    assert await restarted(sup) != server


async def test_intensity_1_in_5_seconds_gives_up_on_the_second_crash(
    ex: tuple[ModuleType, ModuleType], node: reign.Node
) -> None:
    _, ch_sup = ex
    sup = await ch_sup.start_link(node)
    reign.exit(await restarted(sup), "kill")  # one restart: allowed
    second = await restarted(sup)
    watching = asyncio.ensure_future(down_of(node, sup))
    await asyncio.sleep(0)
    reign.exit(second, "kill")  # a second within 5 s: more than intensity 1
    assert await watching == "shutdown"
    assert node.whereis("ch3") is None


async def test_calls_without_a_ch3(ex: tuple[ModuleType, ModuleType], node: reign.Node) -> None:
    ch3, _ = ex
    with pytest.raises(reign.ServerExited) as exited:
        await ch3.alloc(node)
    assert exited.value.reason == "noproc"
    ch3.free(node, 1)  # a cast to nobody is dropped, as in Erlang


async def test_standalone_start_link_without_a_supervisor(ex: tuple[ModuleType, ModuleType], node: reign.Node) -> None:
    ch3, _ = ex
    me, mbox = node.new_mailbox()
    mbox.trap_exits = True
    server = await ch3.start_link(node, link=me)
    assert await ch3.alloc(node) == 1
    await reign.stop(server)
    assert await mbox.receive(timeout=WAIT) == reign.Exit(server.id, "normal")


def test_the_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, "ch_sup.py"], cwd=CH3_DIR, capture_output=True, text=True, timeout=WAIT * 3,
    )
    assert result.returncode == 0, result.stderr
    assert "allocated channels 1 and 2" in result.stdout
    assert "exited: killed" in result.stdout
    assert "(all channels free again)" in result.stdout


# ----------------------------------------------------------------------------- two TLS nodes


async def test_a_client_on_node_1_uses_ch3_on_node_2(ex: tuple[ModuleType, ModuleType], tmp_path: Path) -> None:
    ch3, ch_sup = ex
    spec = make_cluster(tmp_path, [1, 2])
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await n1.wait_connected(2, timeout=WAIT)
        sup = await ch_sup.start_link(n2, global_name="ch3")
        server = await n1.names.wait_for("ch3", timeout=WAIT)
        assert server.id.node == 2 and server == n2.whereis("ch3")

        assert await ch3.alloc(server) == 1
        assert await ch3.alloc(server) == 2
        ch3.free(server, 1)
        assert await ch3.alloc(server) == 1  # the cast arrived before the call: one ordered connection

        # A process on node 1 calls too, from its own task.
        async def client(mbox: reign.Mailbox, report: reign.Address) -> None:
            report.send(("got", await ch3.alloc(server)))

        me, mbox = n1.new_mailbox()
        n1.spawn(client, me)
        assert await mbox.receive(timeout=WAIT) == ("got", 3)

        # Kill ch3 from node 1: node 1 sees why, and node 2's supervisor restarts it under both
        # names.
        watching = asyncio.ensure_future(down_of(n1, server))
        await asyncio.sleep(0.05)  # let the watch reach node 2 before the kill
        reign.exit(server, "kill")
        assert await watching == "killed"
        # The old claim was withdrawn before the kill's notice left node 2, so the name node 1
        # sees now is the new ch3's.
        new = await n1.names.wait_for("ch3", timeout=WAIT)
        assert new != server and new == n2.whereis("ch3") == await restarted(sup)
        assert await ch3.alloc(new) == 1  # a fresh ch3
        with pytest.raises(reign.ServerExited) as exited:
            await ch3.alloc(server)
        assert exited.value.reason == "noproc"

        # Node 2 stops: a call from node 1 fails with noconnection, it does not hang.
        await n2.stop()
        with pytest.raises(reign.ServerExited) as exited:
            await ch3.alloc(new)
        assert exited.value.reason == "noconnection"

