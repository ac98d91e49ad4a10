"""Supervisors: strategies, restart types, intensity and escalation, start and shutdown order,
shutdown timeouts and brutal_kill, nested supervisors, names after restart, the management
calls and their failures, simple_one_for_one, children that fail to start.

Children are :class:`otp_util.Worker` gen_servers (they trap exits, so a supervisor's
``"shutdown"`` runs their ``terminate``, which records the order) or plain process functions.
Every order asserted here is OTP's (``supervisor.erl``). Timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import reign

from otp_util import (
    GUARD,
    Worker,
    children,
    closed_reason,
    node_pair,
    seen_from,
    settle,
    wait_children,
    wait_until,
    watch,
    worker,
)

Sup = reign.Supervisor


@pytest.fixture
async def node() -> AsyncIterator[reign.Node]:
    async with reign.no_clustering() as n:
        yield n


def starts(events: list[Any]) -> list[Any]:
    return [e[1] for e in events if e[0] == "start"]


def stops(events: list[Any]) -> list[Any]:
    return [e[1] for e in events if e[0] == "stop"]


async def restarted(sup: reign.Address, child_id: Any, old: reign.Address | None) -> reign.Address:
    """Wait until child ``child_id`` runs again under a new address; return it."""
    found = await wait_children(sup, lambda cs: any(i == child_id and a is not None and a != old for i, a in cs))
    return next(a for i, a in found if i == child_id)


# ------------------------------------------------------------------------------ start and stop order


async def test_children_start_in_order_and_stop_in_reverse_order(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, t) for t in "abcd"])
    assert starts(events) == list("abcd")  # all started before start returned
    ids = await Sup.which_children(sup)
    assert [i for i, _ in ids] == list("abcd") and all(a is not None for _, a in ids)
    assert await reign.call(ids[2][1], "whoami", timeout=GUARD) == ("c", ids[2][1])
    watcher = await watch(node, sup)
    await reign.stop(sup, timeout=GUARD)
    assert await closed_reason(watcher) == "normal"
    assert [e for e in events if e[0] == "stop"] == [("stop", t, "shutdown") for t in "dcba"]
    assert all(a.send("x") is False for _, a in ids)


async def test_non_trapping_children_are_stopped_one_by_one_in_reverse_order(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, t, trap=False) for t in "abc"])
    ids = await Sup.which_children(sup)
    watcher, box = node.new_mailbox()
    for _, addr in ids:
        addr.on_close_notify(watcher)
    await reign.stop(sup, timeout=GUARD)
    notices = [await box.receive(timeout=GUARD) for _ in range(3)]
    assert [n.id for n in notices] == [a.id for _, a in reversed(ids)]
    assert [n.reason for n in notices] == ["shutdown"] * 3
    assert stops(events) == []  # killed by the exit signal: no terminate, as in Erlang


async def test_a_child_failing_to_start_makes_start_raise_and_the_started_ones_are_stopped(node: reign.Node) -> None:
    events: list[Any] = []
    control = {"fail": {"c"}}
    specs = [worker(events, t, control=control) for t in "abcd"]
    with pytest.raises(reign.Failure) as failed:
        await Sup.start(node, specs)
    assert failed.value.type == "start_failed"
    assert "'c'" in failed.value.message and "c cannot start" in failed.value.message
    assert events == [("start", "a", ()), ("start", "b", ()), ("start_failed", "c"),
                      ("stop", "b", "shutdown"), ("stop", "a", "shutdown")]


async def test_a_supervisor_whose_parent_exits_stops_its_children_and_exits_with_that_reason(node: reign.Node) -> None:
    events: list[Any] = []
    parent, parent_box = node.new_mailbox()
    sup = await Sup.start(node, [worker(events, t) for t in "ab"], link=parent)
    watcher = await watch(node, sup)
    parent_box.close("shutdown")
    assert await closed_reason(watcher) == "shutdown"
    assert stops(events) == ["b", "a"]


async def test_bad_arguments_are_refused(node: reign.Node) -> None:
    events: list[Any] = []
    with pytest.raises(ValueError):
        await Sup.start(node, [worker(events, "a")], strategy="one_for_none")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await Sup.start(node, [worker(events, "a")], intensity=-1)
    with pytest.raises(ValueError):
        await Sup.start(node, [worker(events, "a")], period=0)
    with pytest.raises(ValueError):
        await Sup.start(node, [worker(events, "a"), worker(events, "a")])
    with pytest.raises(ValueError):
        await Sup.start(node, [worker(events, "a"), worker(events, "b")], strategy="simple_one_for_one")
    with pytest.raises(TypeError):
        await Sup.start(node, ["not a spec"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        reign.ChildSpec("x", Worker, restart="sometimes")  # type: ignore[arg-type]
    for shutdown in (0, -1, "later", True):
        with pytest.raises(ValueError):
            reign.ChildSpec("x", Worker, shutdown=shutdown)
    with pytest.raises(TypeError):
        reign.ChildSpec(["unhashable"], Worker)
    with pytest.raises(TypeError):
        reign.ChildSpec("x", print)
    assert events == []
    assert reign.ChildSpec("x", Worker).shutdown == 5.0
    assert reign.ChildSpec("x", Sup).shutdown == "infinity"
    assert reign.ChildSpec("x", Worker, args=[1, 2]).args == (1, 2)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ strategies


async def test_one_for_one_restarts_only_the_child_that_exited(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, t) for t in "abc"], strategy="one_for_one")
    before = await children(sup)
    reign.exit(before["b"], "kill")
    new_b = await restarted(sup, "b", before["b"])
    after = await children(sup)
    assert after == {"a": before["a"], "b": new_b, "c": before["c"]}
    assert starts(events) == ["a", "b", "c", "b"] and stops(events) == []
    assert await reign.call(new_b, "whoami", timeout=GUARD) == ("b", new_b)


async def test_one_for_all_stops_the_others_in_reverse_then_restarts_all_in_order(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, t) for t in "abcd"], strategy="one_for_all")
    before = await children(sup)
    events.clear()
    reign.cast(before["b"], "crash")
    await wait_until(lambda: len(starts(events)) == 4)
    after = await children(sup)
    assert all(after[t] not in (None, before[t]) for t in "abcd")
    crash = events[0]
    assert crash[:2] == ("stop", "b") and isinstance(crash[2], reign.Crash)
    assert events[1:] == [("stop", "d", "shutdown"), ("stop", "c", "shutdown"), ("stop", "a", "shutdown"),
                          *[("start", t, ()) for t in "abcd"]]


async def test_rest_for_one_restarts_the_child_and_those_started_after_it(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, t) for t in "abcd"], strategy="rest_for_one")
    before = await children(sup)
    events.clear()
    reign.exit(before["b"], "kill")
    await wait_until(lambda: len(starts(events)) == 3)
    after = await children(sup)
    assert after["a"] == before["a"]
    assert all(after[t] not in (None, before[t]) for t in "bcd")
    assert events == [("stop", "d", "shutdown"), ("stop", "c", "shutdown"),
                      ("start", "b", ()), ("start", "c", ()), ("start", "d", ())]


async def test_one_for_all_drops_temporary_siblings_and_restarts_stopped_ones(node: reign.Node) -> None:
    # supervisor.erl: a temporary child stopped because of a sibling is forgotten; every other
    # child, even one that had ended (a transient that exited normally), is started again.
    events: list[Any] = []
    specs = [worker(events, "perm"), worker(events, "temp", restart="temporary"),
             worker(events, "trans", restart="transient")]
    sup = await Sup.start(node, specs, strategy="one_for_all")
    before = await children(sup)
    await reign.call(before["trans"], ("exit", "normal"), timeout=GUARD)
    await wait_children(sup, lambda cs: dict(cs)["trans"] is None)
    events.clear()
    reign.exit(before["perm"], "kill")
    await wait_until(lambda: len(starts(events)) == 2)
    after = await children(sup)
    assert list(after) == ["perm", "trans"]
    assert events == [("stop", "temp", "shutdown"), ("start", "perm", ()), ("start", "trans", ())]


# ------------------------------------------------------------------------------ restart types

EXIT_CASES = [
    ("normal", "normal"),
    ("shutdown", "shutdown"),
    ("shutdown_tuple", ("shutdown", "for a reason")),
    ("custom", ("custom", 1)),
    ("crash", None),
    ("killed", "killed"),
]
#: Whether a child of each restart type is restarted after each exit (supervisor.erl).
RESTARTED = {
    "permanent": {case: True for case, _ in EXIT_CASES},
    "transient": {"normal": False, "shutdown": False, "shutdown_tuple": False, "custom": True, "crash": True,
                  "killed": True},
    "temporary": {case: False for case, _ in EXIT_CASES},
}


@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
@pytest.mark.parametrize(("case", "reason"), EXIT_CASES, ids=[c for c, _ in EXIT_CASES])
async def test_restart_types(node: reign.Node, restart: str, case: str, reason: Any) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, "x", restart=restart), worker(events, "witness")])
    before = await children(sup)
    child = before["x"]
    watcher = await watch(node, child)
    if case == "crash":
        reign.cast(child, "crash")
    elif case == "killed":
        reign.exit(child, "kill")
    else:
        assert await reign.call(child, ("exit", reason), timeout=GUARD) == "ok"
    exit_reason = await closed_reason(watcher)
    if case == "crash":
        assert isinstance(exit_reason, reign.Crash)
    else:
        assert exit_reason == reason
    if RESTARTED[restart][case]:
        new = await restarted(sup, "x", child)
        assert await children(sup) == {"x": new, "witness": before["witness"]}
        assert starts(events) == ["x", "witness", "x"]
    else:
        await reign.call(before["witness"], "whoami", timeout=GUARD)
        await settle(20)
        expected = {"witness": before["witness"]} if restart == "temporary" else {"x": None, "witness": before["witness"]}
        assert await children(sup) == expected
        assert starts(events) == ["x", "witness"]


async def fn_child(mbox: reign.Mailbox, events: list[Any], tag: str) -> None:
    events.append(("start", tag, ()))
    msg = await mbox.receive()
    if msg == "crash":
        raise RuntimeError("fn child crashed")
    # anything else: return normally


async def test_process_function_children_are_restarted_by_their_restart_type(node: reign.Node) -> None:
    events: list[Any] = []
    specs = [reign.ChildSpec("perm", fn_child, (events, "perm")),
             reign.ChildSpec("trans", fn_child, (events, "trans"), restart="transient")]
    sup = await Sup.start(node, specs)
    await wait_until(lambda: len(starts(events)) == 2)
    before = await children(sup)
    before["perm"].send("return")  # a normal return: permanent restarts it
    before["trans"].send("return")  # transient does not
    new_perm = await restarted(sup, "perm", before["perm"])
    await wait_children(sup, lambda cs: dict(cs)["trans"] is None)
    new_perm.send("crash")
    await restarted(sup, "perm", new_perm)
    assert await reign.Supervisor.restart_child(sup, "trans") is not None
    trans = (await children(sup))["trans"]
    assert trans is not None
    trans.send("crash")  # abnormal: transient restarts it
    await restarted(sup, "trans", trans)
    await wait_until(lambda: len(starts(events)) == 6)
    assert starts(events) == ["perm", "trans", "perm", "perm", "trans", "trans"]


# ------------------------------------------------------------------------------ intensity


async def test_more_than_intensity_restarts_shut_the_supervisor_down_in_reverse_order(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, t) for t in "abc"], intensity=2, period=3600)
    watcher = await watch(node, sup)
    for i in range(2):  # two restarts are allowed
        old = (await children(sup))["b"]
        reign.exit(old, "kill")
        await restarted(sup, "b", old)
    events.clear()
    with capture_logs() as logs:
        reign.exit((await children(sup))["b"], "kill")  # the third is one too many
        assert await closed_reason(watcher) == "shutdown"
    assert events == [("stop", "c", "shutdown"), ("stop", "a", "shutdown")]
    assert "supervisor.shutdown" in [e["event"] for e in logs]


async def test_intensity_zero_gives_up_at_the_first_exit(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, t) for t in "ab"], intensity=0)
    watcher = await watch(node, sup)
    reign.cast((await children(sup))["a"], "crash")
    assert await closed_reason(watcher) == "shutdown"
    assert starts(events) == ["a", "b"]
    assert [e[1] for e in events if e[0] == "stop"] == ["a", "b"]  # a: its crash; b: the shutdown


async def test_restarts_older_than_the_period_do_not_count(node: reign.Node) -> None:
    events: list[Any] = []
    period = 0.2
    sup = await Sup.start(node, [worker(events, "a")], intensity=1, period=period)
    old = (await children(sup))["a"]
    reign.exit(old, "kill")
    old = await restarted(sup, "a", old)
    await asyncio.sleep(period * 2)  # the first restart leaves the window
    reign.exit(old, "kill")
    new = await restarted(sup, "a", old)
    assert await reign.call(new, "whoami", timeout=GUARD) == ("a", new)


async def test_a_child_that_keeps_failing_to_restart_makes_the_supervisor_give_up(node: reign.Node) -> None:
    events: list[Any] = []
    control: dict[str, Any] = {"fail": set()}
    sup = await Sup.start(node, [worker(events, t, control=control) for t in "ab"], intensity=3, period=3600)
    watcher = await watch(node, sup)
    control["fail"].add("a")
    with capture_logs() as logs:
        reign.exit((await children(sup))["a"], "kill")
        assert await closed_reason(watcher) == "shutdown"
    # each failed attempt counts as a restart: intensity 3 allows three attempts
    assert [e for e in events if e[0] != "start"] == [("start_failed", "a")] * 3 + [("stop", "b", "shutdown")]
    assert [e["event"] for e in logs].count("supervisor.restart_failed") == 3


async def test_a_restart_that_fails_once_is_tried_again(node: reign.Node) -> None:
    events: list[Any] = []
    control: dict[str, Any] = {"fail": set()}
    sup = await Sup.start(node, [reign.ChildSpec("a", FailsOnce, (events, "a"), {"control": control})])
    old = (await children(sup))["a"]
    control["fail"].add("a")
    reign.exit(old, "kill")
    new = await restarted(sup, "a", old)
    assert [e[0] for e in events] == ["start", "start_failed", "start"]
    assert await reign.call(new, "whoami", timeout=GUARD) == ("a", new)


class FailsOnce(Worker):
    """A Worker whose failing start (``control["fail"]``) fails once: the next start works."""

    async def init(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().init(*args, **kwargs)
        finally:
            kwargs["control"]["fail"].clear()


async def test_terminate_child_while_a_restart_waits_to_be_tried_again_leaves_it_stopped(node: reign.Node) -> None:
    # supervisor.erl retries a failed restart only if the child is still "restarting": a
    # terminate_child handled in between leaves it stopped.
    events: list[Any] = []
    control: dict[str, Any] = {"fail": set()}
    sup = await Sup.start(node, [reign.ChildSpec("a", FailsOnce, (events, "a"), {"control": control})])
    old = (await children(sup))["a"]
    control["fail"].add("a")
    reign.exit(old, "kill")  # the supervisor's Exit is queued now...
    await Sup.terminate_child(sup, "a")  # ...and this request behind it, before the retry
    await reign.call(sup, ("which_children",), timeout=GUARD)  # the retry, if any, ran by now
    await settle(20)
    assert await children(sup) == {"a": None}
    assert [e[0] for e in events] == ["start", "start_failed"]
    assert await Sup.restart_child(sup, "a") is not None


# ------------------------------------------------------------------------------ nested supervisors


async def test_an_escalated_child_supervisor_is_restarted_by_its_parent(node: reign.Node) -> None:
    events: list[Any] = []
    inner_spec = reign.ChildSpec("inner", Sup, ([worker(events, "w1"), worker(events, "w2")],),
                                 {"intensity": 0})
    top = await Sup.start(node, [worker(events, "before"), inner_spec, worker(events, "after")])
    before = await children(top)
    inner = before["inner"]
    assert inner is not None
    inner_children = await children(inner)
    events.clear()
    reign.exit(inner_children["w1"], "kill")  # inner gives up at once: exits "shutdown"
    new_inner = await restarted(top, "inner", inner)
    after = await children(top)
    assert after["before"] == before["before"] and after["after"] == before["after"]
    new_children = await children(new_inner)
    assert set(new_children) == {"w1", "w2"} and all(a not in inner_children.values() for a in new_children.values())
    assert events == [("stop", "w2", "shutdown"), ("start", "w1", ()), ("start", "w2", ())]


async def test_stopping_a_tree_stops_every_level_in_reverse_order(node: reign.Node) -> None:
    events: list[Any] = []
    leaf = reign.ChildSpec("leaf_sup", Sup, ([worker(events, "l1"), worker(events, "l2")],))
    mid = reign.ChildSpec("mid_sup", Sup, ([worker(events, "m1"), leaf, worker(events, "m2")],))
    top = await Sup.start(node, [worker(events, "t1"), mid, worker(events, "t2")])
    assert starts(events) == ["t1", "m1", "l1", "l2", "m2", "t2"]
    await reign.stop(top, timeout=GUARD)
    assert stops(events) == ["t2", "m2", "l2", "l1", "m1", "t1"]


async def test_a_transient_child_supervisor_that_gave_up_is_not_restarted(node: reign.Node) -> None:
    # A supervisor over its intensity exits "shutdown", which is a normal exit for a transient
    # child: its parent leaves it stopped.
    events: list[Any] = []
    inner_spec = reign.ChildSpec("inner", Sup, ([worker(events, "w")],), {"intensity": 0}, restart="transient")
    top = await Sup.start(node, [inner_spec])
    inner = (await children(top))["inner"]
    assert inner is not None
    reign.exit((await children(inner))["w"], "kill")
    await wait_children(top, lambda cs: cs == [("inner", None)])


# ------------------------------------------------------------------------------ shutdown


async def test_a_child_that_ignores_shutdown_is_killed_after_its_timeout(node: reign.Node) -> None:
    events: list[Any] = []
    control = {"hang": {"stubborn"}}
    sup = await Sup.start(node, [worker(events, "polite"), worker(events, "stubborn", shutdown=0.05, control=control)])
    kids = await children(sup)
    stubborn = await watch(node, kids["stubborn"])
    with capture_logs() as logs:
        await reign.stop(sup, timeout=GUARD)
    assert await closed_reason(stubborn) == "killed"
    assert events[-2:] == [("stop", "stubborn", "shutdown"), ("stop", "polite", "shutdown")]
    assert "supervisor.child_killed" in [e["event"] for e in logs]


async def fn_ignoring_shutdown(mbox: reign.Mailbox, log: list[Any]) -> None:
    mbox.trap_exits = True
    async for msg in mbox:
        log.append(msg)


async def test_a_process_child_trapping_exits_gets_shutdown_then_is_killed(node: reign.Node) -> None:
    log: list[Any] = []
    sup = await Sup.start(node, [reign.ChildSpec("p", fn_ignoring_shutdown, (log,), shutdown=0.05)])
    child = (await children(sup))["p"]
    assert child is not None
    watcher = await watch(node, child)
    await reign.stop(sup, timeout=GUARD)
    assert await closed_reason(watcher) == "killed"
    assert log == [reign.Exit(sup.id, "shutdown")]


async def test_brutal_kill_kills_at_once_without_terminate(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, "a"), worker(events, "b", shutdown="brutal_kill")])
    b = await watch(node, (await children(sup))["b"])
    await reign.stop(sup, timeout=GUARD)
    assert await closed_reason(b) == "killed"
    assert stops(events) == ["a"]


async def test_infinity_waits_for_the_child_however_long_it_takes(node: reign.Node) -> None:
    gate = asyncio.Event()
    log: list[Any] = []

    class Slow(reign.GenServer):
        async def init(self) -> None:
            self.trap_exits = True

        async def terminate(self, reason: Any) -> None:
            log.append(("terminating", reason))
            await gate.wait()
            log.append("terminated")

    sup = await Sup.start(node, [reign.ChildSpec("slow", Slow, shutdown="infinity")])
    child = (await children(sup))["slow"]
    assert child is not None
    watcher = await watch(node, child)
    stopping = asyncio.create_task(reign.stop(sup, timeout=None))
    await asyncio.sleep(0.1)
    assert log == [("terminating", "shutdown")] and not stopping.done()
    gate.set()
    await asyncio.wait_for(stopping, GUARD)
    assert await closed_reason(watcher) == "shutdown"
    assert log[-1] == "terminated"


# ------------------------------------------------------------------------------ names after restart


async def test_children_register_their_names_again_after_a_restart(tmp_path: Path) -> None:
    async with node_pair("remote", tmp_path) as (n1, n2):
        events: list[Any] = []
        specs = [worker(events, "local", name="w.local"), worker(events, "global", global_name="w.global")]
        sup = await Sup.start(n1, specs, name="the_sup", global_name="the_sup.g", intensity=10)
        assert n1.whereis("the_sup") == sup
        await wait_until(lambda: n2.names.lookup("w.global") is not None and n2.names.lookup("the_sup.g") == sup)
        for _ in range(2):
            kids = await children(sup)
            assert n1.whereis("w.local") == kids["local"]
            assert n1.names.lookup("w.global") == kids["global"]
            await wait_until(lambda kids=kids: n2.names.lookup("w.global") == kids["global"])
            # killed from the other node
            reign.exit(seen_from(n2, kids["local"]), "kill")
            reign.exit(seen_from(n2, kids["global"]), "kill")
            await restarted(sup, "local", kids["local"])
            await restarted(sup, "global", kids["global"])
        kids = await children(sup)
        assert n1.whereis("w.local") == kids["local"] and n1.names.lookup("w.global") == kids["global"]
        await wait_until(lambda: n2.names.lookup("w.global") == kids["global"])
        remote = n2.names.lookup("w.global")
        assert remote is not None
        assert await reign.call(remote, "whoami", timeout=GUARD) == ("global", kids["global"])


# ------------------------------------------------------------------------------ management calls


async def test_start_child_adds_a_child_at_the_end_and_refuses_a_taken_id(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, "a")])
    c = await Sup.start_child(sup, worker(events, "c"))
    assert await Sup.which_children(sup) == [("a", (await children(sup))["a"]), ("c", c)]
    with pytest.raises(reign.Failure) as started:
        await Sup.start_child(sup, worker(events, "c"))
    assert started.value.type == "already_started"
    await Sup.terminate_child(sup, "c")
    with pytest.raises(reign.Failure) as present:
        await Sup.start_child(sup, worker(events, "c"))
    assert present.value.type == "already_present"
    with pytest.raises(reign.Failure) as bad:
        await Sup.start_child(sup, ("not", "a", "spec"))
    assert bad.value.type == "bad_spec"
    await reign.stop(sup, timeout=GUARD)
    assert stops(events) == ["c", "a"]  # c was stopped by terminate_child, then a at the end


async def test_start_child_that_fails_to_start_leaves_no_trace(node: reign.Node) -> None:
    # supervisor.erl's start_child saves the child only if it started: a failed one can be
    # started again with the same id.
    events: list[Any] = []
    control: dict[str, Any] = {"fail": {"b"}}
    sup = await Sup.start(node, [worker(events, "a")])
    for restart in ("permanent", "transient", "temporary"):
        control["fail"] = {"b"}
        with pytest.raises(reign.Failure) as failed:
            await Sup.start_child(sup, worker(events, "b", restart=restart, control=control))
        assert failed.value.type == "start_failed"
        assert [i for i, _ in await Sup.which_children(sup)] == ["a"], restart
        control["fail"] = set()
        b = await Sup.start_child(sup, worker(events, "b", restart=restart, control=control))
        assert await reign.call(b, "whoami", timeout=GUARD) == ("b", b)
        await Sup.terminate_child(sup, "b")
        if restart != "temporary":
            await Sup.delete_child(sup, "b")


async def test_terminate_restart_and_delete_child(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, t) for t in "abc"])
    before = await children(sup)
    assert await Sup.terminate_child(sup, "b") is None
    assert await children(sup) == {"a": before["a"], "b": None, "c": before["c"]}
    assert [e for e in events if e[0] == "stop"] == [("stop", "b", "shutdown")]
    assert await Sup.terminate_child(sup, "b") is None  # stopping a stopped child is fine
    # a terminated child is not restarted by anything but restart_child
    reign.exit(before["c"], "kill")
    await restarted(sup, "c", before["c"])
    assert (await children(sup))["b"] is None
    with pytest.raises(reign.Failure) as running:
        await Sup.delete_child(sup, "a")
    assert running.value.type == "running"
    with pytest.raises(reign.Failure) as running:
        await Sup.restart_child(sup, "a")
    assert running.value.type == "running"
    new_b = await Sup.restart_child(sup, "b")
    assert (await children(sup))["b"] == new_b and new_b != before["b"]
    assert [i for i, _ in await Sup.which_children(sup)] == list("abc")  # keeps its place
    await Sup.terminate_child(sup, "b")
    assert await Sup.delete_child(sup, "b") is None
    assert list(await children(sup)) == ["a", "c"]
    for op in (Sup.terminate_child, Sup.restart_child, Sup.delete_child):
        with pytest.raises(reign.Failure) as missing:
            await op(sup, "b")
        assert missing.value.type == "not_found"


async def test_terminate_child_forgets_a_temporary_child(node: reign.Node) -> None:
    events: list[Any] = []
    sup = await Sup.start(node, [worker(events, "t", restart="temporary"), worker(events, "p")])
    await Sup.terminate_child(sup, "t")
    assert list(await children(sup)) == ["p"]


async def test_restart_child_that_fails_to_start_keeps_the_spec(node: reign.Node) -> None:
    events: list[Any] = []
    control: dict[str, Any] = {"fail": set()}
    sup = await Sup.start(node, [worker(events, "a", control=control)])
    await Sup.terminate_child(sup, "a")
    control["fail"].add("a")
    with pytest.raises(reign.Failure) as failed:
        await Sup.restart_child(sup, "a")
    assert failed.value.type == "start_failed"
    assert await children(sup) == {"a": None}
    control["fail"].clear()
    assert await Sup.restart_child(sup, "a") is not None


async def test_management_calls_from_another_node(tmp_path: Path) -> None:
    async with node_pair("remote", tmp_path) as (n1, n2):
        events: list[Any] = []
        sup = await Sup.start(n1, [worker(events, t) for t in "ab"])
        remote_sup = seen_from(n2, sup)
        assert await Sup.which_children(remote_sup) == await Sup.which_children(sup)
        await Sup.terminate_child(remote_sup, "a")
        assert (await children(remote_sup))["a"] is None
        new_a = await Sup.restart_child(remote_sup, "a")
        assert (await children(sup))["a"] == new_a
        with pytest.raises(reign.Failure) as missing:
            await Sup.delete_child(remote_sup, "zzz")
        assert (missing.value.type, missing.value.payload) == ("not_found", None)
        with pytest.raises(ValueError):  # a ChildSpec holds code: it does not cross nodes
            await Sup.start_child(remote_sup, worker(events, "c"))
        await reign.stop(remote_sup, timeout=GUARD)
        with pytest.raises(reign.ServerExited) as gone:
            await Sup.which_children(remote_sup)
        assert gone.value.reason == "noproc"


async def test_bad_requests_and_gone_supervisors(node: reign.Node) -> None:
    sup = await Sup.start(node, [])
    assert await Sup.which_children(sup) == []
    for request in ("junk", ("nope", 1), ("start_child",), ()):
        with pytest.raises(reign.Failure) as bad:
            await reign.call(sup, request, timeout=GUARD)
        assert bad.value.type == "bad_request"
    with pytest.raises(TypeError):
        await Sup.which_children("sup")  # type: ignore[arg-type]
    await reign.stop(sup, timeout=GUARD)
    with pytest.raises(reign.ServerExited) as gone:
        await Sup.which_children(sup)
    assert gone.value.reason == "noproc"
    with pytest.raises(reign.ServerExited) as gone:
        await Sup.start_child(sup, reign.ChildSpec("x", Worker))
    assert gone.value.reason == "noproc"


# ------------------------------------------------------------------------------ simple_one_for_one


async def test_simple_one_for_one_children_get_extra_args_and_are_listed_without_ids(node: reign.Node) -> None:
    events: list[Any] = []
    template = reign.ChildSpec("tmpl", Worker, (events, "w"))
    sup = await Sup.start(node, [template], strategy="simple_one_for_one")
    assert await Sup.which_children(sup) == [] and events == []
    a = await Sup.start_child(sup, ["extra", 1])
    b = await Sup.start_child(sup, ("extra", 2))
    assert await Sup.which_children(sup) == [(None, a), (None, b)]
    assert [e for e in events if e[0] == "start"] == [("start", "w", ("extra", 1)), ("start", "w", ("extra", 2))]
    # a crashed child comes back with the same extra args, in the same place... or at the end
    events.clear()
    reign.exit(a, "kill")
    found = await wait_children(sup, lambda cs: len(cs) == 2 and a not in [x for _, x in cs])
    assert b in [x for _, x in found]
    assert events == [("start", "w", ("extra", 1))]
    with pytest.raises(reign.Failure) as bad:
        await Sup.start_child(sup, template)
    assert bad.value.type == "bad_spec"
    await Sup.terminate_child(sup, b)
    assert [x for _, x in await Sup.which_children(sup)] == [x for _, x in found if x != b]
    with pytest.raises(reign.Failure) as missing:
        await Sup.terminate_child(sup, b)
    assert missing.value.type == "not_found"


@pytest.mark.parametrize("restart", ["transient", "temporary"])
async def test_simple_one_for_one_forgets_children_that_are_not_restarted(node: reign.Node, restart: str) -> None:
    events: list[Any] = []
    template = reign.ChildSpec("tmpl", Worker, (events, "w"), restart=restart)  # type: ignore[arg-type]
    sup = await Sup.start(node, [template], strategy="simple_one_for_one")
    a = await Sup.start_child(sup, [1])
    b = await Sup.start_child(sup, [2])
    await reign.call(a, ("exit", "normal"), timeout=GUARD)
    await wait_children(sup, lambda cs: cs == [(None, b)])
    reign.cast(b, "crash")
    if restart == "transient":
        found = await wait_children(sup, lambda cs: len(cs) == 1 and cs[0][1] != b)
        assert found[0][1] is not None
    else:
        await wait_children(sup, lambda cs: cs == [])


async def test_simple_one_for_one_failures_and_shutdown(node: reign.Node) -> None:
    events: list[Any] = []
    control: dict[str, Any] = {"fail": {"w"}}
    template = reign.ChildSpec("tmpl", Worker, (events, "w"), {"control": control})
    sup = await Sup.start(node, [template], strategy="simple_one_for_one")
    with pytest.raises(reign.Failure) as failed:
        await Sup.start_child(sup, [1])
    assert failed.value.type == "start_failed"
    assert await Sup.which_children(sup) == []
    control["fail"] = set()
    kids = [await Sup.start_child(sup, [i]) for i in range(3)]
    await reign.stop(sup, timeout=GUARD)
    assert sorted(e[1:] for e in events if e[0] == "stop") == [("w", "shutdown")] * 3
    assert all(k.send("x") is False for k in kids)
