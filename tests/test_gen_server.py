"""gen_server: start and init, names, call / cast / info, deferred replies, failures and crashes,
timeouts and late replies, self-calls, stop, trap_exits and the parent, timers.

Most tests take ``pair`` and run three times: on one node, on one node with ``check_messages``
(every local send goes through the codec), and across two real TLS nodes in this process (the
server on node 1, the client on node 2, so requests, replies, Failures and exit reasons cross
the wire). Timeouts are hang guards only; the assertions are on exact outcomes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import reign

from otp_util import GUARD, LAYOUTS, Probe, answerer, closed_reason, node_pair, seen_from, settle, wait_until, watch

Pair = tuple[reign.Node, reign.Node]


@pytest.fixture(params=LAYOUTS)
async def pair(request: Any, tmp_path: Path) -> AsyncIterator[Pair]:
    async with node_pair(request.param, tmp_path) as nodes:
        yield nodes


@pytest.fixture
async def node() -> AsyncIterator[reign.Node]:
    async with reign.no_clustering() as n:
        yield n


async def start_probe(pair: Pair, log: list[Any], *args: Any, **kwargs: Any) -> tuple[reign.Address, reign.Address]:
    """A Probe on the server node: ``(address on the server node, address as the client sees it)``."""
    server_node, client_node = pair
    addr = await Probe.start(server_node, log, *args, **kwargs)
    return addr, seen_from(client_node, addr)


# ------------------------------------------------------------------------------ start and init


async def test_init_gets_the_arguments_and_start_returns_after_it(pair: Pair) -> None:
    log: list[Any] = []
    _, addr = await start_probe(pair, log, 1, "two", colour="red")
    assert log == [("init", (1, "two"), {"colour": "red"})]
    assert await reign.call(addr, ("echo", [1, {"a": b"x"}]), timeout=GUARD) == [1, {"a": b"x"}]


class SlowInit(reign.GenServer):
    async def init(self, log: list[Any], gate: asyncio.Event) -> None:
        log.append("init started")
        await gate.wait()
        log.append("init done")

    async def handle_call(self, request: Any, caller: reign.Caller) -> Any:
        return request


async def test_start_waits_for_init_to_finish(node: reign.Node) -> None:
    log: list[Any] = []
    gate = asyncio.Event()
    starting = asyncio.create_task(SlowInit.start(node, log, gate))
    await settle(10)
    assert log == ["init started"] and not starting.done()
    gate.set()
    addr = await asyncio.wait_for(starting, GUARD)
    assert log == ["init started", "init done"]
    assert await reign.call(addr, "ping", timeout=GUARD) == "ping"


class BadInit(reign.GenServer):
    async def init(self, log: list[Any], exc: BaseException) -> None:
        log.append(self.address)
        raise exc

    async def handle_info(self, msg: Any) -> None:  # pragma: no cover - must never run
        raise AssertionError("a server whose init raised ran")


async def test_init_raising_makes_start_raise_it_and_the_server_never_runs(node: reign.Node) -> None:
    log: list[Any] = []
    exc = KeyError("no such account")
    with pytest.raises(KeyError) as raised:
        await BadInit.start(node, log, exc, name="bad", global_name="bad.global")
    assert raised.value is exc
    (addr,) = log
    assert addr.send("anyone there?") is False
    assert node.whereis("bad") is None and node.names.lookup("bad.global") is None
    assert await closed_reason(await watch(node, addr)) == "noproc"
    with pytest.raises(reign.ServerExited) as exited:
        await reign.call(addr, "x", timeout=GUARD)
    assert exited.value.reason == "noproc"


async def test_init_raising_reaches_a_linked_trapping_parent_as_a_crash(node: reign.Node) -> None:
    parent, parent_box = node.new_mailbox()
    parent_box.trap_exits = True
    log: list[Any] = []
    with pytest.raises(ZeroDivisionError):
        await BadInit.start(node, log, ZeroDivisionError("x/0"), link=parent)
    msg = await parent_box.receive(timeout=GUARD)
    assert isinstance(msg, reign.Exit) and msg.id == log[0].id
    assert isinstance(msg.reason, reign.Crash) and msg.reason.type == "ZeroDivisionError"
    assert msg.reason.message == "x/0"


async def test_a_server_killed_during_init_makes_start_raise_server_exited(node: reign.Node) -> None:
    log: list[Any] = []
    gate = asyncio.Event()
    starting = asyncio.create_task(SlowInit.start(node, log, gate))
    await wait_until(lambda: log == ["init started"])
    (addr,) = _open_process_addresses(node)
    reign.exit(addr, "kill")
    with pytest.raises(reign.ServerExited) as exited:
        await asyncio.wait_for(starting, GUARD)
    assert exited.value.reason == "killed"
    assert log == ["init started"]


async def test_start_linked_to_a_gone_parent_ends_the_server_with_noproc(pair: Pair) -> None:
    server_node, client_node = pair
    parent, parent_box = client_node.new_mailbox()
    parent_box.close()
    log: list[Any] = []
    if server_node is client_node:  # known at once: the server never runs
        with pytest.raises(reign.ServerExited) as exited:
            await Probe.start(server_node, log, link=seen_from(server_node, parent))
        assert exited.value.reason == "noproc"
        assert log == []
    else:  # the other node answers the link with noproc later, as Erlang's would: then it exits
        addr = await Probe.start(server_node, log, link=seen_from(server_node, parent))
        assert await closed_reason(await watch(server_node, addr)) == "noproc"


def _open_process_addresses(node: reign.Node) -> list[reign.Address]:
    return [m.address for m in node._mailboxes.values() if m.task is not None]


class StopsInInit(reign.GenServer):
    async def init(self, log: list[Any]) -> None:
        log.append(self.address)
        self.stop(("no", "thanks"))

    async def handle_call(self, request: Any, caller: reign.Caller) -> Any:
        return request


async def test_self_stop_in_init_makes_start_fail_and_the_server_never_serves(node: reign.Node) -> None:
    log: list[Any] = []
    with pytest.raises(reign.ServerExited) as exited:
        await StopsInInit.start(node, log)
    assert exited.value.reason == ("no", "thanks")
    assert log[0].send("x") is False


# ------------------------------------------------------------------------------ names


async def test_local_and_global_names_are_registered_before_start_returns(pair: Pair) -> None:
    server_node, client_node = pair
    addr, _ = await start_probe(pair, [], name="probe", global_name="probe.g")
    assert server_node.whereis("probe") == addr
    assert server_node.names.lookup("probe.g") == addr
    await wait_until(lambda: client_node.names.lookup("probe.g") == addr)
    assert await reign.call(client_node.names.lookup("probe.g"), ("echo", "by name"), timeout=GUARD) == "by name"
    if server_node is client_node:
        assert server_node.send_named("probe", ("via", "name")) is True
    else:
        assert client_node.send_named("probe", ("via", "name"), node=server_node.id) is True
    watcher = await watch(client_node, addr)
    await reign.stop(seen_from(client_node, addr), timeout=GUARD)
    assert await closed_reason(watcher) == "normal"
    assert server_node.whereis("probe") is None and server_node.names.lookup("probe.g") is None
    await wait_until(lambda: client_node.names.lookup("probe.g") is None)


async def test_a_taken_local_name_makes_start_raise_and_the_server_never_runs(node: reign.Node) -> None:
    other, _box = node.new_mailbox()
    node.register("taken", other)
    log: list[Any] = []
    with pytest.raises(reign.RegistrationError):
        await Probe.start(node, log, name="taken")
    assert log == []
    assert node.whereis("taken") == other
    with pytest.raises(reign.RegistrationError):
        await Probe.start(node, log, name="")
    assert log == []


async def test_a_taken_global_name_gives_two_claimants_and_each_server_gets_multiple_claim(node: reign.Node) -> None:
    # The registry's semantics, not global's: a second claim is allowed and both claimants are told
    # (OTP's {global, Name} would refuse the second start with already_started).
    log1: list[Any] = []
    log2: list[Any] = []
    first = await Probe.start(node, log1, global_name="shared")
    second = await Probe.start(node, log2, global_name="shared")
    assert node.names.lookup_all("shared") == sorted([first, second], key=lambda a: a.id.serial)
    await wait_until(lambda: ("info", reign.MultipleClaim("shared")) in log1
                     and ("info", reign.MultipleClaim("shared")) in log2)


# ------------------------------------------------------------------------------ call, cast, info


async def test_calls_casts_and_other_messages_are_handled_in_arrival_order(pair: Pair) -> None:
    log: list[Any] = []
    _, addr = await start_probe(pair, log)
    expected = []
    for i in range(30):
        if i % 3 == 0:
            assert reign.cast(addr, ("c", i)) is True
            expected.append(("cast", ("c", i)))
        elif i % 3 == 1:
            assert addr.send(("i", i)) is True
            expected.append(("info", ("i", i)))
        else:
            assert await reign.call(addr, ("echo", i), timeout=GUARD) == i
            expected.append(("call", ("echo", i)))
    assert await reign.call(addr, ("echo", "end"), timeout=GUARD) == "end"
    assert log[1:] == [*expected, ("call", ("echo", "end"))]


async def test_concurrent_callers_each_get_their_own_reply(pair: Pair) -> None:
    log: list[Any] = []
    _, addr = await start_probe(pair, log)

    async def caller(i: int) -> list[Any]:
        return [await reign.call(addr, ("echo", (i, j)), timeout=GUARD) for j in range(5)]

    results = await asyncio.gather(*(caller(i) for i in range(40)))
    assert results == [[(i, j) for j in range(5)] for i in range(40)]
    assert len(log) == 1 + 40 * 5


async def test_cast_to_a_gone_server_returns_false_and_bad_targets_raise(node: reign.Node) -> None:
    addr = await Probe.start(node, [])
    await reign.stop(addr, timeout=GUARD)
    assert reign.cast(addr, "late") is False
    with pytest.raises(TypeError):
        reign.cast("not an address", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await reign.call("not an address", "x")  # type: ignore[arg-type]


async def test_a_request_that_cannot_cross_raises_encode_error_at_the_caller(pair: Pair) -> None:
    server_node, client_node = pair
    log: list[Any] = []
    _, addr = await start_probe(pair, log)
    if server_node is client_node and not server_node.check_messages:
        pytest.skip("a plain local send carries any object")
    with pytest.raises(reign.EncodeError):
        await reign.call(addr, ("echo", {1, 2}), timeout=GUARD)
    assert await reign.call(addr, ("echo", "still fine"), timeout=GUARD) == "still fine"
    assert log[1:] == [("call", ("echo", "still fine"))]


# ------------------------------------------------------------------------------ deferred replies


async def test_noreply_then_caller_reply_answers_later(pair: Pair) -> None:
    log: list[Any] = []
    _, addr = await start_probe(pair, log)
    waiting = asyncio.create_task(reign.call(addr, ("hold", "k"), timeout=GUARD))
    await wait_until(lambda: ("call", ("hold", "k")) in log)
    # The server keeps serving while the first call waits.
    assert await reign.call(addr, ("echo", "meanwhile"), timeout=GUARD) == "meanwhile"
    assert not waiting.done()
    reign.cast(addr, ("release", "k", {"late": True}))
    assert await asyncio.wait_for(waiting, GUARD) == {"late": True}


async def test_a_deferred_reply_may_be_a_failure(pair: Pair) -> None:
    _, addr = await start_probe(pair, [])
    waiting = asyncio.create_task(reign.call(addr, ("hold", "k"), timeout=GUARD))
    await settle(20)
    reign.cast(addr, ("release", "k", reign.Failure("sold_out", "none left", [1, 2])))
    with pytest.raises(reign.Failure) as failed:
        await asyncio.wait_for(waiting, GUARD)
    assert (failed.value.type, failed.value.message, failed.value.payload) == ("sold_out", "none left", [1, 2])


async def test_another_process_given_the_caller_answers_in_the_servers_place(pair: Pair) -> None:
    server_node, client_node = pair
    log: list[Any] = []
    _, addr = await start_probe(pair, log)
    worker = client_node.spawn(answerer)  # on the client's node: the Caller crosses twice
    assert await reign.call(addr, ("forward", 7, seen_from(server_node, worker)), timeout=GUARD) == ("answered", 7)
    # The Caller is a value: it compares and hashes by its fields.
    caller = reign.Caller(worker, 3)
    assert caller == reign.Caller(worker, 3) and len({caller, reign.Caller(worker, 3)}) == 1
    reign.exit(worker, "kill")


# ------------------------------------------------------------------------------ Failure vs crash


async def test_a_failure_reaches_the_caller_intact_and_the_server_keeps_running(pair: Pair) -> None:
    log: list[Any] = []
    server, addr = await start_probe(pair, log)
    payload = {"needed": 3, "have": [1, 2], "who": server}
    with pytest.raises(reign.Failure) as failed:
        await reign.call(addr, ("fail", "insufficient", "need 3", payload), timeout=GUARD)
    failure = failed.value
    assert isinstance(failure, reign.ReignError)
    assert (failure.type, failure.message) == ("insufficient", "need 3")
    assert failure.payload == payload
    assert failure == reign.Failure("insufficient", "need 3", payload)
    assert await reign.call(addr, ("echo", "alive"), timeout=GUARD) == "alive"
    assert not any(entry[0] == "terminate" for entry in log)


async def test_a_crash_in_handle_call_exits_the_server_and_the_caller_gets_server_exited(pair: Pair) -> None:
    server_node, client_node = pair
    log: list[Any] = []
    server, addr = await start_probe(pair, log)
    watcher = await watch(client_node, addr)
    other_caller = asyncio.create_task(reign.call(addr, ("hold", "other"), timeout=GUARD))
    await wait_until(lambda: ("call", ("hold", "other")) in log)
    with capture_logs() as logs, pytest.raises(reign.ServerExited) as exited:
        await reign.call(addr, ("crash", "boom"), timeout=GUARD)
    reason = exited.value.reason
    assert isinstance(reason, reign.Crash)
    assert (reason.type, reason.message) == ("ValueError", "boom")
    assert "ValueError: boom" in reason.traceback
    assert exited.value.server == addr
    # terminate ran with that Crash, after the failing call and before the exit
    assert log[-1] == ("terminate", reason)
    # every other waiting caller and every watcher learns the same reason
    with pytest.raises(reign.ServerExited) as other:
        await asyncio.wait_for(other_caller, GUARD)
    assert other.value.reason == reason
    assert await closed_reason(watcher) == reason
    assert [e["event"] for e in logs if e["event"].startswith("gen_server")] == ["gen_server.crashed"]
    with pytest.raises(reign.ServerExited) as gone:
        await reign.call(addr, ("echo", 1), timeout=GUARD)
    assert gone.value.reason == "noproc"


async def test_a_crash_in_handle_cast_or_handle_info_runs_terminate_and_exits(node: reign.Node) -> None:
    for kind in ("cast", "info"):
        log: list[Any] = []
        addr = await Probe.start(node, log)
        watcher = await watch(node, addr)
        if kind == "cast":
            reign.cast(addr, ("crash", "in cast"))
        else:
            addr.send(("crash", "in info"))
        reason = await closed_reason(watcher)
        assert isinstance(reason, reign.Crash) and reason.message == f"in {kind}"
        assert log[-1] == ("terminate", reason)


async def test_a_failure_in_handle_cast_or_handle_info_is_logged_and_the_server_keeps_running(pair: Pair) -> None:
    log: list[Any] = []
    _, addr = await start_probe(pair, log)
    with capture_logs() as logs:
        reign.cast(addr, ("fail", "cast_kind"))
        addr.send(("fail", "info_kind"))
        assert await reign.call(addr, ("echo", "alive"), timeout=GUARD) == "alive"
    events = [e["event"] for e in logs if e["event"].startswith("gen_server")]
    assert events == ["gen_server.cast_failed", "gen_server.info_failed"]
    assert not any(entry[0] == "terminate" for entry in log)


class BadTerminate(reign.GenServer):
    async def init(self) -> None:
        pass

    async def handle_cast(self, msg: Any) -> None:
        self.stop(msg)

    async def terminate(self, reason: Any) -> None:
        raise RuntimeError("terminate broke")


async def test_terminate_raising_is_logged_and_the_server_exits_with_its_reason(node: reign.Node) -> None:
    addr = await BadTerminate.start(node)
    watcher = await watch(node, addr)
    with capture_logs() as logs:
        reign.cast(addr, ("custom", 1))
        assert await closed_reason(watcher) == ("custom", 1)
    assert "gen_server.terminate_failed" in [e["event"] for e in logs]


class NoCallbacks(reign.GenServer):
    pass


async def test_missing_callbacks_crash_on_call_and_cast_but_not_on_info(node: reign.Node) -> None:
    addr = await NoCallbacks.start(node)
    with capture_logs() as logs:
        addr.send("stray")
        await settle()
    assert "gen_server.unexpected_message" in [e["event"] for e in logs]
    with pytest.raises(reign.ServerExited) as exited:
        await reign.call(addr, "anything", timeout=GUARD)
    assert isinstance(exited.value.reason, reign.Crash) and exited.value.reason.type == "NotImplementedError"
    addr2 = await NoCallbacks.start(node)
    watcher = await watch(node, addr2)
    reign.cast(addr2, "anything")
    reason = await closed_reason(watcher)
    assert isinstance(reason, reign.Crash) and reason.type == "NotImplementedError"


# ------------------------------------------------------------------------------ timeouts


async def test_a_timeout_raises_call_timeout_and_the_late_reply_is_never_seen(pair: Pair) -> None:
    server_node, client_node = pair
    log: list[Any] = []
    _, addr = await start_probe(pair, log)
    with pytest.raises(reign.CallTimeout) as timed_out:
        await reign.call(addr, ("hold", "slow"), timeout=0.05)
    assert isinstance(timed_out.value, TimeoutError) and isinstance(timed_out.value, reign.ReignError)
    # The late reply arrives while the next call waits: it is not taken for that call's reply.
    reign.cast(addr, ("release", "slow", "LATE"))
    assert await reign.call(addr, ("echo", "fresh"), timeout=GUARD) == "fresh"
    # The late reply arrives (is queued) before the next call starts: still never seen.
    with pytest.raises(reign.CallTimeout):
        await reign.call(addr, ("hold", "slow2"), timeout=0.05)
    notify, notify_box = client_node.new_mailbox()
    reign.cast(addr, ("release", "slow2", "LATE2", seen_from(server_node, notify)))
    assert await notify_box.receive(timeout=GUARD) == ("released", "slow2")  # sent after the late reply
    for i in range(3):
        assert await reign.call(addr, ("echo", i), timeout=GUARD) == i
    # A timed-out call does not hurt the server.
    assert not any(entry[0] == "terminate" for entry in log)


async def test_a_call_cancelled_from_outside_leaves_no_reply_for_the_next_call(pair: Pair) -> None:
    server_node, client_node = pair
    _, addr = await start_probe(pair, [])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # the caller's own deadline, not call's
            await reign.call(addr, ("hold", "k"), timeout=None)
    notify, notify_box = client_node.new_mailbox()
    reign.cast(addr, ("release", "k", "LATE", seen_from(server_node, notify)))
    assert await notify_box.receive(timeout=GUARD) == ("released", "k")
    assert await reign.call(addr, ("echo", "next"), timeout=GUARD) == "next"


async def test_call_and_start_from_another_thread_are_refused(node: reign.Node) -> None:
    addr = await Probe.start(node, [])

    def in_thread() -> list[str]:
        errors = []
        for coro in (reign.call(addr, ("echo", 1)), Probe.start(node, [])):
            try:
                asyncio.run(coro)
            except RuntimeError as exc:
                errors.append(type(exc).__name__)
        return errors

    assert await asyncio.to_thread(in_thread) == ["RuntimeError", "RuntimeError"]
    assert await reign.call(addr, ("echo", 2), timeout=GUARD) == 2


async def test_timeout_none_waits_as_long_as_the_server_lives(pair: Pair) -> None:
    _, addr = await start_probe(pair, [])
    waiting = asyncio.create_task(reign.call(addr, ("hold", "k"), timeout=None))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    reign.cast(addr, ("stop", "custom_reason"))
    with pytest.raises(reign.ServerExited) as exited:
        await asyncio.wait_for(waiting, GUARD)
    assert exited.value.reason == "custom_reason"


# ------------------------------------------------------------------------------ self-call


async def test_a_server_calling_or_stopping_itself_is_refused_at_once(node: reign.Node) -> None:
    log: list[Any] = []
    addr = await Probe.start(node, log)
    assert await reign.call(addr, ("call_self",), timeout=GUARD) == ("refused", "SelfCallError")
    assert await reign.call(addr, ("stop_self",), timeout=GUARD) == ("refused", "SelfCallError")
    assert issubclass(reign.SelfCallError, reign.ReignError)


async def test_a_plain_process_calling_itself_is_refused_at_once(node: reign.Node) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def selfish(mbox: reign.Mailbox) -> None:
        try:
            await reign.call(mbox.address, "hello", timeout=None)
        except reign.SelfCallError:
            outcome.set_result("refused")

    node.spawn(selfish)
    assert await asyncio.wait_for(outcome, GUARD) == "refused"


# ------------------------------------------------------------------------------ gone servers


async def test_a_call_to_a_gone_server_raises_server_exited_noproc(pair: Pair) -> None:
    server_node, client_node = pair
    _, addr = await start_probe(pair, [])
    await reign.stop(addr, timeout=GUARD)
    for _ in range(2):  # the second call finds the endpoint's watch already ended
        with pytest.raises(reign.ServerExited) as exited:
            await reign.call(addr, ("echo", 1), timeout=GUARD)
        assert exited.value.reason == "noproc"
    never = seen_from(client_node, server_node.address(f"<{server_node.id}.{server_node.incarnation}.999999>"))
    with pytest.raises(reign.ServerExited) as unknown:
        await reign.call(never, ("echo", 1), timeout=None)
    assert unknown.value.reason == "noproc"


async def test_an_exit_signal_during_a_call_reaches_the_caller_as_its_reason(pair: Pair) -> None:
    log: list[Any] = []
    server, addr = await start_probe(pair, log)
    waiting = asyncio.create_task(reign.call(addr, ("hold", "k"), timeout=GUARD))
    await wait_until(lambda: ("call", ("hold", "k")) in log)
    reign.exit(server, "kill")
    with pytest.raises(reign.ServerExited) as exited:
        await asyncio.wait_for(waiting, GUARD)
    assert exited.value.reason == "killed"
    assert not any(entry[0] == "terminate" for entry in log)


async def test_one_caller_moves_between_servers_and_learns_each_ones_end(pair: Pair) -> None:
    a_srv, a = await start_probe(pair, [])
    b_srv, b = await start_probe(pair, [])
    for _ in range(3):
        assert await reign.call(a, ("echo", "a"), timeout=GUARD) == "a"
        assert await reign.call(b, ("echo", "b"), timeout=GUARD) == "b"
    reign.exit(a_srv, "kill")  # the caller's endpoint watches b now
    with pytest.raises(reign.ServerExited) as exited:
        await reign.call(a, ("echo", "a"), timeout=GUARD)
    assert exited.value.reason in ("noproc", "killed")
    assert await reign.call(b, ("echo", "b"), timeout=GUARD) == "b"
    reign.exit(b_srv, "kill")  # while the endpoint still watches b: the notice is stale news next time
    await settle(20)
    with pytest.raises(reign.ServerExited) as exited:
        await reign.call(b, ("echo", "b"), timeout=GUARD)
    assert exited.value.reason in ("noproc", "killed")


# ------------------------------------------------------------------------------ stop


async def test_stop_runs_terminate_and_the_reason_reaches_watchers_and_links(pair: Pair) -> None:
    server_node, client_node = pair
    log: list[Any] = []
    server, addr = await start_probe(pair, log)
    watcher = await watch(client_node, addr)
    linked, linked_box = client_node.new_mailbox()
    linked_box.trap_exits = True
    linked_box.link(addr)
    await reign.call(addr, ("echo", "linked now"), timeout=GUARD)
    reason = ("maintenance", 42)
    assert await reign.stop(addr, reason, timeout=GUARD) is None
    assert log[-1] == ("terminate", reason)
    assert await closed_reason(watcher) == reason
    exit_msg = await linked_box.receive(timeout=GUARD)
    assert exit_msg == reign.Exit(server.id, reason)
    assert server.send("x") is False


async def test_stop_of_a_gone_server_raises_noproc(pair: Pair) -> None:
    _, addr = await start_probe(pair, [])
    await reign.stop(addr, timeout=GUARD)
    with pytest.raises(reign.ServerExited) as exited:
        await reign.stop(addr, timeout=GUARD)
    assert exited.value.reason == "noproc"


async def test_stop_past_its_timeout_raises_call_timeout(pair: Pair) -> None:
    log: list[Any] = []
    gate = asyncio.Event()
    _, addr = await start_probe(pair, log, block_terminate=gate)
    watcher = await watch(pair[1], addr)
    with pytest.raises(reign.CallTimeout) as timed_out:
        await reign.stop(addr, "slowly", timeout=0.05)
    assert isinstance(timed_out.value, TimeoutError)
    assert log[-1] == ("terminate", "slowly")
    gate.set()
    assert await closed_reason(watcher) == "slowly"


async def test_stop_raises_the_reason_when_the_server_exits_with_another_one(pair: Pair) -> None:
    # gen_server:stop (proc_lib:stop) returns ok only if the server exits with the reason asked
    # for; any other exit reason is raised (here: killed while terminate runs).
    log: list[Any] = []
    gate = asyncio.Event()
    server, addr = await start_probe(pair, log, block_terminate=gate)
    stopping = asyncio.create_task(reign.stop(addr, "asked", timeout=GUARD))
    await wait_until(lambda: log[-1] == ("terminate", "asked"))
    reign.exit(server, "kill")
    with pytest.raises(reign.ServerExited) as exited:
        await asyncio.wait_for(stopping, GUARD)
    assert exited.value.reason == "killed"


async def test_stop_with_a_reason_that_cannot_cross_raises_encode_error(node: reign.Node) -> None:
    addr = await Probe.start(node, [])
    with pytest.raises(reign.EncodeError):
        await reign.stop(addr, {1, 2}, timeout=GUARD)
    assert await reign.call(addr, ("echo", 1), timeout=GUARD) == 1


async def test_self_stop_in_a_handler_sends_the_reply_first(pair: Pair) -> None:
    log: list[Any] = []
    _, addr = await start_probe(pair, log)
    watcher = await watch(pair[1], addr)
    queued = asyncio.create_task(reign.call(addr, ("echo", "queued behind"), timeout=GUARD))
    assert await reign.call(addr, ("stop", "done", "goodbye"), timeout=GUARD) == "goodbye"
    assert await closed_reason(watcher) == "done"
    assert log[-1] == ("terminate", "done")
    # A call sent after the stop request: the server stops first and never handles it.
    with pytest.raises(reign.ServerExited) as exited:
        await asyncio.wait_for(queued, GUARD)
    assert exited.value.reason in ("done", "noproc")
    assert ("call", ("echo", "queued behind")) not in log[log.index(("call", ("stop", "done", "goodbye"))):]


# ------------------------------------------------------------------------------ trap_exits, parent, kill


async def test_a_trapping_server_gets_exit_messages_in_handle_info(pair: Pair) -> None:
    server_node, client_node = pair
    log: list[Any] = []
    server, addr = await start_probe(pair, log, trap=True)
    friend, friend_box = client_node.new_mailbox()
    assert await reign.call(addr, ("link", seen_from(server_node, friend)), timeout=GUARD) == "linked"
    friend_box.close(("gone", "fishing"))
    await wait_until(lambda: any(e[0] == "info" for e in log))
    assert log[-1] == ("info", reign.Exit(friend.id, ("gone", "fishing")))
    reign.exit(addr, "shutdown")  # from code that is not a process, and not the parent
    await wait_until(lambda: len(log) == 4)
    assert log[-1] == ("info", reign.Exit(None, "shutdown"))
    assert await reign.call(addr, ("echo", "still here"), timeout=GUARD) == "still here"
    # kill cannot be trapped, and terminate does not run
    watcher = await watch(client_node, addr)
    reign.exit(addr, "kill")
    assert await closed_reason(watcher) == "killed"
    assert not any(entry[0] == "terminate" for entry in log)


@pytest.mark.parametrize("how", ["link closes", "exit signal"])
async def test_an_exit_from_the_parent_runs_terminate_in_a_trapping_server(pair: Pair, how: str) -> None:
    server_node, client_node = pair
    parent_ready = asyncio.Event()

    async def parent_fn(mbox: reign.Mailbox) -> None:
        mbox.trap_exits = True
        parent_ready.set()
        target = await mbox.receive()
        if how == "exit signal":  # reign.exit from the parent process: Exit(parent, reason)
            reign.exit(target, ("parent", "says", "stop"))
            await mbox.receive()  # the child's Exit: it is linked to us
        else:  # the parent exits: the link delivers Exit(parent, reason)
            await mbox.receive()
        mbox.close(("parent", "says", "stop"))

    parent = client_node.spawn(parent_fn)
    await parent_ready.wait()
    log: list[Any] = []
    server, addr = await start_probe(pair, log, trap=True, link=seen_from(server_node, parent))
    watcher = await watch(client_node, addr)
    parent.send(addr)
    if how == "link closes":
        parent.send("now")
    assert await closed_reason(watcher) == ("parent", "says", "stop")
    assert log[-1] == ("terminate", ("parent", "says", "stop"))
    assert all(entry[0] != "info" for entry in log)


async def test_a_non_trapping_server_killed_by_an_exit_signal_does_not_run_terminate(pair: Pair) -> None:
    server_node, client_node = pair
    # by reign.exit
    log: list[Any] = []
    server, addr = await start_probe(pair, log)
    watcher = await watch(client_node, addr)
    reign.exit(addr, "shutdown")
    assert await closed_reason(watcher) == "shutdown"
    assert log == [("init", (), {})]
    # by its parent's link
    parent, parent_box = client_node.new_mailbox()
    log2: list[Any] = []
    server2, addr2 = await start_probe(pair, log2, link=seen_from(server_node, parent))
    watcher2 = await watch(client_node, addr2)
    parent_box.close(("parent", "died"))
    assert await closed_reason(watcher2) == ("parent", "died")
    assert log2 == [("init", (), {})]
    # exit(addr, "normal") does nothing to a non-trapping server
    log3: list[Any] = []
    _, addr3 = await start_probe(pair, log3)
    reign.exit(addr3, "normal")
    assert await reign.call(addr3, ("echo", "unharmed"), timeout=GUARD) == "unharmed"


async def test_a_trapping_server_gets_a_normal_exit_from_a_non_parent_as_info(node: reign.Node) -> None:
    log: list[Any] = []
    addr = await Probe.start(node, log, trap=True)
    reign.exit(addr, "normal")
    assert await reign.call(addr, ("echo", 1), timeout=GUARD) == 1
    assert log[1] == ("info", reign.Exit(None, "normal"))


# ------------------------------------------------------------------------------ timers


async def test_send_after_delivers_to_handle_info_and_cancel_stops_it(pair: Pair) -> None:
    server_node, client_node = pair
    log: list[Any] = []
    server, addr = await start_probe(pair, log)
    assert await reign.call(addr, ("send_after", 0.01, ("tick", 1)), timeout=GUARD) == "armed"
    await wait_until(lambda: ("info", ("tick", 1)) in log)
    # From the client's node to the server: a cancelled timer never fires; a later one does.
    early = reign.send_after(0.02, addr, ("tick", "cancelled"))
    late = reign.send_after(0.05, addr, ("tick", "late"))
    assert repr(early) == "<reign.Timer pending>"
    assert early.cancel() is True and early.cancel() is False
    assert repr(early) == "<reign.Timer cancelled>" and not early.fired
    await wait_until(lambda: ("info", ("tick", "late")) in log)
    assert late.fired and late.cancel() is False and repr(late) == "<reign.Timer fired>"
    assert ("info", ("tick", "cancelled")) not in log
    # 0 or less: the next loop iteration, never inside send_after
    now = reign.send_after(0, addr, ("tick", "now"))
    neg = reign.send_after(-5, addr, ("tick", "neg"))
    assert not now.fired and not neg.fired
    await wait_until(lambda: ("info", ("tick", "neg")) in log)
    ticks = [e[1][1] for e in log if e[0] == "info"]
    assert ticks == [1, "late", "now", "neg"]


async def test_send_after_refuses_bad_arguments_and_a_gone_target_is_harmless(node: reign.Node) -> None:
    addr, mbox = node.new_mailbox()
    with pytest.raises(TypeError):
        reign.send_after(0.01, "nope", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reign.send_after(0.01, addr, reign.MailboxClosed(addr.id, "normal"))
    mbox.close()
    timer = reign.send_after(0, addr, "into nothing")
    await settle()
    assert timer.fired


async def test_a_timer_message_that_cannot_be_encoded_is_logged(tmp_path: Path) -> None:
    async with node_pair("remote", tmp_path) as (n1, n2):
        target, _ = n1.new_mailbox()
        with capture_logs() as logs:
            timer = reign.send_after(0, seen_from(n2, target), {1, 2})
            await wait_until(lambda: timer.fired)
        assert "timer.send_failed" in [e["event"] for e in logs]


# ------------------------------------------------------------------------------ cost vs backlog


async def test_a_caller_with_a_huge_backlog_calls_without_touching_it(pair: Pair) -> None:
    log: list[Any] = []
    _, addr = await start_probe(pair, log)
    client_node = pair[1]
    backlog = 100_000
    done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

    async def busy(mbox: reign.Mailbox) -> None:
        for i in range(backlog):
            mbox.address.send(("backlog", i))
        assert len(mbox) == backlog
        replies = [await reign.call(addr, ("echo", i), timeout=GUARD) for i in range(200)]
        # The backlog is untouched: same length, same order, nothing taken from it.
        assert len(mbox) == backlog
        assert mbox.receive_nowait() == ("backlog", 0)
        done.set_result(replies)

    client_node.spawn(busy)
    assert await asyncio.wait_for(done, GUARD * 3) == list(range(200))
    assert [e for e in log if e[0] == "call"] == [("call", ("echo", i)) for i in range(200)]
