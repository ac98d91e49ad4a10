"""What reign's command-line tools share: one-line errors, never a traceback.

``reign_init`` and ``reign_sample`` report every user error as one line on stderr,
``PROG: error: ...``, with exit status 2 for a bad command line.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["one_line", "os_reason", "OneLineParser"]


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(text).split())


def os_reason(exc: BaseException) -> str:
    """The short human reason of ``exc``: ``strerror`` for OS errors, else its message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``PROG: error: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")
