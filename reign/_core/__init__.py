"""reign's sans-IO core: everything about the protocol that needs no event loop.

Identities (:mod:`.ids`), the Address value (:mod:`.address`), system messages
(:mod:`.messages`), the strict codec (:mod:`.codec`), framing (:mod:`.frames`), the per-connection
protocol state (:mod:`.protocol`), per-peer monitor and link tables (:mod:`.monitors`) and the
name registry's state and frames (:mod:`.registry`, :mod:`.registry_wire`).

The rule of this package: nothing in it imports asyncio, ssl, socket, selectors or structlog,
nor anything of ``reign._runtime``, ``reign._config`` or ``reign._otp``. Every function here is
driven with values and returns values (events, frames, effects); the asyncio runtime performs
the I/O. ``tests/test_layers.py`` imports each module in a fresh interpreter and checks it.
"""
