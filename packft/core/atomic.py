"""Crash-safe file output: one staged-commit helper for every writer, single-file or multi-file.

A :class:`Stage` writes files under temporary names beside their targets, fsyncs them, then
commits them so that readers never see a mix of old and new files. Three rules make that hold:

1. **Temporaries belong to a writer.** A stage takes a writer id ``<pid>-<8 hex>`` and holds an
   ``flock`` on ``.packft-<id>.lock`` (in the target directory) for its whole life; its files are
   ``.<target name>.packft-<id>.tmp``. :func:`~packft.core.writers.sweep` removes temporaries
   whose writer's lock is free (the writer is dead: the kernel drops a dead process's locks),
   never those of a live writer, and never those a pending journal still needs.
2. **The marker goes last.** With several files, one is the set's *marker* (a dataset's sidecar, a
   cache entry's seal). Its old version is removed before any other rename and the new one
   renamed last, so "marker present" means "every file it names is in place".
3. **The journal decides.** When the final names are fixed by others (MindSpeed's six dataset
   files must be plain files in the user's directory, so no directory swap), the renames are
   several steps. The stage then first writes a journal (atomically, after every temporary is
   fsynced) listing the renames. Once it exists the commit is decided: any later packft process
   (writer or reader) that finds it takes the target's commit lock and rolls the commit forward
   (:func:`~packft.core.journal.roll_forward`; renames are idempotent), before reading or
   writing. Without a journal, staged temporaries are garbage.

Worked example, dataset ``out/ds`` (data files ``B``, marker ``ds.packft.json``; ``*`` = new)::

    step                          on disk                                     a reader sees
    staging (writer 7-ab12cd34)   B  ds.packft.json  .B.packft-7-ab12cd34.tmp*  old set
    journal written               + .ds.packft-journal                        rolls forward
    old marker removed            B  (no sidecar)  temporaries  journal       rolls forward
    renames, one by one           B* / B mixed     journal                    rolls forward
    marker renamed                B* ds.packft.json*  journal                 rolls forward (no-op)
    journal removed               B* ds.packft.json*                          new set

    killed while staging -> next process: no journal, writer lock free -> temporaries swept
    killed after journal -> next process: journal + free commit lock -> renames finished

Readers take the commit lock shared while they open and check a set, writers exclusive for the
commit only (milliseconds), so a commit never changes files under a reader that is opening them.

The pieces live in their own modules: :mod:`~packft.core.durable` (fsync, rename or swap into
place), :mod:`~packft.core.writers` (writer ids and locks, the commit lock, the sweep of dead
writers' temporaries), :mod:`~packft.core.journal` (the journal's renames and their
roll-forward). This module composes them into :class:`Stage` and its one-file and
one-directory forms.

Besides files, a stage holds **directories** (:meth:`Stage.make_dir`: a checkpoint, a converted
model, a dataset version; sealed = every file in the tree fsynced), **symlinks**
(:meth:`Stage.symlink`: a generation switch such as a store's ``latest``) and **adopted** files
written elsewhere by their own protocol (:meth:`Stage.adopt`: a resumable download's ``.part``).
A directory committed over an existing one is swapped in with one ``renameat2(RENAME_EXCHANGE)``
(readers see the old tree or the new one, never neither) and the old tree, now at the temporary
name, is removed; where the file system cannot swap, the old tree is first renamed to a hidden
``.<name>.packft-old-<hex>`` that a crash leaves complete. :func:`atomic_dir` is a stage of one
directory, :func:`atomic_writer` a stage of one file.

This module, :mod:`~packft.core.durable` and :mod:`~packft.core.journal` are the only places
in packft that rename into place or fsync (tests/core/test_atomic.py checks it on the source).

Cost: an fsync per file and per directory; the lock files are empty.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from packft.core.digest import HashingWriter, file_record, named_os_error
from packft.core.durable import fsync_file, fsync_tree, remove_tree
from packft.core.faults import inject
from packft.core.journal import apply_commit, roll_forward
from packft.core.writers import commit_lock, sweep, take_writer_lock, temp_path, writer_lock_path


class Stage:
    """One writer's temporary files in one directory, committed together (see module doc).

    Args:
        directory: where the targets (and so the temporaries) live.
        label: prefix of the fault-injection points (``<label>.write``, ``<label>.staged``,
            ``<label>.journal``, ``<label>.unmarked``, ``<label>.renamed``, ``<label>.marker``,
            ``<label>.committed``).
        journal: the commit record's path (multi-step commits of fixed names), or None.
        lock: the targets' commit lock (required with ``journal``).

    Use as a context manager: leaving it by an exception removes every temporary (and re-raises
    OS errors naming the file), leaving it normally releases the writer lock.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        label: str = "stage",
        journal: Path | None = None,
        lock: Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.label = label
        self.journal = journal
        self.lock = lock if lock is not None else journal
        self._fd, self.writer = take_writer_lock(self.directory)
        self._temps: dict[Path, Path] = {}  # final -> temporary, in staging order
        self._trees: set[Path] = set()  # finals staged as directories or symlinks
        self._open: dict[Path, HashingWriter] = {}
        self.records: dict[str, dict[str, Any]] = {}  # final name -> size, sha256, fingerprint
        self._faults = bool(os.environ.get("PACKFT_FAULT"))
        self._decided = False

    # --- staging ---------------------------------------------------------------------------

    def temp(self, final: str | Path) -> Path:
        """The temporary path for ``final`` (registered: committed or removed with the stage)."""
        final = Path(final)
        if final.parent.resolve() != self.directory.resolve():
            raise ValueError(f"{final} is not in the stage's directory {self.directory}")
        return self._temps.setdefault(final, temp_path(final, self.writer))

    def open(self, final: str | Path, mode: str = "wb") -> IO:
        """Create the temporary for ``final``; bytes written are hashed on the way (``"w"``:
        UTF-8 text). Seal it with :meth:`seal` when complete."""
        import io

        final = Path(final)
        tmp = self.temp(final)
        try:
            raw = open(tmp, "wb")  # noqa: SIM115 - closed by seal/abort
            os.fchmod(raw.fileno(), 0o644)
        except OSError as error:
            raise named_os_error(error, final) from None
        fault = f"{self.label}.write" if self._faults else None
        handle = self._open[final] = HashingWriter(raw, final, fault)
        if "b" in mode:
            return handle
        return io.TextIOWrapper(handle, encoding="utf-8", write_through=True)

    def make_dir(self, final: str | Path) -> Path:
        """Create an empty temporary directory for ``final`` (a checkpoint, a model, a dataset
        version) and return it; fill it, then :meth:`seal` (fsyncs the whole tree)."""
        final = Path(final)
        tmp = self.temp(final)
        try:
            tmp.mkdir(mode=0o755)
        except OSError as error:
            raise named_os_error(error, final) from None
        self._trees.add(final)
        return tmp

    def symlink(self, final: str | Path, target: str | Path) -> None:
        """Stage ``final -> target`` (a generation switch: the commit replaces ``final`` in one
        rename, so a reader resolves the old target or the new one)."""
        final = Path(final)
        os.symlink(target, self.temp(final))
        self._trees.add(final)
        self.records[final.name] = {"target": os.fspath(target), "fingerprint": None}

    def adopt(self, final: str | Path, source: str | Path) -> dict[str, Any]:
        """Stage a complete file written elsewhere under its own protocol (a resumable
        download's ``.part``, same file system): moved to ``final``'s temporary and sealed."""
        final = Path(final)
        try:
            os.replace(source, self.temp(final))
        except OSError as error:
            raise named_os_error(error, source) from None
        return self.seal(final)

    def seal(self, final: str | Path) -> dict[str, Any]:
        """Flush, fsync and close ``final``'s temporary; record its size, sha256, fingerprint
        (a staged directory: every file in it fsynced; its record has no hashes)."""
        final = Path(final)
        tmp = self.temp(final)
        if final in self._trees:
            fsync_tree(tmp)
            record = self.records[final.name] = {"fingerprint": None}
            return record
        handle = self._open.pop(final, None)
        sha256 = None
        try:
            if handle is not None:
                handle.flush()
                fsync_file(handle.fileno())
                sha256 = handle.sha256
                handle.close()
            else:
                fsync_file(tmp)
        except OSError as error:
            raise named_os_error(error, final) from None
        record = self.records[final.name] = file_record(tmp, sha256)
        return record

    def discard(self, final: str | Path) -> None:
        """Drop one staged file (its temporary is removed)."""
        final = Path(final)
        handle = self._open.pop(final, None)
        if handle is not None:
            handle.discard()
        tmp = self._temps.pop(final, None)
        if tmp is not None:
            remove_tree(tmp)
        self._trees.discard(final)
        self.records.pop(final.name, None)

    # --- commit ----------------------------------------------------------------------------

    def commit(self, marker: str | Path | None = None) -> None:
        """Rename every sealed temporary to its target; ``marker`` (if given) goes last and its
        old version is removed first. With a journal, the journal is written before anything
        at a final name changes and removed after. Every temporary must have been sealed."""
        unsealed = [str(f) for f in self._open]
        unsealed += [str(f) for f in self._temps if f.name not in self.records]
        if unsealed:
            raise RuntimeError(f"commit with unsealed files: {', '.join(unsealed)}")
        if self.journal is not None and self._trees:
            raise ValueError("a journaled commit holds files only (a directory is one rename)")
        finals = list(self._temps)
        if marker is not None:
            finals.remove(Path(marker))
            finals.append(Path(marker))
        entries = [
            (self._temps[f].name, f.name, self.records[f.name]["fingerprint"]) for f in finals
        ]
        inject(f"{self.label}.staged", self.directory)
        if self.journal is None:
            apply_commit(self.directory, entries, marker is not None, self.label)
        else:
            with commit_lock(self.lock, timeout=600.0):  # readers hold it while they check
                if self.journal.exists():  # a dead writer's decided commit: finish it first
                    roll_forward(self.journal)
                record = {"writer": self.writer, "marker": marker is not None, "files": entries}
                _write_journal(self.journal, record)
                self._decided = True  # from here on a failure is finished by a roll-forward
                inject(f"{self.label}.journal", self.journal)
                apply_commit(self.directory, entries, marker is not None, self.label, self.journal)
        self._temps.clear()
        self._trees.clear()

    def abort(self) -> None:
        """Remove every temporary of this stage (nothing at a final name changes). After the
        journal was written the commit is decided: the temporaries stay for the roll-forward
        the next packft process on these targets does."""
        for final in list(self._temps):
            if self._decided:
                handle = self._open.pop(final, None)
                if handle is not None:
                    handle.discard()
            else:
                self.discard(final)

    def close(self) -> None:
        """Release the writer lock (removing its file); call after commit or abort."""
        if self._fd >= 0:
            writer_lock_path(self.directory, self.writer).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is not None:
                self.abort()
        finally:
            self.close()
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise named_os_error(exc, self.directory) from exc


