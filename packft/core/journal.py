"""The commit journal: a multi-step commit of fixed names, decided once its journal exists.

When the final names are fixed by others (MindSpeed's six dataset files must be plain files in
the user's directory, so no directory swap), a staged commit is several renames. The stage
(:class:`packft.core.atomic.Stage`) then first writes a journal ``.<name>.packft-journal``
(atomically, after every temporary is fsynced) listing the renames
``(temporary, final, fingerprint)``. Once it exists the commit is decided: any later packft
process (writer or reader) that finds it takes the target's commit lock and rolls the commit
forward (:func:`roll_forward`), before reading or writing. Without a journal, staged temporaries
are garbage (:func:`packft.core.writers.sweep` removes them).

The renames (:func:`apply_commit`) are idempotent: an entry whose temporary is gone must already
be at its final name with the recorded fingerprint, else the commit cannot be finished and that
is an :class:`~packft.core.errors.IntegrityError`. With a *marker* (a dataset's sidecar, a cache
entry's seal), its old version is removed before any other rename and the new one renamed last,
so "marker present" means "every file it names is in place".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from packft.core.digest import fingerprint
from packft.core.durable import fsync_dir, install
from packft.core.errors import IntegrityError
from packft.core.faults import inject

JOURNAL_SUFFIX = ".packft-journal"


def apply_commit(
    directory: Path,
    entries: list[tuple[str, str, str]],
    has_marker: bool,
    label: str,
    journal: Path | None = None,
) -> None:
    """Do (or finish) the renames of ``entries`` ``(temporary, final, fingerprint)``; idempotent:
    an entry whose temporary is gone must already be at its final name (same fingerprint)."""
    if has_marker and len(entries) > 1:
        marker_tmp, marker_final, _ = entries[-1]
        if not (directory / marker_tmp).exists() and not (directory / marker_final).exists():
            raise IntegrityError(
                f"cannot finish the commit in {directory}: its marker {marker_tmp} is gone and "
                f"no {marker_final} was committed; write the dataset again"
            )
        if (directory / marker_tmp).exists():  # else the marker (last) was already renamed
            (directory / marker_final).unlink(missing_ok=True)
            inject(f"{label}.unmarked", directory / marker_final)
            _rename_all(directory, entries[:-1], label)
            fsync_dir(directory)
            inject(f"{label}.marker", directory / marker_final)
            os.replace(directory / marker_tmp, directory / marker_final)
    else:
        _rename_all(directory, entries, label)
    fsync_dir(directory)
    inject(f"{label}.committed", directory)
    if journal is not None:
        journal.unlink(missing_ok=True)
        fsync_dir(directory)


def _rename_all(directory: Path, entries: list[tuple[str, str, str]], label: str) -> None:
    for tmp_name, final_name, expected in entries:
        tmp, final = directory / tmp_name, directory / final_name
        if tmp.is_symlink() or tmp.exists():
            install(tmp, final)
        elif expected is None or not final.exists() or fingerprint(final) != expected:
            raise IntegrityError(
                f"cannot finish the commit in {directory}: {tmp_name} is gone and {final_name} "
                "is not the file it recorded; write the dataset again"
            )
        inject(f"{label}.renamed", final)


def roll_forward(journal: Path) -> bool:
    """Finish the commit ``journal`` records (caller holds its commit lock); False if none."""
    try:
        record = json.loads(journal.read_text())
    except FileNotFoundError:
        return False
    entries = [tuple(e) for e in record["files"]]
    apply_commit(journal.parent, entries, bool(record.get("marker")), "rollforward", journal)
    return True


def journaled_writers(directory: Path, names: list[str]) -> set[str]:
    writers = set()
    for name in names:
        if name.endswith(JOURNAL_SUFFIX):
            try:
                writers.add(json.loads((directory / name).read_text())["writer"])
            except (OSError, ValueError, KeyError):
                continue
    return writers
