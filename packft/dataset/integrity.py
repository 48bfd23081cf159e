"""Datasets and cache entries are checked before use: complete, unmixed, uncorrupted, or refused.

**Datasets** (``{prefix}_packed_{input_ids,attention_mask,labels}_document.{bin,idx}``, the plan,
the rejects file) are written by one :class:`packft.core.atomic.Stage` with a journal
(:func:`dataset_stage`) and described by the sidecar ``{prefix}.packft.json``, renamed last::

    "integrity": {"generation": "6f1c...", "rows": 41, "files": {
        "ds_packed_input_ids_document.bin": {"size": 83968, "sha256": "...", "fingerprint": "b2:..."},
        ... the other five, "ds.packft.plan.npz", "ds.rejects.jsonl"}}
    "vocab_size": 32000

:func:`open_verified` (used by ``packft train``'s data loading and ``packft inspect``) first
finishes a pending commit (a journal left by a killed writer), then, holding the commit lock
shared, checks every recorded file's size and fingerprint, the Megatron headers, equal row
counts across the three fields and the recorded row count; ``full=True`` (``inspect --verify``)
also hashes every byte and checks that every input id and label is < the vocabulary size. Any
mismatch is an :class:`~packft.core.errors.IntegrityError` with one line naming the file. A set
without a sidecar (MindSpeed's own output) passes on the structural checks with a warning, unless
packft's plan or rejects file is there: then it is a packft set whose commit did not finish.

**Cache entries** (tokenized shards with their rejects file, plan files) carry a *seal*
``{entry}.sums.json``: size, sha256 and fingerprint of each file, written after them. Reuse calls
:func:`check_seal` (full sha256, ~1 GB/s); a missing or wrong seal means "rebuild, with a
warning", never "reuse".

Measured (benchmarks/bench_integrity.py, 100k distinct Alpaca records, seq 4096, 5,174 rows,
245 MB of dataset files, this 2-core machine at load average 4-6): :func:`open_verified` 4-23 ms,
``full=True`` 0.59-1.64 s; :func:`check_seal` of the 163 MB shard 0.14-0.39 s. Writing the
checksums costs about one sha256 of the bytes written (0.41 s for 245 MB), within the run-to-run
noise of the 2.4-4.7 s write step here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packft.core.atomic import Stage, atomic_write_bytes
from packft.core.constants import IGNORE_INDEX
from packft.core.digest import file_record, file_sha256, fingerprint
from packft.core.errors import IntegrityError, one_line
from packft.core.journal import JOURNAL_SUFFIX, roll_forward
from packft.core.writers import commit_lock, probe_writable, sweep
from packft.dataset.indexed import SFT_KEYS, IndexedDataset, IndexedFormatError, sft_prefix

log = logging.getLogger(__name__)
CHUNK = 1 << 22
"""Tokens per chunk of the id check (32 MiB as int64)."""

RERUN = "write it again with `packft preprocess ... --output-prefix {prefix}`"
NO_SIDECAR = (
    "{prefix} has no packft sidecar ({sidecar}): it was written by MindSpeed or another tool, or "
    "its sidecar was deleted; only its structure was checked (headers, sizes, equal row counts)"
)


def sidecar_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.packft.json")


def plan_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.packft.plan.npz")


def rejects_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.rejects.jsonl")


def journal_path(prefix: str | Path) -> Path:
    prefix = Path(prefix)
    return prefix.with_name(f".{prefix.name}{JOURNAL_SUFFIX}")


def lock_path(prefix: str | Path) -> Path:
    prefix = Path(prefix)
    return prefix.with_name(f".{prefix.name}.packft.lock")


def data_files(prefix: str | Path) -> list[Path]:
    """The six MindSpeed files of a dataset."""
    return [Path(f"{sft_prefix(prefix, k)}.{e}") for k in SFT_KEYS for e in ("bin", "idx")]


# --- writing -------------------------------------------------------------------------------------


def prepare_output(prefix: str | Path) -> None:
    """Before any work on ``prefix``: its directory is writable (else one ``OSError`` naming it),
    a commit a killed writer decided is finished, and dead writers' temporaries are removed."""
    directory = Path(prefix).parent
    probe_writable(directory, "the --output-prefix directory")
    settle(prefix)
    sweep(directory)


def dataset_stage(prefix: str | Path) -> Stage:
    """The journaled stage (:mod:`packft.core.atomic`) every file of dataset ``prefix`` goes into."""
    prepare_output(prefix)
    return Stage(
        Path(prefix).parent, label="dataset", journal=journal_path(prefix), lock=lock_path(prefix)
    )


