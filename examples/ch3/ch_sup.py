"""ch_sup: the supervisor of ch3 from the OTP Design Principles, ported to reign.

Read it beside ``ch_sup.erl``. In Erlang, ``supervisor:start_link(ch_sup, [])`` starts a
supervisor process that calls ``ch_sup:init/1`` for its flags and child specs. reign's
``Supervisor.start`` takes the flags and the specs as arguments, so ``init/1`` becomes
:func:`child_specs` and the keyword arguments in :func:`start_link`.

``python ch_sup.py`` (in this folder) runs a short demo on one node.
"""

from __future__ import annotations

import ch3

import reign


async def start_link(
    node: reign.Node, *, link: reign.Address | None = None, global_name: str | None = None
) -> reign.Address:
    """``ch_sup:start_link/0``: start the supervisor and ch3 under it; returns the supervisor's
    address once ch3 has started.

    ``link`` is the process to link to (Erlang links to the caller). ``global_name`` is passed
    on to ch3, which then also claims that global name (an addition for clients on other
    nodes; the original has none).
    """
    return await reign.Supervisor.start(
        node,
        child_specs(global_name),
        # SupFlags = #{strategy => one_for_one, intensity => 1, period => 5}. Give intensity and
        # period explicitly: reign's defaults are Elixir's (3 in 5 s), Erlang's are 1 in 5 s.
        strategy="one_for_one",
        intensity=1,
        period=5,
        link=link,
    )


def child_specs(global_name: str | None = None) -> list[reign.ChildSpec]:
    """The ``ChildSpecs`` of ``init/1``."""
    kwargs: dict[str, str] = {"name": ch3.NAME}
    if global_name is not None:
        kwargs["global_name"] = global_name
    return [
        reign.ChildSpec(
            id="ch3",  # id => ch3
            # start => {ch3, start_link, []}. A reign child spec names the class, not a start
            # function: the supervisor calls Ch3.start(node, *args, **kwargs, link=itself),
            # which is what ch3.start_link does, so the name goes in kwargs.
            start=ch3.Ch3,
            kwargs=kwargs,
            restart="permanent",  # restart => permanent
            shutdown="brutal_kill",  # shutdown => brutal_kill
            # type => worker, modules => [ch3]: not needed. A child whose start is a Supervisor
            # class is a supervisor; modules serve release upgrades, which reign does not have.
        )
    ]


async def main() -> None:
    """A demo on one node: allocate, free, crash ch3 and watch the supervisor restart it."""
    async with reign.no_clustering() as node:
        sup = await start_link(node)
        first = await ch3.alloc(node)
        second = await ch3.alloc(node)
        print(f"allocated channels {first} and {second}")
        ch3.free(node, first)
        print(f"freed {first}; allocating again gives {await ch3.alloc(node)}")

        old = node.whereis(ch3.NAME)
        assert old is not None
        me, mbox = node.new_mailbox()
        old.on_close_notify(me)
        reign.exit(old, "kill")  # exit(whereis(ch3), kill)
        down = await mbox.receive(timeout=5)
        print(f"ch3 {old} exited: {down.reason}")
        # Ask the supervisor: it answers once it has restarted ch3, which registered its name again.
        [(_, new)] = await reign.Supervisor.which_children(sup)
        assert new is not None and new == node.whereis(ch3.NAME)
        print(f"ch3 is now {new}; it allocates {await ch3.alloc(node)} (all channels free again)")


if __name__ == "__main__":
    reign.run(main())
