"""Hypothesis stateful test: a supervisor against a model of its children.

The machine starts a supervisor (strategy, intensity and the children's restart types drawn)
and then, step by step, makes a child exit with a drawn reason (normal, shutdown,
``("shutdown", x)``, a custom reason, a crash, a kill), or calls ``terminate_child``,
``restart_child``, ``delete_child``, ``start_child``. The model applies supervisor.erl's rules:
restart types, the strategy's group (one_for_all: everyone; rest_for_one: the child and those
after it; temporary siblings stopped for a restart are forgotten, stopped ones in the group are
started again), restart intensity (more than ``intensity`` restarts: the supervisor stops every
child and exits ``"shutdown"``), and the management calls' results and Failure types.

After every step: ``which_children`` equals the model (ids, order, running or not); every
running child's address is a live process and each one the model did not restart keeps its
address; every address a child had before is dead. Once the supervisor gave up, it and every
child are gone (the machine then starts a new one).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import reign

from otp_util import GUARD, Worker

STRATEGIES = ["one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one"]
RESTARTS = ["permanent", "transient", "temporary"]
#: How a child is made to exit, and the exit reason the supervisor then sees.
EXITS: dict[str, Any] = {
    "normal": "normal",
    "shutdown": "shutdown",
    "shutdown_tuple": ("shutdown", "tuple"),
    "custom": ("custom", 7),
    "crash": "crash",  # a Crash reason
    "kill": "killed",
}


STRATEGY = st.sampled_from(STRATEGIES)
INTENSITY = st.integers(0, 6)
RESTART_LISTS = st.lists(st.sampled_from(RESTARTS), min_size=1, max_size=4)


def abnormal(how: str) -> bool:
    return how not in ("normal", "shutdown", "shutdown_tuple")


@dataclass
class Entry:
    id: Any
    restart: str
    address: reign.Address | None = None
    history: list[reign.Address] = field(default_factory=list)


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = uvloop.new_event_loop()
        self.node = reign.no_clustering()
        self.run(self.node.start())
        self.events: list[Any] = []
        self.ids = itertools.count()
        self.model: list[Entry] = []
        self.dead: list[reign.Address] = []
        self.sup: reign.Address | None = None
        self.sup_watcher: reign.Mailbox | None = None
        self.strategy = "one_for_one"
        self.template_restart = "permanent"
        self.intensity = 0
        self.restarts = 0

    def teardown(self) -> None:
        self.run(self.node.stop())
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, GUARD))

    # ------------------------------------------------------------ the supervisor

    @property
    def simple(self) -> bool:
        return self.strategy == "simple_one_for_one"

    def spec(self, child_id: Any, restart: str) -> reign.ChildSpec:
        return reign.ChildSpec(child_id, Worker, (self.events, child_id), restart=restart)  # type: ignore[arg-type]

    def new_supervisor(self, strategy: str, intensity: int, restarts: list[str]) -> None:
        self.strategy = strategy
        self.intensity = intensity
        self.restarts = 0
        if self.simple:
            self.template_restart = restarts[0]
            specs = [self.spec("template", restarts[0])]
        else:
            specs = [self.spec(next(self.ids), r) for r in restarts]
        self.sup = self.run(reign.Supervisor.start(self.node, specs, strategy=strategy,  # type: ignore[arg-type]
                                                   intensity=intensity, period=3600))
        watcher, self.sup_watcher = self.node.new_mailbox()
        self.sup.on_close_notify(watcher)
        self.model = [] if self.simple else [Entry(s.id, s.restart) for s in specs]
        self.learn_addresses(restarted=[e.id for e in self.model])

    @initialize(strategy=STRATEGY, intensity=INTENSITY, restarts=RESTART_LISTS)
    def start(self, strategy: str, intensity: int, restarts: list[str]) -> None:
        self.new_supervisor(strategy, intensity, restarts)

    def which(self) -> list[tuple[Any, reign.Address | None]]:
        assert self.sup is not None
        return self.run(reign.Supervisor.which_children(self.sup))  # type: ignore[no-any-return]

    def learn_addresses(self, restarted: list[Any]) -> None:
        """Take the new addresses of the children the model says were (re)started; check the
        others kept theirs. ``which_children`` lists simple_one_for_one children in the model's
        order, so entries are matched by position."""
        actual = self.which()
        assert len(actual) == len(self.model), (actual, self.model)
        for entry, (child_id, address) in zip(self.model, actual):
            assert child_id == (None if self.simple else entry.id)
            if entry.id in restarted:
                assert address is not None and address not in entry.history, (entry, address)
                if entry.address is not None:
                    self.dead.append(entry.address)
                entry.address = address
                entry.history.append(address)
            else:
                assert address == entry.address, (entry, address)

    def gave_up(self, data: Any) -> None:
        """The supervisor is over its intensity: it must be gone, and every child with it.
        Then a new one starts (so every rule stays enabled)."""
        assert self.sup_watcher is not None
        notice = self.run(self.sup_watcher.receive())
        assert notice == reign.MailboxClosed(self.sup.id, "shutdown")
        self.dead.extend(e.address for e in self.model if e.address is not None)
        self.dead.append(self.sup)
        self.model = []
        self.sup = None
        self.invariant_checks()
        self.new_supervisor(data.draw(STRATEGY, label="strategy"), data.draw(INTENSITY, label="intensity"),
                            data.draw(RESTART_LISTS, label="restarts"))

    # ------------------------------------------------------------ rules

    def running(self) -> list[int]:
        return [i for i, e in enumerate(self.model) if e.address is not None]

    @rule(data=st.data(), how=st.sampled_from(list(EXITS)))
    def child_exits(self, data: Any, how: str) -> None:
        if not self.running():
            return  # (a precondition instead makes Hypothesis discard many runs)
        i = data.draw(st.sampled_from(self.running()), label="child")
        entry = self.model[i]
        address = entry.address
        assert address is not None
        watcher, box = self.node.new_mailbox()
        address.on_close_notify(watcher)
        if how == "kill":
            reign.exit(address, "kill")
        elif how == "crash":
            reign.cast(address, "crash")
        else:
            reign.cast(address, ("exit", EXITS[how]))
        notice = self.run(box.receive())
        if how == "crash":
            assert isinstance(notice.reason, reign.Crash)
        else:
            assert notice.reason == EXITS[how]
        # The supervisor got the Exit before the watcher got the notice: a call now is handled
        # after the restart (or the shutdown).
        self.dead.append(address)
        entry.address = None
        restart = entry.restart
        if not (restart == "permanent" or (restart == "transient" and abnormal(how))):
            if restart == "temporary" or self.simple:
                self.model.remove(entry)
            self.learn_addresses(restarted=[])
            return
        self.restarts += 1
        if self.restarts > self.intensity:
            self.gave_up(data)
            return
        if self.strategy in ("one_for_one", "simple_one_for_one"):
            group = [entry]
        else:
            group = self.model if self.strategy == "one_for_all" else self.model[i:]
            for other in group:
                if other is not entry and other.address is not None:
                    self.dead.append(other.address)
                    other.address = None
            keep = [e for e in group if e is entry or e.restart != "temporary"]
            self.model = [e for e in self.model if e not in group or e in keep]
            group = keep
        self.learn_addresses(restarted=[e.id for e in group])

    @rule(op=st.sampled_from(["terminate_child", "restart_child", "delete_child"]), missing=st.booleans(),
          data=st.data())
    def manage(self, op: str, missing: bool, data: Any) -> None:
        """A management call on a child of the model, or on one the supervisor does not have."""
        assert self.sup is not None
        if missing or not self.model:
            key = self.dead[-1] if self.simple and self.dead else ("nobody", next(self.ids))
            try:
                self.run(getattr(reign.Supervisor, op)(self.sup, key))
            except reign.Failure as failure:
                assert failure.type == "not_found"
            else:
                raise AssertionError(f"{op} of a child the supervisor does not have succeeded")
            return
        entry = data.draw(st.sampled_from(self.model), label="child")
        if self.simple:  # restart_child and delete_child do not apply (supervisor.erl refuses them)
            op = "terminate_child"
        getattr(self, op)(entry)

    def terminate_child(self, entry: Entry) -> None:
        assert self.sup is not None
        if self.simple and entry.address is None:
            return
        key = entry.address if self.simple else entry.id
        assert self.run(reign.Supervisor.terminate_child(self.sup, key)) is None
        if entry.address is not None:
            self.dead.append(entry.address)
            entry.address = None
        if self.simple or entry.restart == "temporary":
            self.model.remove(entry)
        self.learn_addresses(restarted=[])

    def restart_child(self, entry: Entry) -> None:
        assert self.sup is not None
        try:
            address = self.run(reign.Supervisor.restart_child(self.sup, entry.id))
        except reign.Failure as failure:
            assert failure.type == "running" and entry.address is not None
            return
        assert entry.address is None
        self.learn_addresses(restarted=[entry.id])
        assert entry.address == address

    def delete_child(self, entry: Entry) -> None:
        assert self.sup is not None
        try:
            self.run(reign.Supervisor.delete_child(self.sup, entry.id))
        except reign.Failure as failure:
            assert failure.type == "running" and entry.address is not None
            return
        assert entry.address is None
        self.model.remove(entry)
        self.learn_addresses(restarted=[])

    @rule(restart=st.sampled_from(RESTARTS), reuse=st.booleans(), data=st.data())
    def start_child(self, restart: str, reuse: bool, data: Any) -> None:
        assert self.sup is not None
        if self.simple:
            entry = Entry(next(self.ids), self.template_restart)
            address = self.run(reign.Supervisor.start_child(self.sup, [entry.id]))
            self.model.append(entry)
            self.learn_addresses(restarted=[entry.id])
            assert entry.address == address
            return
        if reuse and self.model:
            existing = data.draw(st.sampled_from(self.model), label="existing id")
            try:
                self.run(reign.Supervisor.start_child(self.sup, self.spec(existing.id, restart)))
            except reign.Failure as failure:
                expected = "already_started" if existing.address is not None else "already_present"
                assert failure.type == expected
                return
            raise AssertionError(f"start_child with the taken id {existing.id!r} succeeded")
        entry = Entry(next(self.ids), restart)
        address = self.run(reign.Supervisor.start_child(self.sup, self.spec(entry.id, restart)))
        self.model.append(entry)
        self.learn_addresses(restarted=[entry.id])
        assert entry.address == address

    # ------------------------------------------------------------ invariants

    @invariant()
    def addresses_live_exactly_when_the_model_says(self) -> None:
        self.invariant_checks()

    def invariant_checks(self) -> None:
        for entry in self.model:
            if entry.address is not None:
                assert self.node.local_mailbox(entry.address.id) is not None, entry
        for address in self.dead:
            assert self.node.local_mailbox(address.id) is None, address
        if self.sup is not None:
            assert self.node.local_mailbox(self.sup.id) is not None
            assert [(None if self.simple else e.id, e.address) for e in self.model] == self.which()


SupervisorMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_supervisor_against_model = SupervisorMachine.TestCase
