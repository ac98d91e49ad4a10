%% ch3: the channel allocator gen_server of the Erlang/OTP Design Principles User's Guide
%% ("gen_server Behaviour", Example). channels/0, alloc/1 and free/2 are the ones the guide's
%% "Overview" gives for ch1/ch2 ("for completeness, one way to write these functions").
%%
%% From the Erlang/OTP documentation, Copyright Ericsson AB, licensed under the Apache License,
%% Version 2.0. Kept here unchanged, for reading side by side with ch3.py (the reign port).

-module(ch3).
-behaviour(gen_server).

-export([start_link/0]).
-export([alloc/0, free/1]).
-export([init/1, handle_call/3, handle_cast/2]).

start_link() ->
    gen_server:start_link({local, ch3}, ch3, [], []).

alloc() ->
    gen_server:call(ch3, alloc).

free(Ch) ->
    gen_server:cast(ch3, {free, Ch}).

init(_Args) ->
    {ok, channels()}.

handle_call(alloc, _From, Chs) ->
    {Ch, Chs2} = alloc(Chs),
    {reply, Ch, Chs2}.

handle_cast({free, Ch}, Chs) ->
    Chs2 = free(Ch, Chs),
    {noreply, Chs2}.

%% From the guide's Overview:

channels() ->
   {_Allocated = [], _Free = lists:seq(1,100)}.

alloc({Allocated, [H|T] = _Free}) ->
   {H, {[H|Allocated], T}}.

free(Ch, {Alloc, Free} = Channels) ->
   case lists:member(Ch, Alloc) of
      true ->
         {lists:delete(Ch, Alloc), [Ch|Free]};
      false ->
         Channels
   end.
