"""Named fault-injection points, so the fault suite (``tests/faults/``) can kill or fail a run at
an exact step instead of racing a timer (the approach of Postgres' injection points and etcd's
gofail).

A point is one call, ``inject("dataset.renamed")``, placed where a crash or an I/O error
matters. It does nothing unless ``PACKFT_FAULT`` names it::

    PACKFT_FAULT="dataset.renamed=kill"               SIGKILL this process at the first hit
    PACKFT_FAULT="dataset.write@3=enospc"             raise ENOSPC at the third hit
    PACKFT_FAULT="a=kill,b=eio"                       several points

Points placed so far: every :class:`packft.core.atomic.Stage` has ``<label>.write`` (each write),
``.staged``, ``.journal``, ``.unmarked``, ``.renamed`` (after each rename), ``.marker`` and
``.committed``, with the labels ``dataset``, ``atomic`` (single-file writes), ``rejects``,
``rollforward`` (a commit finished by a later process) and ``lora.adapter`` (a LoRA run's
``{save}/adapter``); ``probe.create`` (the output directory check) and ``download.write`` (each
chunk of a download).

Actions: ``kill`` (SIGKILL, no cleanup runs: a power cut as far as the process is concerned),
``enospc``, ``erofs``, ``eio`` (raise that ``OSError``, as the kernel would), ``exit`` (``os._exit(3)``).
The cost when unset is one environment lookup per call; points sit on per-file, not per-token, paths.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "PACKFT_FAULT"
_ERRNOS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eio": errno.EIO}
_hits: Counter[str] = Counter()


def _actions(spec: str) -> dict[str, tuple[int, str]]:
    """``"a@2=kill,b=eio"`` -> ``{"a": (2, "kill"), "b": (1, "eio")}``."""
    out = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        target, _, action = item.partition("=")
        name, _, nth = target.partition("@")
        out[name] = (int(nth or 1), action or "kill")
    return out


def inject(point: str, path: str | os.PathLike | None = None) -> None:
    """Fail here if ``PACKFT_FAULT`` names ``point`` (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted = _actions(spec).get(point)
    if wanted is None:
        return
    _hits[point] += 1
    nth, action = wanted
    if _hits[point] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "exit":
        os._exit(3)
    if action in _ERRNOS:
        code = _ERRNOS[action]
        raise OSError(code, os.strerror(code), None if path is None else os.fspath(path))
    raise ValueError(f"{ENV}: unknown action {action!r} for {point!r} (kill|exit|enospc|erofs|eio)")
