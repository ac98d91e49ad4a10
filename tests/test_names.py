"""The name registry on a no_clustering() node: the whole API, locally, on real mailboxes.

The registry protocol (frames from peers) is tested without I/O in ``test_registry_wire.py`` and
over real TLS in ``test_names_cluster.py`` and ``test_registry_hostile.py``."""

from __future__ import annotations

import asyncio
import enum
import threading

import pytest
from structlog.testing import capture_logs

import reign
from reign._runtime.names import MAX_NAME_BYTES

from cluster_util import drain


async def test_register_lookup_seen_and_unregister() -> None:
    async with reign.no_clustering() as node:
        names = node.names
        addr, mbox = node.new_mailbox()
        assert names.lookup("svc") is None and names.lookup_all("svc") == []
        assert names.seen_names("svc", "other") == [False, False]
        names.register("svc", addr)
        assert names.lookup("svc") == addr
        assert names.lookup("svc") is addr  # the live local mailbox's own address
        assert names.lookup_all("svc") == [addr]
        assert names.seen_names("svc", "other") == [True, False]
        assert names.seen_names() == []
        names.register("svc", addr)  # idempotent
        assert names.lookup_all("svc") == [addr] and drain(mbox) == []
        names.register("second", addr)  # one mailbox, several names
        names.unregister("svc", addr)
        assert names.lookup("svc") is None and names.lookup("second") == addr
        names.unregister("svc", addr)  # not a claimant any more: ignored
        names.unregister("never", addr)
        assert names.multiple_claim_count == 0


async def test_unregister_removes_only_that_claimant_and_ignores_junk() -> None:
    async with reign.no_clustering() as node:
        names = node.names
        (a, _), (b, _) = node.new_mailbox(), node.new_mailbox()
        names.register("n", a)
        names.register("n", b)
        names.unregister("n", node.address("<1.5.5>"))  # another node's address: not ours
        names.unregister("n", "junk")  # type: ignore[arg-type]
        names.unregister(3, a)  # type: ignore[arg-type]
        assert names.lookup_all("n") == [a, b]
        names.unregister("n", a)
        assert names.lookup_all("n") == [b] and names.multiple_claim_count == 0


async def test_closing_a_mailbox_drops_all_its_claims() -> None:
    async with reign.no_clustering() as node:
        names = node.names
        addr, mbox = node.new_mailbox()
        other, _ = node.new_mailbox()
        for name in ("a", "b", "c"):
            names.register(name, addr)
        names.register("b", other)
        mbox.close()
        assert names.seen_names("a", "b", "c") == [False, True, False]
        assert names.lookup("b") == other and names.multiple_claim_count == 0


async def test_stopping_the_node_drops_every_claim() -> None:
    node = reign.no_clustering()
    async with node:
        addr, _ = node.new_mailbox()
        node.names.register("n", addr)
    assert node.names.lookup("n") is None


async def test_lookup_is_the_smallest_claimant() -> None:
    async with reign.no_clustering() as node:
        addrs = [node.new_mailbox()[0] for _ in range(5)]
        for addr in reversed(addrs):
            node.names.register("n", addr)
        assert node.names.lookup("n") == addrs[0]
        assert node.names.lookup_all("n") == addrs


async def test_each_claimant_is_told_once_when_the_name_gains_a_claimant() -> None:
    async with reign.no_clustering() as node:
        names = node.names
        boxes = [node.new_mailbox() for _ in range(3)]
        (a, ma), (b, mb), (c, mc) = boxes
        names.register("n", a)
        assert drain(ma) == []
        with capture_logs() as logs:
            names.register("n", b)
        assert drain(ma) == [reign.MultipleClaim("n")]
        assert drain(mb) == [reign.MultipleClaim("n")]  # the newest claimant too
        assert [e["event"] for e in logs] == ["names.multiple_claim"]
        assert names.multiple_claim_count == 1
        names.register("n", c)  # a third claimant: everyone hears once more, once
        assert [drain(m) for _, m in boxes] == [[reign.MultipleClaim("n")]] * 3
        names.register("n", c)  # already claimed: nothing new
        names.register("m", a)
        assert [drain(m) for _, m in boxes] == [[], [], []]
        assert names.multiple_claim_count == 1
        # c leaves and comes back: a new conflict, everyone hears of it again.
        names.unregister("n", c)
        names.register("n", c)
        assert [drain(m) for _, m in boxes] == [[reign.MultipleClaim("n")]] * 3
        # The conflict ends when all but one are gone.
        names.unregister("n", b)
        mc.close()
        assert names.multiple_claim_count == 0 and names.lookup_all("n") == [a]
        assert drain(ma) == []


async def test_multiple_claim_count_counts_names() -> None:
    async with reign.no_clustering() as node:
        names = node.names
        (a, _), (b, _) = node.new_mailbox(), node.new_mailbox()
        for name in ("x", "y", "z"):
            names.register(name, a)
        names.register("x", b)
        names.register("y", b)
        assert names.multiple_claim_count == 2
        names.unregister("x", a)
        assert names.multiple_claim_count == 1


