"""Behaviours the documentation states (``docs/api.md``, ``docs/porting.md``) that no other test
pins, checked against the code. The last three were found while the docs were written (the code
did not honour them then) and pin the fixes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import reign
from reign.testing import make_cluster

pytestmark = pytest.mark.timeout(60)

#: Seconds to wait for what should take milliseconds; only spent when failing.
WAIT = 10.0


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[reign.Node, reign.Node]]:
    """Two connected nodes over real TLS on loopback."""
    spec = make_cluster(tmp_path, [1, 2])
    async with reign.create_from_spec_file(spec, 1) as n1, reign.create_from_spec_file(spec, 2) as n2:
        await n1.wait_connected(2, timeout=WAIT)
        await n2.wait_connected(1, timeout=WAIT)
        yield n1, n2


class Server(reign.GenServer):
    """Answers ``("reply", value)`` with ``value``, ``("fail", type, message)`` by raising a
    :class:`SubFailure`, ``"ping"`` with ``"pong"`` and ``"a set"`` with a set."""

    async def handle_call(self, request: object, caller: reign.Caller) -> object:
        match request:
            case ("reply", value):
                return value
            case ("fail", str(type_), str(message)):
                raise SubFailure(type_, message)
            case "ping":
                return "pong"
            case "a set":
                return {"a", "set"}  # a reply that cannot cross nodes
        raise ValueError(request)


class SubFailure(reign.Failure):
    """An application's own kind of Failure."""


# ----------------------------------------------------------------------------- documented, holds


async def test_a_claim_is_withdrawn_before_the_claimants_watchers_are_told(
    pair: tuple[reign.Node, reign.Node],
) -> None:
    """api.md, Global names: a watcher that got a claimant's MailboxClosed no longer sees its
    claim, here or on another node (the README's "A taste" and ch3's test rely on it)."""
    n1, n2 = pair
    claimant, _ = n2.new_mailbox()
    n2.names.register("svc", claimant)
    assert await n1.names.wait_for("svc", timeout=WAIT) == claimant
    local_watcher, local_box = n2.new_mailbox()
    remote_watcher, remote_box = n1.new_mailbox()
    claimant.on_close_notify(local_watcher)
    n1.address(str(claimant)).on_close_notify(remote_watcher)
    await n1.names.sync()
    await n2.names.sync()  # its answer comes after the MONITOR frame node 1 sent
    reign.exit(claimant, "bye")
    assert (await local_box.receive(timeout=WAIT)).reason == "bye"
    assert n2.names.lookup("svc") is None
    assert (await remote_box.receive(timeout=WAIT)).reason == "bye"
    assert n1.names.lookup("svc") is None


async def test_a_named_send_to_a_peer_that_is_not_connected_is_not_buffered(tmp_path: Path) -> None:
    """api.md, Local names: send_named to a disconnected peer returns False, while addr.send to an
    address there is buffered (True)."""
    spec = make_cluster(tmp_path, [1, 2])
    async with reign.create_from_spec_file(spec, 1) as n1:
        assert n1.send_named("anyone", "hello", node=2) is False
        assert n1.send_named("anyone", "hello", node=7) is False  # not in the spec
        somewhere = reign.MailboxID(2, 1, 1)
        assert n1.address(str(somewhere)).send("hello") is True


async def test_a_failure_answers_a_caller_on_another_node(pair: tuple[reign.Node, reign.Node]) -> None:
    n1, n2 = pair
    server = await Server.start(n2)
    remote = n1.address(str(server))
    with pytest.raises(reign.Failure) as raised:
        await reign.call(remote, ("reply", reign.Failure("nope", "as a value", [1])))
    assert raised.value == reign.Failure("nope", "as a value", [1])
    assert await reign.call(remote, "ping") == "pong"


# ----------------------------------------------------------------------------- found while documenting (fixed)


async def test_a_failure_subclass_answers_a_remote_caller_and_the_server_runs_on(
    pair: tuple[reign.Node, reign.Node],
) -> None:
    """api.md, gen_server: raising a Failure answers the call and the server keeps running; a
    subclass reaches a caller on another node as a plain Failure with the same fields."""
    n1, n2 = pair
    server = await Server.start(n2)
    remote = n1.address(str(server))
    with pytest.raises(reign.Failure) as raised:
        await reign.call(remote, ("fail", "mine", "a subclass"))
    assert (raised.value.type, raised.value.message) == ("mine", "a subclass")
    assert await reign.call(remote, "ping") == "pong"


async def test_check_messages_checks_the_replies_of_calls_too() -> None:
    """api.md, Nodes: with check_messages every local send goes through the codec; a call whose
    reply could not cross nodes fails on one node as it does across two (the server crashes with
    EncodeError and the caller gets ServerExited)."""
    async with reign.no_clustering(check_messages=True) as node:
        server = await Server.start(node)
        with pytest.raises(reign.ServerExited) as exited:
            await reign.call(server, "a set")
        assert isinstance(exited.value.reason, reign.Crash)
        assert "EncodeError" in exited.value.reason.type


async def test_send_named_refuses_system_messages(pair: tuple[reign.Node, reign.Node]) -> None:
    """api.md, System messages: only the runtime sends MailboxClosed, Exit and MultipleClaim; a
    send of one as the message raises TypeError, so a notice cannot be forged."""
    n1, n2 = pair
    target, mbox = n2.new_mailbox()
    n2.register("victim", target)
    forged = reign.MailboxClosed(target.id, "forged")
    with pytest.raises(TypeError):
        n2.send_named("victim", forged)
    assert len(mbox) == 0
    with pytest.raises(TypeError):
        n1.send_named("victim", forged, node=2)
    assert n1.statistics().peers[2].connects == 1 and n1.statistics().peers[2].state == "up"
