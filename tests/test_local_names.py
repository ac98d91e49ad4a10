"""Local names (Erlang's register/whereis/registered), ``{Name, Node} ! Msg`` and
``node.wait_connected``: on one node and across real TLS nodes in one process.

The contract: "Local names" and "Waiting for the cluster" in API.md (round 2).
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import reign
from reign import MailboxClosed, RegistrationError

from cluster_util import drain, wait_for
from proc_util import HANG, Observer, on, roundtrip

Pair = tuple[reign.Node, reign.Node]


class Service(enum.StrEnum):
    LOG = "log"


@pytest.fixture
async def node() -> AsyncIterator[reign.Node]:
    async with reign.no_clustering() as n:
        yield n


# ------------------------------------------------------------------------ register / whereis


async def test_register_whereis_registered_unregister(node: reign.Node) -> None:
    a, _ = node.new_mailbox()
    b, _ = node.new_mailbox()
    assert node.registered() == [] and node.whereis("a") is None
    node.register("zeta", a)
    node.register("alpha", b)
    assert node.whereis("zeta") == a and node.whereis("alpha") == b
    assert node.registered() == ["alpha", "zeta"]
    node.unregister("zeta")
    assert node.whereis("zeta") is None and node.registered() == ["alpha"]
    node.register("again", a)  # a is free to take a name again
    assert node.whereis("again") == a


async def test_names_are_separate_from_the_global_registry(node: reign.Node) -> None:
    a, _ = node.new_mailbox()
    node.register("svc", a)
    assert node.names.lookup("svc") is None
    b, _ = node.new_mailbox()
    node.names.register("svc", b)
    assert node.whereis("svc") == a and node.names.lookup("svc") == b


async def test_a_str_subclass_name_is_its_text(node: reign.Node) -> None:
    a, _ = node.new_mailbox()
    node.register(Service.LOG, a)
    assert node.registered() == ["log"] and type(node.registered()[0]) is str
    assert node.whereis("log") == a and node.whereis(Service.LOG) == a
    with pytest.raises(RegistrationError, match="already registered"):
        node.register("log", node.new_mailbox()[0])
    node.unregister(Service.LOG)
    assert node.registered() == []


async def test_registering_a_taken_name_says_so(node: reign.Node) -> None:
    a, _ = node.new_mailbox()
    b, _ = node.new_mailbox()
    node.register("svc", a)
    with pytest.raises(RegistrationError, match=r"name 'svc' is already registered to") as err:
        node.register("svc", b)
    assert str(a.id) in str(err.value)
    assert node.whereis("svc") == a


async def test_a_mailbox_has_one_name(node: reign.Node) -> None:
    a, _ = node.new_mailbox()
    node.register("first", a)
    with pytest.raises(RegistrationError, match=r"already registered as 'first'"):
        node.register("second", a)
    with pytest.raises(RegistrationError, match=r"already registered as 'first'"):
        node.register("first", a)  # the same name again: Erlang's register/2 says badarg too
    assert node.registered() == ["first"]


async def test_a_closed_mailbox_cannot_be_registered(node: reign.Node) -> None:
    a, mbox = node.new_mailbox()
    mbox.close()
    with pytest.raises(RegistrationError, match="not an open mailbox"):
        node.register("late", a)
    assert node.registered() == []


@pytest.mark.parametrize("where", ["other node", "other incarnation", "unknown serial"])
async def test_a_foreign_address_cannot_be_registered(node: reign.Node, where: str) -> None:
    text = {
        "other node": "<3.1.1>",
        "other incarnation": f"<0.{node.incarnation + 1}.1>",
        "unknown serial": f"<0.{node.incarnation}.424242>",
    }[where]
    with pytest.raises(RegistrationError, match=f"not an open mailbox of node {node.id}"):
        node.register("svc", node.address(text))
    assert node.registered() == []


async def test_a_remote_mailbox_cannot_be_registered(pair: Pair) -> None:
    n1, n2 = pair
    remote, _ = n2.new_mailbox()
    with pytest.raises(RegistrationError, match="not an open mailbox of node 1"):
        n1.register("svc", on(n1, remote))


@pytest.mark.parametrize(("name", "says"), [
    ("", "empty"), (42, "str"), (None, "str"), (b"bytes", "str"), ("x" * 513, "at most 512"),
    ("\ud800", "UTF-8"),
])
async def test_bad_names_are_refused_saying_why(node: reign.Node, name: Any, says: str) -> None:
    a, _ = node.new_mailbox()
    with pytest.raises(RegistrationError, match=says):
        node.register(name, a)
    assert node.registered() == []


async def test_only_an_address_can_be_registered(node: reign.Node) -> None:
    a, _ = node.new_mailbox()
    for bad in (str(a), a.id, None):
        with pytest.raises(RegistrationError, match="only an Address"):
            node.register("svc", bad)  # type: ignore[arg-type]


async def test_registration_error_is_a_reign_error(node: reign.Node) -> None:
    assert issubclass(RegistrationError, reign.ReignError)
    with pytest.raises(reign.ReignError):
        node.unregister("nobody")


@pytest.mark.parametrize("name", ["nobody", 42, ""])
async def test_unregistering_an_unknown_name_raises(node: reign.Node, name: Any) -> None:
    with pytest.raises(RegistrationError, match="no mailbox is registered"):
        node.unregister(name)


async def test_register_off_the_loop_thread_raises(node: reign.Node) -> None:
    a, _ = node.new_mailbox()
    errors: list[BaseException] = []

    def other_thread() -> None:
        for call in (lambda: node.register("svc", a), lambda: node.unregister("svc")):
            try:
                call()
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(HANG)
    assert [type(e) for e in errors] == [RuntimeError, RuntimeError]
    assert node.registered() == []


async def test_the_name_disappears_when_the_mailbox_closes(node: reign.Node) -> None:
    a, mbox = node.new_mailbox()
    node.register("svc", a)
    mbox.close("bye")
    assert node.whereis("svc") is None and node.registered() == []
    b, _ = node.new_mailbox()
    node.register("svc", b)  # free for another mailbox
    assert node.whereis("svc") == b


async def test_the_name_of_a_process_disappears_when_it_exits(node: reign.Node) -> None:
    obs = Observer(node)

    async def fn(mbox: reign.Mailbox) -> None:
        node.register("worker", mbox.address)
        await mbox.receive()
        raise RuntimeError("crash")

    proc = node.spawn(fn)
    obs.watch(proc)
    await wait_for(lambda: node.whereis("worker") == proc)
    assert node.send_named("worker", "go") is True
    down = await obs.box.receive(timeout=HANG)
    assert type(down) is MailboxClosed and down.reason.type == "RuntimeError"
    assert node.whereis("worker") is None
    assert node.send_named("worker", "too late") is False


async def test_names_are_gone_after_the_node_stops() -> None:
    node = reign.no_clustering()
    await node.start()
    a, _ = node.new_mailbox()
    node.register("svc", a)
    await node.stop()
    assert node.whereis("svc") is None and node.registered() == []


# ------------------------------------------------------------------------ send_named


async def test_send_named_locally(node: reign.Node) -> None:
    a, mbox = node.new_mailbox()
    node.register("svc", a)
    assert node.send_named("svc", ("hello", 1)) is True
    assert node.send_named("svc", "own node by id", node=node.id) is True
    assert drain(mbox) == [("hello", 1), "own node by id"]
    assert node.send_named("nobody", "x") is False
    assert node.send_named("svc", "other node", node=5) is False  # no clustering: unreachable
    assert len(mbox) == 0


@pytest.mark.parametrize("name", ["", 42, None, "x" * 513, "\ud800"])
async def test_send_named_refuses_a_bad_name_locally_too(node: reign.Node, name: Any) -> None:
    assert node.whereis(name) is None
    with pytest.raises(ValueError):
        node.send_named(name, "x")
    with pytest.raises(ValueError):
        node.send_named(name, "x", node=node.id)


async def test_send_named_to_another_node(pair: Pair) -> None:
    n1, n2 = pair
    a2, mbox2 = n2.new_mailbox()
    n2.register("svc", a2)
    me, mbox1 = n1.new_mailbox()
    assert n1.send_named("svc", ("hello", me), node=2) is True
    msg, reply_to = await mbox2.receive(timeout=HANG)
    assert msg == "hello" and reply_to == me
    reply_to.send("reply")  # the address in it works over there
    assert await mbox1.receive(timeout=HANG) == "reply"
    for i in range(3):  # in order with plain sends on the same connection
        n1.send_named("svc", ("named", i), node=2)
        on(n1, a2).send(("plain", i))
    got = [await mbox2.receive(timeout=HANG) for _ in range(6)]
    assert got == [(kind, i) for i in range(3) for kind in ("named", "plain")]


async def test_send_named_to_an_unknown_name_on_another_node_drops_silently(pair: Pair) -> None:
    n1, n2 = pair
    a2, mbox2 = n2.new_mailbox()
    assert n1.send_named("nobody", "lost", node=2) is True  # resolved there, as in Erlang
    assert n1.send_named("svc", "before it had the name", node=2) is True
    await roundtrip(n1, n2)
    n2.register("svc", a2)
    assert n1.send_named("svc", "after", node=2) is True
    assert await mbox2.receive(timeout=HANG) == "after"
    assert len(mbox2) == 0
    assert n1.statistics().peers[2].state == "up" and n1.statistics().peers[2].connects == 1


async def test_send_named_to_a_node_that_is_down_or_unknown_returns_false(pair: Pair) -> None:
    n1, n2 = pair
    assert n1.send_named("svc", "x", node=3) is False  # in the spec, never started
    assert n1.send_named("svc", "x", node=99) is False  # not in the spec
    await n2.stop()
    await wait_for(lambda: n1.statistics().peers[2].state == "down")
    assert n1.send_named("svc", "x", node=2) is False


async def test_send_named_refuses_bad_names_and_messages(pair: Pair) -> None:
    n1, _ = pair
    for bad in ("", "x" * 600, 42):
        with pytest.raises(ValueError):
            n1.send_named(bad, "x", node=2)  # type: ignore[arg-type]
    with pytest.raises(reign.EncodeError):
        n1.send_named("svc", {1, 2}, node=2)


async def test_send_named_from_another_thread(pair: Pair) -> None:
    n1, n2 = pair
    a2, mbox2 = n2.new_mailbox()
    n2.register("svc", a2)
    a1, mbox1 = n1.new_mailbox()
    n1.register("local", a1)
    results: list[bool] = []

    def other_thread() -> None:
        results.append(n1.send_named("svc", "from a thread", node=2))
        results.append(n1.send_named("local", "also local"))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(HANG)
    assert results == [True, True]
    assert await mbox2.receive(timeout=HANG) == "from a thread"
    assert await mbox1.receive(timeout=HANG) == "also local"


# ------------------------------------------------------------------------ wait_connected


async def test_wait_connected_waits_for_the_listed_peers(spec: Path) -> None:
    async with reign.create_from_spec_file(spec, 1) as n1:
        with pytest.raises(TimeoutError):
            await n1.wait_connected(2, timeout=0.05)
        n2 = reign.create_from_spec_file(spec, 2)
        waiter = asyncio.ensure_future(n1.wait_connected(2, timeout=HANG))
        await asyncio.sleep(0)
        assert not waiter.done()
        async with n2:
            await waiter
            assert n1.statistics().peers[2].state == "up"
            await n1.wait_connected(2, timeout=0)  # already up: returns at once, even with 0
            await n2.wait_connected(1, timeout=HANG)
            a2, mbox2 = n2.new_mailbox()
            assert on(n1, a2).send("right away") is True
            assert await mbox2.receive(timeout=HANG) == "right away"
            with pytest.raises(TimeoutError):
                await n1.wait_connected(timeout=0.05)  # all peers: node 3 is missing
            with pytest.raises(TimeoutError):
                await n1.wait_connected(2, 3, timeout=0.05)
            async with reign.create_from_spec_file(spec, 3):
                await n1.wait_connected(timeout=HANG)
                await n1.wait_connected(2, 3, timeout=HANG)


async def test_wait_connected_waits_again_after_a_peer_is_lost(spec: Path) -> None:
    async with reign.create_from_spec_file(spec, 1) as n1:
        async with reign.create_from_spec_file(spec, 2):
            await n1.wait_connected(2, timeout=HANG)
        await wait_for(lambda: n1.statistics().peers[2].state == "down")
        with pytest.raises(TimeoutError):
            await n1.wait_connected(2, timeout=0.05)
        async with reign.create_from_spec_file(spec, 2):
            await n1.wait_connected(2, timeout=HANG)


async def test_wait_connected_refuses_ids_that_are_not_peers(pair: Pair) -> None:
    n1, _ = pair
    for bad in (1, 99):  # itself, and a node not in the spec
        with pytest.raises(KeyError):
            await n1.wait_connected(bad, timeout=HANG)
    with pytest.raises(KeyError):
        await n1.wait_connected(2, 99, timeout=HANG)


async def test_wait_connected_without_clustering(node: reign.Node) -> None:
    await node.wait_connected(timeout=0)
    await node.wait_connected()
    with pytest.raises(KeyError):
        await node.wait_connected(1)
    with pytest.raises(KeyError):
        await node.wait_connected(0)


async def test_wait_connected_off_the_loop_thread_raises(pair: Pair) -> None:
    n1, _ = pair
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            asyncio.run(n1.wait_connected(2, timeout=1))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(HANG)
    assert len(errors) == 1 and type(errors[0]) is RuntimeError
