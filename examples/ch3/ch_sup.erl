%% ch_sup: the supervisor of ch3 in the Erlang/OTP Design Principles User's Guide
%% ("Supervisor Behaviour", Example).
%%
%% From the Erlang/OTP documentation, Copyright Ericsson AB, licensed under the Apache License,
%% Version 2.0. Kept here unchanged, for reading side by side with ch_sup.py (the reign port).

-module(ch_sup).
-behaviour(supervisor).

-export([start_link/0]).
-export([init/1]).

start_link() ->
    supervisor:start_link(ch_sup, []).

init(_Args) ->
    SupFlags = #{strategy => one_for_one, intensity => 1, period => 5},
    ChildSpecs = [#{id => ch3,
                    start => {ch3, start_link, []},
                    restart => permanent,
                    shutdown => brutal_kill,
                    type => worker,
                    modules => [ch3]}],
    {ok, {SupFlags, ChildSpecs}}.