def settle(prefix: str | Path) -> None:
    """Finish the commit a killed writer left decided (its journal), or refuse with one line."""
    journal = journal_path(prefix)
    if not journal.exists():
        return
    try:
        with commit_lock(lock_path(prefix)):
            if roll_forward(journal):
                log.warning("%s: finished the commit an interrupted packft run had decided", prefix)
    except OSError as error:
        raise IntegrityError(
            f"{prefix}: an interrupted write left a decided commit ({journal.name}) that cannot be "
            f"finished here ({one_line(error)}); run `packft inspect {prefix}` with write access "
            "to the directory to complete it"
        ) from None


# --- reading -------------------------------------------------------------------------------------


@dataclass
class VerifiedDataset:
    """The three opened fields of a checked set, its sidecar (None: MindSpeed's own) and warnings."""

    prefix: Path
    datasets: dict[str, IndexedDataset]
    sidecar: dict[str, Any] | None
    checked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def open_verified(
    prefix: str | Path,
    *,
    full: bool = False,
    vocab_size: int | None = None,
    require_all: bool = False,
) -> VerifiedDataset:
    """Open dataset ``prefix`` after checking it is one complete set (see module doc).

    Args:
        prefix: the ``--output-prefix`` / ``--data-path``.
        full: also hash every byte and check ids against the vocabulary (``inspect --verify``).
        vocab_size: the vocabulary for ``full`` when the sidecar has none.
        require_all: the plan and rejects files must be present too (training needs only six).

    Raises:
        IntegrityError: a partial, mixed or corrupt set, or an unfinished commit that cannot be
            completed (one line naming the file).
        FileNotFoundError: no dataset at ``prefix``.
    """
    prefix = Path(prefix)
    for _ in range(3):
        settle(prefix)
        with commit_lock(lock_path(prefix), shared=True):
            if journal_path(prefix).exists():  # a writer died after we looked: finish it
                continue
            return _verify(prefix, full, vocab_size, require_all)
    raise IntegrityError(f"{prefix}: commits keep appearing while it is opened; retry")


def _verify(prefix: Path, full: bool, vocab: int | None, require_all: bool) -> VerifiedDataset:
    sidecar_file = sidecar_path(prefix)
    present = [p for p in data_files(prefix) if p.exists()]
    if not sidecar_file.exists() and not present:
        raise FileNotFoundError(
            f"no dataset at {prefix}: neither {sidecar_file.name} nor "
            f"{Path(sft_prefix(prefix, 'input_ids')).name}.bin exists; write one with "
            "`packft preprocess ... --output-prefix PREFIX`"
        )
    sidecar = _read_sidecar(sidecar_file) if sidecar_file.exists() else None
    result = VerifiedDataset(prefix, {}, sidecar)
    if sidecar is None:
        traces = [p.name for p in (plan_path(prefix), rejects_path(prefix)) if p.exists()]
        if traces:  # packft wrote this set, and its sidecar (written last) is missing
            raise IntegrityError(
                f"{prefix}: packft's {', '.join(traces)} exist but {sidecar_file.name} does not: "
                f"an interrupted write (by an older packft) or a deleted sidecar; "
                + RERUN.format(prefix=prefix)
            )
        result.warnings.append(NO_SIDECAR.format(prefix=prefix, sidecar=sidecar_file.name))
    elif "integrity" not in sidecar:
        result.warnings.append(
            f"{sidecar_file.name} predates integrity records: sizes and structure checked only"
        )
        _check_sizes(prefix, sidecar.get("files", {}))
    else:
        _check_files(prefix, sidecar["integrity"]["files"], full, require_all, result)
    result.datasets = _open_structure(prefix, sidecar is not None)
    rows = len(result.datasets["input_ids"])
    recorded = (sidecar or {}).get("integrity", {}).get("rows")
    if recorded is not None and recorded != rows:
        raise IntegrityError(f"{prefix}: {rows} rows on disk, the sidecar records {recorded}")
    result.checked.append(f"structure: headers, sizes, {rows} rows in each of the three fields")
    if full:
        vocab = vocab or (sidecar or {}).get("vocab_size")
        if vocab is None:
            result.warnings.append("vocabulary size unknown (no sidecar): ids were not checked")
        else:
            check_ids(prefix, result.datasets, int(vocab))
            result.checked.append(f"every input id and label < vocab size {vocab}")
    return result


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise IntegrityError(
            f"{path}: the sidecar is not valid JSON ({error}); the dataset's record is damaged: "
            "rerun `packft preprocess` to rebuild it"
        ) from None
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} is not a packft sidecar (a JSON object was expected)")
    return data


def _problem(prefix: Path, path: Path, what: str) -> IntegrityError:
    return IntegrityError(
        f"{path}: {what}; the set at {prefix} is not the one its sidecar describes, "
        + RERUN.format(prefix=prefix)
    )