def _write_journal(path: Path, record: dict[str, Any]) -> None:
    """The journal itself is a single-file atomic write (a torn journal is never read)."""
    with atomic_writer(path, "w") as out:
        json.dump(record, out)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on clean exit fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched (a stage of
    one file, see :class:`Stage`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Stage(path.parent, label="atomic") as stage:
        handle = stage.open(path, mode)
        yield handle
        handle.flush()
        stage.seal(path)
        stage.commit()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, replace: bool = False, label: str = "dir") -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final``; on clean exit fsync everything in it
    and rename it to ``final`` (a stage of one directory, see :class:`Stage`).

    Args:
        final: the directory to create.
        replace: swap out an existing ``final`` (else it is refused before any work).
        label: prefix of the fault-injection points.

    Raises:
        FileExistsError: ``final`` exists and ``replace`` is False.

    On an exception the temporary tree is removed and ``final`` is left untouched. Dead writers'
    temporaries in the parent directory are removed first (:func:`~packft.core.writers.sweep`).
    """
    final = Path(final).absolute()
    if not replace and os.path.lexists(final):
        raise FileExistsError(errno.EEXIST, "already exists; replace it or choose another", final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep(final.parent)
    with Stage(final.parent, label=label) as stage:
        tmp = stage.make_dir(final)
        yield tmp
        stage.seal(final)
        stage.commit()
