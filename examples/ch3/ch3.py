"""ch3: the channel allocator gen_server of the OTP Design Principles, ported to reign.

Read it beside ``ch3.erl``: the same functions in the same order, with a comment wherever the
translation is not one-to-one. The server hands out channels 1..100: ``alloc`` is a call,
``free`` a cast, and the server is registered locally as ``"ch3"``.

Run ``python ch_sup.py`` in this folder for a demo; ``tests/test_examples.py`` runs it on one
node and across two.
"""

from __future__ import annotations

from typing import Any

import reign

#: The local name: ``{local, ch3}``.
NAME = "ch3"

#: The server's state, as in the guide: ``{Allocated, Free}``.
Channels = tuple[list[int], list[int]]


# ----------------------------------------------------------------------------- the client API
# Erlang's interface functions find ch3 by its name on the caller's node, which is implicit.
# A reign program may run several nodes, so the node is an argument; or, for a ch3 on another
# node, its address (see README.md).


async def start_link(
    node: reign.Node, *, link: reign.Address | None = None, global_name: str | None = None
) -> reign.Address:
    """``ch3:start_link/0``: start ch3 on ``node``, registered as ``"ch3"``; returns once ``init``
    has run.

    ``gen_server:start_link`` links the server to its caller. Code calling this need not be a
    process, so the address to link to is given (a supervisor gives its own). ``global_name``
    also claims a global name, which the Erlang original does not do: clients on other nodes
    find ch3 by it.
    """
    return await Ch3.start(node, name=NAME, global_name=global_name, link=link)


async def alloc(server: reign.Node | reign.Address) -> int:
    """``ch3:alloc/0``: allocate a channel (``gen_server:call(ch3, alloc)``).

    ``server`` is the node whose ``"ch3"`` to call, or ch3's address. Raises
    :class:`reign.ServerExited` with ``"noproc"`` when there is no ch3 (Erlang's call exits with
    ``noproc``), or with ch3's exit reason if it crashes meanwhile.
    """
    address = _whereis(server)
    if address is None:
        raise reign.ServerExited("noproc")
    return await reign.call(address, "alloc")  # type: ignore[no-any-return]


def free(server: reign.Node | reign.Address, ch: int) -> None:
    """``ch3:free/1``: give channel ``ch`` back (``gen_server:cast(ch3, {free, Ch})``).

    A cast: it returns at once and never fails; without a ch3 the message goes nowhere, as an
    Erlang cast to an unregistered name does.
    """
    address = _whereis(server)
    if address is not None:
        reign.cast(address, ("free", ch))


def _whereis(server: reign.Node | reign.Address) -> reign.Address | None:
    return server if isinstance(server, reign.Address) else server.whereis(NAME)


# ----------------------------------------------------------------------------- the callbacks


class Ch3(reign.GenServer):
    """The callback module. The state is an attribute (``self.chs``) instead of a value that
    every callback takes and returns; each callback sets it where Erlang returns ``Chs2``."""

    chs: Channels

    async def init(self) -> None:
        # init(_Args) -> {ok, channels()}.
        self.chs = channels()

    async def handle_call(self, request: Any, caller: reign.Caller) -> Any:
        match request:
            case "alloc":
                # handle_call(alloc, _From, Chs) -> {Ch, Chs2} = alloc(Chs), {reply, Ch, Chs2}.
                ch, self.chs = _alloc(self.chs)
                return ch
        # An Erlang function with no matching clause crashes (function_clause); Python's match
        # would fall through and reply None, so the crash is written out.
        raise ValueError(f"function_clause: handle_call({request!r:.80})")

    async def handle_cast(self, msg: Any) -> None:
        match msg:
            # handle_cast({free, Ch}, Chs) -> Chs2 = free(Ch, Chs), {noreply, Chs2}.
            # (This sequence pattern would match a list ["free", ch] too; free/2 above always
            # sends a tuple. `case tuple(("free", ch)):` is the exact form.)
            case ("free", ch):
                self.chs = _free(ch, self.chs)
                return
        raise ValueError(f"function_clause: handle_cast({msg!r:.80})")


# ----------------------------------------------------------------------------- internal functions
# From the guide's Overview. Erlang tells alloc/0 from alloc/1 by arity; Python needs two names,
# so the internal ones start with an underscore.


def channels() -> Channels:
    # channels() -> {_Allocated = [], _Free = lists:seq(1,100)}.
    return [], list(range(1, 101))


def _alloc(chs: Channels) -> tuple[int, Channels]:
    match chs:
        case (allocated, [h, *t]):
            # alloc({Allocated, [H|T] = _Free}) -> {H, {[H|Allocated], T}}.
            return h, ([h, *allocated], t)
    # No clause matches an empty free list: the call crashes ch3 (function_clause), its caller
    # gets ServerExited, and its supervisor restarts it with every channel free. The guide calls
    # these functions "an example only" for that reason.
    raise ValueError("function_clause: no free channel")


def _free(ch: int, chs: Channels) -> Channels:
    allocated, free_chs = chs
    if ch in allocated:  # case lists:member(Ch, Alloc) of true ->
        rest = list(allocated)
        rest.remove(ch)  # lists:delete(Ch, Alloc): the first occurrence only
        return rest, [ch, *free_chs]  # {lists:delete(Ch, Alloc), [Ch|Free]};
    return chs  # false -> Channels