def _check_files(
    prefix: Path,
    files: dict[str, dict[str, Any]],
    full: bool,
    require_all: bool,
    result: VerifiedDataset,
) -> None:
    required = {p.name for p in data_files(prefix)}
    for name, record in files.items():
        path = prefix.parent / name
        if not path.exists():
            if name in required or require_all:
                raise _problem(prefix, path, "missing")
            continue
        size = path.stat().st_size
        if size != record["size"]:
            raise _problem(prefix, path, f"{size} bytes, the sidecar records {record['size']}")
        if fingerprint(path) != record["fingerprint"]:
            raise _problem(
                prefix,
                path,
                "same size but other content than the sidecar records (another run's file)",
            )
        if full and file_sha256(path) != record["sha256"]:
            raise _problem(prefix, path, "sha256 differs from the sidecar (corrupted bytes)")
    kind = "sha256 and fingerprint" if full else "size and fingerprint"
    result.checked.append(f"{kind} of {len(files)} files against the sidecar")


def _check_sizes(prefix: Path, sizes: dict[str, dict[str, int]]) -> None:
    for key, by_ext in sizes.items():
        for ext, size in by_ext.items():
            path = Path(f"{sft_prefix(prefix, key)}.{ext}")
            if not path.exists() or path.stat().st_size != size:
                raise _problem(prefix, path, f"missing or not {size} bytes as the sidecar records")


def _open_structure(prefix: Path, has_sidecar: bool) -> dict[str, IndexedDataset]:
    rerun = RERUN.format(prefix=prefix)
    if not has_sidecar:
        rerun = f"(the set has no packft sidecar) {rerun}"
    try:
        datasets = {key: IndexedDataset(sft_prefix(prefix, key)) for key in SFT_KEYS}
    except IndexedFormatError as error:
        raise IntegrityError(f"{error}; {rerun}") from None
    reference = datasets["input_ids"].lengths
    for key, dataset in datasets.items():
        if not np.array_equal(dataset.lengths, reference):
            raise IntegrityError(
                f"{sft_prefix(prefix, key)}: {len(dataset)} rows or their lengths differ from "
                f"input_ids' {len(reference)} (a mixed set); {rerun}"
            )
    return datasets


def check_ids(prefix: Path, datasets: dict[str, IndexedDataset], vocab: int) -> None:
    """Every input id in [0, vocab) and every label in [0, vocab) or -100, in chunks."""
    for key in ("input_ids", "labels"):
        data = datasets[key]._data
        for start in range(0, len(data), CHUNK):
            chunk = np.asarray(data[start : start + CHUNK], np.int64)
            bad = (chunk >= vocab) | (chunk < 0)
            if key == "labels":
                bad &= chunk != IGNORE_INDEX
            if bad.any():
                at = start + int(np.argmax(bad))
                raise IntegrityError(
                    f"{sft_prefix(prefix, key)}.bin: token {at} is {int(data[at])}, outside the "
                    f"vocabulary of {vocab}; the data is corrupt, " + RERUN.format(prefix=prefix)
                )


# --- cache entries -------------------------------------------------------------------------------


def seal_path(entry: str | Path) -> Path:
    entry = Path(entry)
    return entry.with_name(entry.name + ".sums.json")


def unseal(entry: str | Path) -> None:
    """Remove an entry's seal before rewriting it (a kill then leaves it unsealed: rebuilt)."""
    seal_path(entry).unlink(missing_ok=True)


def seal(entry: str | Path, extra: list[Path] = ()) -> None:
    """Record size, sha256 and fingerprint of ``entry`` and the ``extra`` files that exist."""
    files = [Path(entry), *(p for p in extra if Path(p).exists())]
    records = {p.name: file_record(p) for p in files}
    text = json.dumps({"files": records}, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(seal_path(entry), text.encode())


def check_seal(entry: str | Path, extra: list[Path] = ()) -> str | None:
    """Why cached ``entry`` (with ``extra``) must not be reused, or None when it is intact.

    Every byte is hashed. An ``extra`` file the seal does not list must not exist (a stale
    leftover of an interrupted run).
    """
    entry = Path(entry)
    try:
        records = json.loads(seal_path(entry).read_text())["files"]
    except FileNotFoundError:
        return "no checksum record (an interrupted write, or written by an older packft)"
    except (OSError, ValueError, KeyError) as error:
        return f"unreadable checksum record {seal_path(entry).name} ({error})"
    for path in (entry, *map(Path, extra)):
        record = records.get(path.name)
        if record is None:
            if path == entry or path.exists():
                return f"{path.name} is not in its checksum record"
            continue
        if not path.exists():
            return f"{path.name} is missing"
        if path.stat().st_size != record["size"]:
            return f"{path.name} has {path.stat().st_size} bytes, recorded {record['size']}"
        if file_sha256(path) != record["sha256"]:
            return f"{path.name} does not match its recorded sha256 (corrupted bytes)"
    return None
