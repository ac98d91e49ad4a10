"""The connector across real OS processes: kill -9, restart with a new incarnation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import reign

from cluster_util import ChildNode, make_cluster, wait_for

pytestmark = pytest.mark.slow


async def test_kill_nine_notifies_watchers_and_restart_gets_new_incarnation(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2], net_ticktime=4)
    child = ChildNode(spec, 2)
    try:
        async with reign.create_from_spec_file(spec, 1) as n1:
            incarnation = int(await child.read_line("incarnation "))
            echo = n1.address(await child.read_line("ready "))
            assert echo.id.incarnation == incarnation
            me, mbox = n1.new_mailbox()
            echo.send((me, "ping"))
            assert await mbox.receive(timeout=20) == ("echo", 2, "ping")

            echo.on_close_notify(me)
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            child.kill()
            assert await mbox.receive(timeout=20) == reign.MailboxClosed(echo.id, "noconnection")
            noticed = loop.time() - killed_at
            assert noticed < 4  # the kernel resets the socket: no need to wait for ticks
            assert n1.statistics().peers[2].state == "down"
            assert echo.send((me, "lost")) is True  # buffered: node 2 may come back as it was

            child = ChildNode(spec, 2)
            new_incarnation = int(await child.read_line("incarnation "))
            new_echo = n1.address(await child.read_line("ready "))
            assert new_incarnation != incarnation
            assert new_echo.id.serial == echo.id.serial  # same serial, other incarnation
            await wait_for(lambda: n1.statistics().peers[2].state == "up")
            assert echo.send((me, "to the dead run")) is False
            new_echo.send((me, "ping again"))
            assert await mbox.receive(timeout=20) == ("echo", 2, "ping again")
            await asyncio.sleep(0.2)
            assert len(mbox) == 0  # nothing addressed to the old incarnation was delivered
            assert n1.statistics().peers[2].dropped_messages == 1  # the buffered "lost" one
    finally:
        child.kill()
        child.stop()


async def test_messages_between_processes_keep_order(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, [1, 2])
    child = ChildNode(spec, 2)
    try:
        async with reign.create_from_spec_file(spec, 1) as n1:
            echo = n1.address(await child.read_line("ready "))
            me, mbox = n1.new_mailbox()
            for i in range(5000):
                echo.send((me, i))
                if i % 500 == 0:
                    await n1.wait_drained(2, timeout=20)
            got = [await mbox.receive(timeout=30) for _ in range(5000)]
            assert got == [("echo", 2, i) for i in range(5000)]
    finally:
        child.stop()
