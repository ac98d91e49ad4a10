"""reign_init: create the certificates and cluster spec a reign cluster needs.

Run it as ``reign_init`` (console script) or ``python -m reign_init``; ``reign_init --help``
lists the options. The implementation is in :mod:`reign_init.__main__` (its ``main``); this
package deliberately imports nothing, so ``python -m reign_init`` does not load it twice.
"""
