"""Processes on one node: spawn, exit reasons, exit signals, trap_exits, check_messages.

The contract: "Processes, exit reasons, links" in API.md (round 2). Links and the same reasons
across two nodes are in ``test_links.py``; here everything runs on a ``no_clustering()`` node.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

import reign
from reign import Crash, Exit, MailboxClosed
from reign._runtime.process import current_process

from cluster_util import drain
from proc_util import HANG, Observer, roundtrip


@reign.register_type(name="test.processes.Reason")
@dataclass(frozen=True)
class Reason:
    code: int
    detail: str


class AppError(Exception):
    pass


class Unregistered:
    pass


@pytest.fixture
async def node() -> Any:
    async with reign.no_clustering() as n:
        yield n


async def _idle(mbox: reign.Mailbox) -> None:
    await mbox.receive()


# ------------------------------------------------------------------------ spawn


async def test_spawn_runs_fn_later_with_its_mailbox_and_args(node: reign.Node) -> None:
    seen: list[Any] = []

    async def fn(mbox: reign.Mailbox, a: int, b: str) -> None:
        seen.append((mbox.address, a, b, current_process() is mbox))
        seen.append(await mbox.receive())

    addr = node.spawn(fn, 1, "two")
    assert seen == []  # not inside spawn
    assert addr.send("hello") is True  # its mailbox exists at once: the message waits
    await asyncio.sleep(0)
    assert seen[0] == (addr, 1, "two", True)
    await asyncio.sleep(0)
    assert seen[1] == "hello"


async def test_current_process_is_none_outside_and_inherited_by_tasks_it_starts(node: reign.Node) -> None:
    assert current_process() is None
    inner: list[Any] = []

    async def fn(mbox: reign.Mailbox) -> None:
        async def helper() -> None:
            inner.append(current_process())

        await asyncio.create_task(helper())

    addr, mbox, task = node.spawn_process(fn, ())
    await asyncio.wait_for(task, HANG)
    assert inner == [mbox]


async def test_returning_exits_normal(node: reign.Node) -> None:
    obs = Observer(node)

    async def fn(mbox: reign.Mailbox) -> int:
        return 42  # the value is not a reason

    proc = node.spawn(fn)
    obs.watch(proc)
    await obs.expect(MailboxClosed(proc.id, "normal"))
    assert proc.send("late") is False


async def test_raising_exits_with_a_crash_naming_the_exception(node: reign.Node) -> None:
    obs = Observer(node)

    async def fails_here(mbox: reign.Mailbox) -> None:
        await asyncio.sleep(0)
        raise ValueError("bad thing 42")

    with capture_logs() as logs:
        addr, mbox, task = node.spawn_process(fails_here, ())
        obs.watch(addr)
        down = await obs.box.receive(timeout=HANG)
    assert type(down) is MailboxClosed and down.id == addr.id
    crash = down.reason
    assert type(crash) is Crash
    assert (crash.type, crash.message) == ("ValueError", "bad thing 42")
    assert type(crash.traceback) is str
    assert "Traceback" in crash.traceback and "fails_here" in crash.traceback
    assert crash.traceback.rstrip().endswith("ValueError: bad thing 42")
    assert str(crash) == "ValueError: bad thing 42"
    assert mbox.reason == crash
    assert [e["event"] for e in logs if e["event"].startswith("process.")] == ["process.crashed"]
    await asyncio.wait_for(task, HANG)  # the task itself ends quietly


async def test_crash_of_an_application_exception_names_its_module(node: reign.Node) -> None:
    obs = Observer(node)

    async def fn(mbox: reign.Mailbox) -> None:
        raise AppError()

    proc = node.spawn(fn)
    obs.watch(proc)
    down = await obs.box.receive(timeout=HANG)
    assert down.reason.type == f"{AppError.__module__}.AppError"
    assert down.reason.message == "" and str(down.reason) == down.reason.type


async def test_node_stop_exits_every_process_with_shutdown() -> None:
    node = reign.no_clustering()
    await node.start()
    cleanup: list[str] = []

    async def fn(mbox: reign.Mailbox) -> None:
        try:
            await mbox.receive()
        finally:
            cleanup.append("ran")

    procs = [node.spawn_process(fn, ()) for _ in range(3)]
    await asyncio.sleep(0)
    await node.stop()
    assert [mbox.reason for _, mbox, _ in procs] == ["shutdown"] * 3
    assert all(task.done() for _, _, task in procs)
    assert cleanup == ["ran"] * 3
    with pytest.raises(RuntimeError, match="stopped"):
        node.spawn(fn)


async def test_task_cancelled_by_other_code_exits_with_shutdown(node: reign.Node) -> None:
    obs = Observer(node)
    addr, mbox, task = node.spawn_process(_idle, ())
    obs.watch(addr)
    await asyncio.sleep(0)
    task.cancel()
    await obs.expect(MailboxClosed(addr.id, "shutdown"))


@pytest.mark.parametrize(
    ("signal", "reason"),
    [("boom", "boom"), ("kill", "killed"), ("shutdown", "shutdown"), (("custom", 1), ("custom", 1))],
)
async def test_exit_signal_before_the_first_step_runs_none_of_fn(node: reign.Node, signal: Any, reason: Any) -> None:
    obs = Observer(node)
    ran: list[str] = []

    async def fn(mbox: reign.Mailbox) -> None:
        ran.append("first line")

    addr, mbox, task = node.spawn_process(fn, ())
    obs.watch(addr)
    reign.exit(addr, signal)
    await obs.expect(MailboxClosed(addr.id, reason))
    await asyncio.wait_for(asyncio.wait([task]), HANG)
    assert ran == [] and task.cancelled()


async def test_close_and_node_stop_before_the_first_step_run_none_of_fn() -> None:
    ran: list[str] = []

    async def fn(mbox: reign.Mailbox) -> None:
        ran.append("first line")

    async with reign.no_clustering() as node:
        obs = Observer(node)
        addr, mbox, _ = node.spawn_process(fn, ())
        obs.watch(addr)
        mbox.close(("closed", "early"))
        await obs.expect(MailboxClosed(addr.id, ("closed", "early")))
        _, mbox2, task2 = node.spawn_process(fn, ())
    assert mbox2.reason == "shutdown" and task2.done()
    assert ran == []


async def test_spawn_link_links_before_fn_starts(node: reign.Node) -> None:
    obs = Observer(node)
    target, tbox = node.new_mailbox()
    ran: list[str] = []

    async def fn(mbox: reign.Mailbox) -> None:
        ran.append("ran")

    addr, mbox, _ = node.spawn_process(fn, (), link=target)
    assert mbox.links == {target.id} and tbox.links == {addr.id}
    obs.watch(addr)
    tbox.close("gone")  # before fn's first step: the linked process exits without running
    await obs.expect(MailboxClosed(addr.id, "gone"))
    assert ran == []


@pytest.mark.parametrize("where", ["closed", "unknown serial", "other incarnation", "other node"])
async def test_spawn_link_to_a_gone_target_exits_before_running(node: reign.Node, where: str) -> None:
    obs = Observer(node)
    closed, cbox = node.new_mailbox()
    cbox.close()
    target = {
        "closed": closed,
        "unknown serial": node.address(f"<0.{node.incarnation}.999999>"),
        "other incarnation": node.address(f"<0.{node.incarnation + 1}.1>"),
        "other node": node.address("<5.1.1>"),
    }[where]
    ran: list[str] = []

    async def fn(mbox: reign.Mailbox) -> None:
        ran.append("ran")

    addr, mbox, task = node.spawn_process(fn, (), link=target)
    assert mbox.closed  # at once, inside spawn
    expected = "noconnection" if where == "other node" else "noproc"
    assert mbox.reason == expected
    obs.watch(addr)
    await obs.expect(MailboxClosed(addr.id, "noproc"))  # watching it now: already gone
    await asyncio.wait_for(asyncio.wait([task]), HANG)
    assert ran == []


async def test_spawn_refuses_bad_arguments_and_leaves_no_mailbox(node: reign.Node) -> None:
    before = node.statistics().mailboxes
    with pytest.raises(TypeError):
        node.spawn(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        node.spawn(_idle, link="<0.1.1>")  # type: ignore[arg-type]
    assert node.statistics().mailboxes == before


async def test_spawn_off_the_loop_thread_raises(node: reign.Node) -> None:
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            node.spawn(_idle)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(HANG)
    assert len(errors) == 1 and type(errors[0]) is RuntimeError


async def test_closing_its_own_mailbox_ends_the_process_at_its_next_await(node: reign.Node) -> None:
    obs = Observer(node)
    ran: list[str] = []

    async def fn(mbox: reign.Mailbox) -> None:
        ran.append("before")
        mbox.close(Reason(3, "done"))
        ran.append("same step")
        await asyncio.sleep(0)
        ran.append("after await")

    proc = node.spawn(fn)
    obs.watch(proc)
    await obs.expect(MailboxClosed(proc.id, Reason(3, "done")))
    assert ran == ["before", "same step"]


async def test_closing_a_waiting_process_from_outside_ends_it_with_that_reason(node: reign.Node) -> None:
    obs = Observer(node)
    addr, mbox, task = node.spawn_process(_idle, ())
    obs.watch(addr)
    await asyncio.sleep(0)
    mbox.close()
    await obs.expect(MailboxClosed(addr.id, "normal"))
    await asyncio.wait_for(asyncio.wait([task]), HANG)
    assert task.done()


async def test_the_signal_reason_stands_whatever_fn_does_after_it(node: reign.Node) -> None:
    obs = Observer(node)

    async def returns_anyway(mbox: reign.Mailbox) -> None:
        try:
            await mbox.receive()
        except asyncio.CancelledError:
            return  # swallowed: still "killed", not "normal"

    async def raises_anyway(mbox: reign.Mailbox) -> None:
        try:
            await mbox.receive()
        except asyncio.CancelledError:
            raise ValueError("while ending") from None  # not a Crash either

    with capture_logs() as logs:
        procs = [node.spawn_process(fn, ()) for fn in (returns_anyway, raises_anyway)]
        for addr, _, _ in procs:
            obs.watch(addr)
        await asyncio.sleep(0)
        reign.exit(procs[0][0], "kill")
        reign.exit(procs[1][0], ("custom", 2))
        await obs.expect(MailboxClosed(procs[0][0].id, "killed"), MailboxClosed(procs[1][0].id, ("custom", 2)))
        await asyncio.wait([task for _, _, task in procs], timeout=HANG)
    assert not [e for e in logs if e["event"] == "process.crashed"]


async def test_a_process_spawned_by_a_process_is_its_own_sender(node: reign.Node) -> None:
    target, tbox = node.new_mailbox()
    tbox.trap_exits = True
    children: list[reign.Address] = []

    async def child(mbox: reign.Mailbox) -> None:
        assert current_process() is mbox
        reign.exit(target, "from child")

    async def parent(mbox: reign.Mailbox) -> None:
        children.append(node.spawn(child))
        reign.exit(target, "from parent")
        await mbox.receive()

    me = node.spawn(parent)
    got = [await tbox.receive(timeout=HANG) for _ in range(2)]
    assert got == [Exit(me.id, "from parent"), Exit(children[0].id, "from child")]
    assert children[0] != me
    reign.exit(me, "kill")


# ------------------------------------------------------------------------ reasons


@pytest.mark.parametrize(
    "reason",
    ["normal", "shutdown", "custom", ("tuple", 1, [2.5, None]), Reason(7, "seven"), {"k": b"v"}, 0, None],
)
async def test_close_reason_reaches_watchers_unchanged(node: reign.Node, reason: Any) -> None:
    obs = Observer(node)
    addr, mbox = node.new_mailbox()
    obs.watch(addr)
    mbox.close(reason)
    await obs.expect(MailboxClosed(addr.id, reason))
    assert mbox.reason == reason
    mbox.close("again")  # idempotent: the first reason stands
    assert mbox.reason == reason
    obs.expect_nothing()


@pytest.mark.parametrize("reason", [{1, 2}, Unregistered(), ("ok", {3}), object(), "\ud800", ("ok", "\udc00")])
async def test_close_with_a_reason_that_cannot_cross_nodes_raises_and_closes_nothing(
    node: reign.Node, reason: Any
) -> None:
    obs = Observer(node)
    addr, mbox = node.new_mailbox()
    obs.watch(addr)
    linked = await obs.linked(addr, trap=True)
    with pytest.raises(reign.EncodeError):
        mbox.close(reason)
    assert not mbox.closed and mbox.reason is None
    assert addr.send("still open") is True and mbox.receive_nowait() == "still open"
    with pytest.raises(reign.EncodeError):
        reign.exit(addr, reason)
    await roundtrip(node, node)
    obs.expect_nothing()  # no notice, no Exit: nothing happened
    mbox.close("now")
    await obs.expect(MailboxClosed(addr.id, "now"), ("got", linked, Exit(addr.id, "now")))


async def test_watch_of_a_gone_or_unreachable_target_says_noproc_or_noconnection(node: reign.Node) -> None:
    obs = Observer(node)
    closed, cbox = node.new_mailbox()
    cbox.close("earlier")
    unknown = node.address(f"<0.{node.incarnation}.999999>")
    foreign = node.address("<9.1.1>")
    for target in (closed, unknown, foreign):
        obs.watch(target)
    await obs.expect(
        MailboxClosed(closed.id, "noproc"), MailboxClosed(unknown.id, "noproc"), MailboxClosed(foreign.id, "noconnection")
    )


# ------------------------------------------------------------------------ exit signals and trap_exits


@pytest.mark.parametrize("reason", ["boom", "shutdown", ("custom", [1]), Reason(1, "x")])
async def test_exit_ends_a_non_trapping_target_with_the_reason(node: reign.Node, reason: Any) -> None:
    obs = Observer(node)
    proc = await obs.process()
    reign.exit(proc, reason)
    await obs.expect(MailboxClosed(proc.id, reason))


async def test_exit_normal_does_nothing_to_a_non_trapping_target(node: reign.Node) -> None:
    obs = Observer(node)
    proc = await obs.process()
    plain, pbox = node.new_mailbox()
    obs.watch(plain)
    reign.exit(proc, "normal")
    reign.exit(plain, "normal")
    await roundtrip(node, node)
    await obs.alive(proc)
    assert not pbox.closed
    obs.expect_nothing()


async def test_trapping_target_gets_exit_with_the_calling_process_as_sender(node: reign.Node) -> None:
    obs = Observer(node)
    trapper = await obs.process(trap=True)

    async def sender(mbox: reign.Mailbox, target: reign.Address) -> None:
        for reason in ("boom", "normal", ("t", 2), "shutdown"):
            reign.exit(target, reason)
        await mbox.receive()

    sender_addr = node.spawn(sender, trapper)
    await obs.expect(
        ("got", trapper, Exit(sender_addr.id, "boom")),
        ("got", trapper, Exit(sender_addr.id, "normal")),
        ("got", trapper, Exit(sender_addr.id, ("t", 2))),
        ("got", trapper, Exit(sender_addr.id, "shutdown")),
    )
    await obs.alive(trapper)


async def test_exit_from_outside_any_process_has_no_sender(node: reign.Node) -> None:
    obs = Observer(node)
    trapper = await obs.process(trap=True)
    reign.exit(trapper, "boom")
    await obs.expect(("got", trapper, Exit(None, "boom")))

    done = threading.Event()

    def from_thread() -> None:
        reign.exit(trapper, "from a thread")
        done.set()

    threading.Thread(target=from_thread).start()
    assert done.wait(HANG)
    await obs.expect(("got", trapper, Exit(None, "from a thread")))


async def test_plain_mailbox_trapping_exits_gets_exit_messages(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    mbox.trap_exits = True
    reign.exit(addr, "boom")
    reign.exit(addr, "normal")
    assert drain(mbox) == [Exit(None, "boom"), Exit(None, "normal")]
    mbox.trap_exits = False  # flag off again: exit signals end it
    reign.exit(addr, "boom2")
    assert mbox.closed and mbox.reason == "boom2"


async def test_kill_cannot_be_trapped(node: reign.Node) -> None:
    obs = Observer(node)
    trapper = await obs.process(trap=True)
    reign.exit(trapper, "kill")
    await obs.expect(MailboxClosed(trapper.id, "killed"))


async def test_a_process_exiting_itself_with_normal_ends(node: reign.Node) -> None:
    obs = Observer(node)
    ran: list[str] = []

    async def fn(mbox: reign.Mailbox) -> None:
        reign.exit(mbox.address, "normal")
        await asyncio.sleep(0)
        ran.append("after")

    proc = node.spawn(fn)
    obs.watch(proc)
    await obs.expect(MailboxClosed(proc.id, "normal"))
    assert ran == []


async def test_a_trapping_process_exiting_itself_gets_the_exit_message(node: reign.Node) -> None:
    got: list[Any] = []

    async def fn(mbox: reign.Mailbox) -> None:
        mbox.trap_exits = True
        reign.exit(mbox.address, "normal")
        got.append(await mbox.receive(timeout=HANG))

    addr, _, task = node.spawn_process(fn, ())
    await asyncio.wait_for(task, HANG)
    assert got == [Exit(addr.id, "normal")]


async def test_exit_to_a_gone_target_is_ignored(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    mbox.close("first")
    reign.exit(addr, "boom")
    reign.exit(addr, "kill")
    reign.exit(node.address(f"<0.{node.incarnation}.99999>"), "boom")
    reign.exit(node.address("<3.1.1>"), "boom")  # another node, unreachable here: dropped
    assert mbox.reason == "first"


async def test_exit_refuses_a_non_address(node: reign.Node) -> None:
    addr, _ = node.new_mailbox()
    with pytest.raises(TypeError):
        reign.exit(str(addr), "boom")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reign.exit(addr.id, "boom")  # type: ignore[arg-type]


async def test_messages_sent_before_an_exit_arrive_before_the_exit(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    mbox.trap_exits = True

    async def fn(me: reign.Mailbox) -> None:
        for i in range(3):
            addr.send(i)
        reign.exit(addr, "then this")
        addr.send("after")

    sender, _, task = node.spawn_process(fn, ())
    await asyncio.wait_for(task, HANG)
    assert drain(mbox) == [0, 1, 2, Exit(sender.id, "then this"), "after"]


# ------------------------------------------------------------------------ check_messages


async def test_without_check_messages_local_sends_deliver_the_same_object() -> None:
    async with reign.no_clustering(check_messages=False) as node:
        assert node.check_messages is False
        addr, mbox = node.new_mailbox()
        value = {1, 2}
        assert addr.send(value) is True
        assert mbox.receive_nowait() is value


async def test_check_messages_refuses_what_could_not_cross_nodes() -> None:
    async with reign.no_clustering(check_messages=True) as node:
        assert node.check_messages is True
        addr, mbox = node.new_mailbox()
        for bad in ({1, 2}, Unregistered(), [1, {"x": {2}}], frozenset()):
            with pytest.raises(reign.EncodeError):
                addr.send(bad)
        assert len(mbox) == 0
        assert addr.send(("fine", 1)) is True  # the mailbox still works


async def test_check_messages_delivers_a_copy() -> None:
    async with reign.no_clustering(check_messages=True) as node:
        addr, mbox = node.new_mailbox()
        inner = [1, 2]
        value = {"list": inner, "tuple": (1, "a", b"b"), "reason": Reason(1, "r"), "none": None}
        assert addr.send(value) is True
        inner.append(3)  # mutating after the send does not reach the receiver
        got = mbox.receive_nowait()
        assert got == {"list": [1, 2], "tuple": (1, "a", b"b"), "reason": Reason(1, "r"), "none": None}
        assert got is not value and got["list"] is not inner
        assert type(got["tuple"]) is tuple and type(got["reason"]) is Reason


async def test_check_messages_keeps_addresses_usable() -> None:
    async with reign.no_clustering(check_messages=True) as node:

        async def echo(mbox: reign.Mailbox) -> None:
            async for reply_to, payload in mbox:
                reply_to.send(("echo", payload))

        me, mbox = node.new_mailbox()
        server = node.spawn(echo)
        assert server.send((me, [me.id])) is True
        reply = await mbox.receive(timeout=HANG)
        assert reply == ("echo", [me.id])
        assert node.send_named("missing", {1}) is False  # no such name: nothing is encoded
        node.register("echo", server)
        with pytest.raises(reign.EncodeError):
            node.send_named("echo", {1})
        assert node.send_named("echo", (me, "named")) is True
        assert await mbox.receive(timeout=HANG) == ("echo", "named")


@pytest.mark.parametrize(("env", "option", "expected"), [
    ("1", None, True), ("0", None, False), ("", None, False), ("1", False, False), ("0", True, True),
])
async def test_check_messages_environment_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, option: bool | None, expected: bool
) -> None:
    monkeypatch.setenv("REIGN_CHECK_MESSAGES", env)
    async with reign.no_clustering(check_messages=option) as node:
        assert node.check_messages is expected
        addr, _ = node.new_mailbox()
        if expected:
            with pytest.raises(reign.EncodeError):
                addr.send({1})
        else:
            assert addr.send({1}) is True
