"""reign's OTP layer: the behaviours Erlang code is made of, on the runtime's processes.

:mod:`.gen_server` (``GenServer``, ``call``, ``cast``, ``stop``, deferred replies, failures),
:mod:`.supervisor` (``Supervisor``, ``ChildSpec``: strategies, restart types, intensity,
shutdown), :mod:`.timers` (``send_after``). Everything here uses only the runtime's package
interfaces: ``Node.spawn_process``, ``Mailbox`` (links, ``trap_exits``, exit signals), monitors
(``Node.monitor_from``/``demonitor_from``) and ``reign.exit``.
"""
