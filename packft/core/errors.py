"""User-facing errors: one line on stderr, never a traceback (``PACKFT_DEBUG=1`` shows it).

Exit codes follow the shell convention: ``2`` for a usage problem (a flag or config value), ``1``
for everything else that stops a run (bad data, a corrupt file, a full disk), ``130`` for Ctrl-C.
Library code raises the most specific built-in or packft error; :func:`one_line` turns any of them
into the line the CLI prints, naming the path and errno for OS errors (``ENOSPC``, ``EROFS`` ...).
"""

from __future__ import annotations

import errno
import os


class PackftError(Exception):
    """A failure the user can act on; the message says what is wrong and what to do."""

    exit_code = 1


class UsageError(PackftError):
    """A flag or config value is wrong (exit 2, like argparse)."""

    exit_code = 2


class IntegrityError(PackftError):
    """A file on disk is not what its record says (partial, mixed, corrupt or foreign)."""


class ConfigError(ValueError):
    """A config with one or more problems; the message lists all of them (exit 2, like a usage
    error). Raised by :mod:`packft.core.config` for flags, YAML files and flow parameters."""


def describe_os_error(error: OSError) -> str:
    """``ENOSPC (No space left on device): /data/out.bin`` style text for an OS error."""
    name = errno.errorcode.get(error.errno or 0, "")
    reason = error.strerror or str(error)
    text = f"{name} ({reason})" if name else reason
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    if paths:
        text += ": " + " -> ".join(os.fsdecode(p) for p in paths)
    return text


def one_line(error: BaseException) -> str:
    """The error as a single line (multi-line messages are joined with ``; ``)."""
    if isinstance(error, OSError) and error.errno is not None:
        text = describe_os_error(error)
    else:
        text = str(error) or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = lines[0] if lines else ""
    for line in lines[1:]:  # "2 problems:\n- a\n- b" -> "2 problems: - a; - b"
        joined += (" " if joined.endswith(":") else "; ") + line
    return joined


def exit_code(error: BaseException) -> int:
    """2 for usage problems, 1 for everything else."""
    if isinstance(error, UsageError | ConfigError):
        return 2
    return getattr(error, "exit_code", 1)
