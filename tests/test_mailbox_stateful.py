"""Hypothesis stateful test: a mailbox against a list model.

Random sends from several senders, plain and selective receives (immediate and waiting),
cancellations (including the race where a waiting receiver is cancelled right after it was
handed a message) and close. After every step the mailbox's queue must equal the model: every
message sent and not yet taken, in arrival order. No message may be taken twice or lost, and
the messages of each sender reach the receivers (in the order they are resumed) in the order
they were sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import reign

SENDERS = 3


class MailboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = uvloop.new_event_loop()
        self.node = reign.no_clustering()
        self.loop.run_until_complete(self.node.start())
        self.addr, self.mbox = self.node.new_mailbox()
        self.model: list[tuple[int, int]] = []
        self.sent = 0
        self.seq = [0] * SENDERS
        self.taken: list[tuple[int, int]] = []
        self.handed: list[tuple[int, int]] = []  # in the order receivers got them
        self.discarded: list[tuple[int, int]] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.closed = False
        self.rejected = 0

    def teardown(self) -> None:
        self.closed = True
        self.loop.run_until_complete(self.node.stop())
        self.settle()
        self.loop.close()

    # ------------------------------------------------------------ helpers

    def settle(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))
        still = []
        for task in self.tasks:
            if not task.done():
                still.append(task)
            elif task.cancelled():
                pass
            elif task.exception() is not None:
                assert isinstance(task.exception(), reign.MailboxClosedError), task.exception()
                assert self.closed
            else:
                self.take(task.result())
        self.tasks = still

    def take(self, msg: tuple[int, int]) -> None:
        assert msg not in self.taken, f"{msg} received twice"
        assert msg in self.model, f"{msg} was not queued"
        self.model.remove(msg)
        self.taken.append(msg)

    async def recording(self, coro: Any) -> Any:
        """Await ``coro`` (a waiting receive) and note its message when the receiver resumes."""
        msg = await coro
        self.handed.append(msg)
        return msg

    def send_one(self, sender: int) -> None:
        msg = (sender, self.seq[sender])
        self.seq[sender] += 1
        self.sent += 1
        ok = self.addr.send(msg)
        assert ok is (not self.closed)
        if ok:
            self.model.append(msg)
        else:
            self.rejected += 1

    # ------------------------------------------------------------ rules

    @rule(sender=st.integers(0, SENDERS - 1), count=st.integers(1, 4))
    def send(self, sender: int, count: int) -> None:
        for _ in range(count):
            self.send_one(sender)
        self.settle()

    @precondition(lambda self: not self.closed and not self.tasks)
    @rule()
    def receive_nowait(self) -> None:
        if self.model:
            expected = self.model[0]
            assert self.mbox.receive_nowait() == expected
            self.handed.append(expected)
            self.take(expected)
        else:
            try:
                self.mbox.receive_nowait()
            except reign.Empty:
                pass
            else:
                raise AssertionError("receive_nowait on an empty mailbox returned a message")

    @precondition(lambda self: not self.closed and not self.tasks)
    @rule(sender=st.integers(0, SENDERS - 1))
    def receive_match_immediate(self, sender: int) -> None:
        expected = next((m for m in self.model if m[0] == sender), None)
        coro = self.mbox.receive_match(lambda m: m[0] == sender, timeout=0)
        try:
            got = self.loop.run_until_complete(coro)
        except TimeoutError:
            assert expected is None
        else:
            assert got == expected
            self.handed.append(got)
            self.take(got)
        self.settle()

    @precondition(lambda self: not self.closed and len(self.tasks) < 4)
    @rule(sender=st.one_of(st.none(), st.integers(0, SENDERS - 1)))
    def start_waiter(self, sender: int | None) -> None:
        if sender is None:
            coro = self.mbox.receive()
        else:
            coro = self.mbox.receive_match(lambda m, s=sender: m[0] == s)
        self.tasks.append(self.loop.create_task(self.recording(coro)))
        self.settle()

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self.tasks)).cancel()
        self.settle()

    @precondition(lambda self: bool(self.tasks) and not self.closed)
    @rule(data=st.data(), sender=st.integers(0, SENDERS - 1))
    def send_then_cancel_before_it_runs(self, data: st.DataObject, sender: int) -> None:
        self.send_one(sender)
        data.draw(st.sampled_from(self.tasks)).cancel()
        self.settle()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.mbox.close()
        self.closed = True
        self.discarded.extend(self.model)
        self.model.clear()
        self.settle()
        assert not self.tasks

    # ------------------------------------------------------------ invariants

    @invariant()
    def queue_equals_model(self) -> None:
        assert list(self.mbox._queue or ()) == self.model
        assert len(self.mbox) == len(self.model)

    @invariant()
    def nothing_lost_or_duplicated(self) -> None:
        accounted = self.taken + self.model + self.discarded
        assert len(accounted) == len(set(accounted)), "a message was counted twice"
        assert len(accounted) == self.sent - self.rejected, "a message was lost"

    @invariant()
    def each_senders_messages_reach_receivers_in_order(self) -> None:
        assert sorted(self.handed) == sorted(self.taken)
        for sender in range(SENDERS):
            seqs = [s for (snd, s) in self.handed if snd == sender]
            assert seqs == sorted(seqs), f"sender {sender}'s messages were received as {seqs}"


MailboxMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestMailboxModel = MailboxMachine.TestCase
