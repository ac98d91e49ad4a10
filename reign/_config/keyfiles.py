"""Reading credential files, and refusing private keys that others can read.

The one place that decides whether a private key file is protected well enough; used by
:meth:`reign.ClusterSpec.load_credentials` (node keys, at start-up) and by ``reign_init`` (an
existing CA key or node key it would reuse). Invariants:

* A private key file is refused when its mode has any group or other bit set
  (``mode & 0o077``), as OpenSSH does for its private keys (``UNPROTECTED PRIVATE KEY FILE``).
  Only the mode bits count, not whether the process could read the file (root reads
  everything), and not who owns it: a key shared through a group (PostgreSQL allows 0640 for a
  root-owned key) is refused too; give the node its own copy, mode 0600 or 0400.
* Nothing here changes a file: no chmod, no rewrite. The error says what to run.
* A credential file is opened without blocking and must be a regular file of at most
  :data:`MAX_CREDENTIAL_BYTES`: a FIFO, a device or a folder named by mistake fails at once
  instead of hanging start-up or filling memory. Mode and contents come from the same open
  file (``fstat`` on the descriptor), so the file checked is the file read.
* On systems without POSIX permissions (Windows) the mode check is skipped: the bits there do
  not say who can read the file.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from pathlib import Path

__all__ = [
    "LOOSE_KEY_BITS",
    "MAX_CREDENTIAL_BYTES",
    "LooseKeyError",
    "check_key_mode",
    "read_credential_file",
]

#: Mode bits that make a private key file unprotected: any access for group or others. The
#: same test as OpenSSH's ``sshkey_perm_ok`` (``st_mode & 077``).
LOOSE_KEY_BITS = 0o077
#: Largest credential file read: 1 MiB. A PEM certificate or key is a few KiB, so this is far
#: above any real file (a chain of hundreds of certificates) and bounds what a wrong path costs.
MAX_CREDENTIAL_BYTES = 1024 * 1024

# Whether mode bits mean anything here (not on Windows).
_POSIX_MODES = os.name == "posix"


class LooseKeyError(ValueError):
    """A private key file that group or others may access. ``mode`` is its permission bits."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        if mode & 0o044:
            access = "readable"
        elif mode & 0o022:
            access = "writable"
        else:
            access = "accessible"
        super().__init__(
            f"private key is {access} by group/others (mode {mode:04o}); "
            f"chmod 600 {shlex.quote(str(path))}"
        )


def read_credential_file(path: Path) -> tuple[bytes, int]:
    """Read a certificate or key file; return ``(contents, permission bits)``.

    The permission bits are ``stat.S_IMODE`` of the opened file (a symlink's target).

    Raises :class:`OSError` when the file cannot be opened or read, is not a regular file
    (``strerror`` "not a regular file") or is larger than :data:`MAX_CREDENTIAL_BYTES`
    (``strerror`` says so).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > MAX_CREDENTIAL_BYTES:
            raise OSError(
                errno.EFBIG,
                f"{info.st_size} bytes, more than the {MAX_CREDENTIAL_BYTES} a credential "
                "file may have",
                str(path),
            )
        chunks = []
        remaining = MAX_CREDENTIAL_BYTES + 1  # the file may grow between fstat and read
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_CREDENTIAL_BYTES:
            raise OSError(
                errno.EFBIG,
                f"more than the {MAX_CREDENTIAL_BYTES} bytes a credential file may have",
                str(path),
            )
        return data, stat.S_IMODE(info.st_mode)
    finally:
        os.close(fd)


def check_key_mode(path: Path, mode: int) -> None:
    """Refuse a private key file whose permission bits ``mode`` let group or others in.

    ``path`` only names the file in the message. Raises :class:`LooseKeyError` (a
    :class:`ValueError`) saying the mode and the ``chmod`` that fixes it when
    ``mode & LOOSE_KEY_BITS`` is not 0; does nothing on systems without POSIX modes.
    """
    if _POSIX_MODES and mode & LOOSE_KEY_BITS:
        raise LooseKeyError(path, mode)