@pytest.mark.parametrize(
    "name", ["", None, 3, b"n", ["n"], "\udcff", "x" * (MAX_NAME_BYTES + 1), "é" * (MAX_NAME_BYTES // 2 + 1)]
)
async def test_bad_names_cannot_be_registered(name: object) -> None:
    async with reign.no_clustering() as node:
        addr, _ = node.new_mailbox()
        with pytest.raises(reign.CantGloballyRegisterError):
            node.names.register(name, addr)  # type: ignore[arg-type]
        assert node.names.multiple_claim_count == 0


async def test_longest_name_and_str_subclasses_are_accepted() -> None:
    class Service(str, enum.Enum):
        CHAT = "chat"

    async with reign.no_clustering() as node:
        addr, _ = node.new_mailbox()
        node.names.register("x" * MAX_NAME_BYTES, addr)
        node.names.register("é" * (MAX_NAME_BYTES // 2), addr)
        node.names.register(Service.CHAT, addr)
        assert node.names.lookup("chat") == addr and node.names.lookup(Service.CHAT) == addr
        assert node.names.seen_names("x" * MAX_NAME_BYTES, "é" * (MAX_NAME_BYTES // 2)) == [True, True]


async def test_only_live_local_mailboxes_can_register() -> None:
    async with reign.no_clustering() as node, reign.no_clustering() as other_node:
        closed, mbox = node.new_mailbox()
        mbox.close()
        foreign, _ = other_node.new_mailbox()  # same node id 0, another incarnation
        for bad in (
            closed,
            foreign,
            node.address(f"<0.{node.incarnation}.99999>"),  # never created
            node.address("<3.1.1>"),  # another node
            str(closed),
            closed.id,
            None,
        ):
            with pytest.raises(reign.CantGloballyRegisterError):
                node.names.register("n", bad)  # type: ignore[arg-type]
        assert not node.names.seen_names("n")[0]


async def test_queries_with_non_str_names_find_nothing() -> None:
    async with reign.no_clustering() as node:
        assert node.names.lookup(None) is None  # type: ignore[arg-type]
        assert node.names.lookup_all(["x"]) == []  # type: ignore[arg-type]
        assert node.names.seen_names(1, b"x") == [False, False]  # type: ignore[arg-type]
        assert node.names.send(None, "hi") is False  # type: ignore[arg-type]


async def test_names_send() -> None:
    async with reign.no_clustering() as node:
        addr, mbox = node.new_mailbox()
        assert node.names.send("svc", "hello") is False
        node.names.register("svc", addr)
        assert node.names.send("svc", "hello") is True
        assert await mbox.receive(timeout=1) == "hello"
        mbox.close()
        assert node.names.send("svc", "again") is False


async def test_sync_returns_at_once_without_peers() -> None:
    async with reign.no_clustering() as node:
        addr, _ = node.new_mailbox()
        node.names.register("n", addr)
        assert await asyncio.wait_for(node.names.sync(), 1) is None  # no peer: nothing to wait for
        assert await node.names.sync(timeout=0) is None
        assert node.names.lookup("n") == addr


async def test_register_and_queries_from_other_threads() -> None:
    async with reign.no_clustering() as node:
        names = node.names
        boxes = [node.new_mailbox() for _ in range(8)]
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            try:
                addr = boxes[index][0]
                for i in range(200):
                    names.register(f"t{index}.{i}", addr)
                    names.register("shared", addr)
                    names.lookup("shared")
                    names.lookup_all("shared")
                    names.seen_names("shared", f"t{index}.{i}")
                with pytest.raises(reign.CantGloballyRegisterError):
                    names.register("", addr)
                names.unregister(f"t{index}.0", addr)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(boxes))]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.001)
        for t in threads:
            t.join()
        assert errors == []
        await asyncio.sleep(0)  # run what the threads forwarded to the loop
        await asyncio.sleep(0)
        assert names.lookup_all("shared") == [addr for addr, _ in boxes]
        for index in range(len(boxes)):
            assert names.seen_names(f"t{index}.0", f"t{index}.199") == [False, True]
            # Every claimant of "shared" is told once per other claimant's arrival, never twice
            # about the same one: at least one notice, at most one per other claimant.
            notices = drain(boxes[index][1])
            assert set(notices) <= {reign.MultipleClaim("shared")}
            assert 1 <= len(notices) <= len(boxes) - 1
        assert names.multiple_claim_count == 1


async def test_register_from_a_thread_of_a_mailbox_closed_meanwhile_claims_nothing() -> None:
    async with reign.no_clustering() as node:
        addr, mbox = node.new_mailbox()
        thread = threading.Thread(target=node.names.register, args=("n", addr))
        thread.start()
        thread.join()  # validated in the thread; the claim waits for the loop
        mbox.close()  # ... which runs this first
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert node.names.lookup("n") is None


async def test_sync_from_another_loop_is_refused() -> None:
    async with reign.no_clustering() as node:
        node.new_mailbox()
        result: list[BaseException] = []

        def other_loop() -> None:
            try:
                asyncio.run(node.names.sync())
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=other_loop)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.001)
        assert len(result) == 1 and isinstance(result[0], RuntimeError)
