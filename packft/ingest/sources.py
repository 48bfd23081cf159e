"""Where instruction data comes from: resolve ``--input`` to the list of local data files to read.

``resolve_input(spec)`` accepts a file, a directory, an ``http(s)://`` URL (downloaded into the
content-addressed cache of :mod:`packft.ingest.download`) or
``hf://datasets/owner/name[@rev][/path]`` (a ``huggingface_hub`` snapshot; ``/path`` may be a glob
such as ``data/train-*``). A directory must hold files of exactly one format; it is walked
recursively in sorted order, skipping hidden and ``_``-prefixed entries, documentation (``*.md``,
``LICENSE``) and dataset metadata (``dataset_info.json``, ``state.json``...); files of more than one
split (``train``/``test``/``validation`` in their path) are refused. A ``datasets``
``save_to_disk`` folder is recognised by its ``state.json`` and read through its arrow shards.

Streaming each file's records is :mod:`packft.ingest.readers` (``iter_record_batches``,
:func:`detect_format`; the batches are :class:`packft.ingest.stream.RecordBatch`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import unquote

from packft.core.digest import file_sha256
from packft.core.errors import UsageError
from packft.ingest.download import fetch_hub_dataset, fetch_url
from packft.ingest.readers import FORMATS, KNOWN_SUFFIXES, detect_format
from packft.ingest.sniff import check_content
from packft.ingest.stream import SourceError

__all__ = ["InputSpecError", "MixedFormatsError", "list_data_files", "resolve_input"]

# Never data: skipped when a directory is listed.
_METADATA_NAMES = frozenset(
    {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json", "license"}
)
_DOC_SUFFIXES = (".md", ".rst", ".lock", ".gitattributes", ".py", ".yaml", ".yml")
_HF_SPEC = re.compile(r"^hf://datasets/([^/@\s]+/[^/@\s]+)(?:@([^/\s]+))?(?:/(.*))?$")
_SPLIT = re.compile(r"[/_.-](train|test|validation|valid|val|dev|eval)(?=[/_.-]|$)")
_SPLIT_NAMES = {"valid": "validation", "val": "validation", "dev": "validation"}


class MixedFormatsError(SourceError):
    """A directory holds files of more than one format."""


class InputSpecError(SourceError, UsageError):
    """``--input`` is malformed: not ``hf://datasets/OWNER/NAME[@REV][/PATH]``, or a path that
    climbs out of the snapshot (``..``, an absolute path); a usage error, exit 2."""


def _check_hub_parts(spec: str, repo_id: str, revision: str | None, raw_subpath: str) -> None:
    """Refuse ``..`` and absolute components: the snapshot is the only place ``hf://`` may read."""
    parts = [*repo_id.split("/"), *(revision or "").split("/")]
    if any(part in (".", "..") for part in parts) or (revision or "").startswith("/"):
        raise InputSpecError(f"{spec!r}: owner, name and revision may not be '.' or '..'")
    if raw_subpath.startswith("/") or ".." in raw_subpath.split("/"):
        raise InputSpecError(
            f"{spec!r}: the path inside the dataset may not start with '/' or contain '..' "
            "(it would read files outside the snapshot); name a file or glob inside it, e.g. "
            "hf://datasets/OWNER/NAME/data/train-*"
        )


def _inside(root: Path, files: list[Path], spec: str) -> list[Path]:
    """Every selected file must lie under the snapshot root (lexically: hub files are symlinks
    into the shared blob store, so resolving them would always leave the snapshot)."""
    top = os.path.normpath(root)
    for file in files:
        if os.path.commonpath([top, os.path.normpath(file)]) != top:
            raise InputSpecError(f"{spec!r}: {file} is outside the snapshot {root}")
    return files


def _is_data_candidate(path: Path) -> bool:
    name = path.name.lower()
    return (
        name not in _METADATA_NAMES
        and not name.startswith(("readme", "license"))
        and not (name.endswith(_DOC_SUFFIXES))
    )


def _split_of(relative: Path) -> str | None:
    """The split (train, test, ...) a file path names, as in ``data/train-0000.parquet``."""
    match = _SPLIT.search("/" + relative.as_posix().lower())
    return None if match is None else _SPLIT_NAMES.get(match.group(1), match.group(1))


def list_data_files(directory: Path) -> list[Path]:
    """Every data file under ``directory`` (sorted, one format), per the rules in the docstring.

    Raises:
        SourceError: nothing readable, unknown file types, several splits (``train``, ``test``
            ... in file or folder names: reading all would mix evaluation data into training),
            or a ``DatasetDict`` root.
        MixedFormatsError: more than one format; the message lists the files by format.
    """
    directory = Path(directory)
    state = directory / "state.json"
    if state.is_file():  # datasets.Dataset.save_to_disk
        data_files = json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])
        files = [directory / entry["filename"] for entry in data_files]
        missing = [str(f) for f in files if not f.is_file()]
        if not files or missing:
            raise SourceError(f"{state}: save_to_disk folder with missing shards {missing}")
        return files
    if (directory / "dataset_dict.json").is_file():
        splits = json.loads((directory / "dataset_dict.json").read_text()).get("splits", [])
        raise SourceError(
            f"{directory} is a DatasetDict with splits {splits}; pass one split's folder, "
            f"e.g. --input {directory / (splits[0] if splits else 'train')}"
        )
    by_format: dict[str, list[Path]] = {}
    unknown: list[Path] = []
    for path in sorted(directory.rglob("*")):
        parts = path.relative_to(directory).parts
        if any(p.startswith((".", "_")) for p in parts) or not path.is_file():
            continue
        if not _is_data_candidate(path):
            continue
        try:
            by_format.setdefault(detect_format(path), []).append(path)
        except SourceError:
            unknown.append(path)
    if unknown:
        raise SourceError(
            f"{directory}: files of unknown type {[str(p) for p in unknown[:10]]}; supported: "
            f"{', '.join(FORMATS)}. Move them out or pass one file as --input."
        )
    if not by_format:
        raise SourceError(f"{directory}: no data files ({', '.join(FORMATS)}) found")
    splits = {_split_of(p.relative_to(directory)) for files in by_format.values() for p in files}
    if len(splits - {None}) > 1:
        raise SourceError(
            f"{directory} holds several dataset splits ({', '.join(sorted(splits - {None}))}); "
            "reading them all would train on evaluation data. Pass one split's file or folder "
            "(for hf:// ids a glob works: hf://datasets/OWNER/NAME/data/train-*)."
        )
    if len(by_format) > 1:
        listing = "; ".join(
            f"{fmt}: {', '.join(str(p) for p in paths[:5])}{' ...' if len(paths) > 5 else ''}"
            for fmt, paths in sorted(by_format.items())
        )
        raise MixedFormatsError(
            f"{directory} mixes formats ({listing}); a directory must hold one format. "
            "Pass one file, or split the directory by format."
        )
    return next(iter(by_format.values()))


def _select(root: Path, subpath: str, spec: str) -> list[Path]:
    """Files of a snapshot: all, one file or folder, or a glob such as ``data/train-*``."""
    if any(ch in subpath for ch in "*?["):
        files = sorted(p for p in root.glob(subpath) if p.is_file() and _is_data_candidate(p))
        if not files:
            raise SourceError(f"{spec}: no files match {subpath!r} in the snapshot {root}")
        return files
    target = root / subpath
    if target.is_file():
        return [target]
    if target.is_dir():
        return list_data_files(target)
    raise SourceError(
        f"{spec}: no {subpath!r} in the snapshot; it has {sorted(p.name for p in root.iterdir())}"
    )


def resolve_input(
    spec: str, cache_dir: Path, *, sha256: str | None = None, refresh: bool = False
) -> list[Path]:
    """Turn ``--input`` into the list of local data files to read, downloading if remote.

    Args:
        spec: a path (file or directory), an http(s) URL, or ``hf://datasets/owner/name[@rev]``
            optionally followed by ``/path/in/repo``.
        cache_dir: where remote inputs are cached (see :mod:`packft.ingest.download`).
        sha256: expected hex digest of the single input file (URLs and local files).
        refresh: download a URL again even if ``urls.json`` knows it.

    Returns:
        Files in read order, all of one format.

    Raises:
        FileNotFoundError: a local path that does not exist.
        SourceError: an unreadable type, a mix of formats, content that contradicts the file's
            suffix (:mod:`packft.ingest.sniff`), or a checksum on a folder.
        InputSpecError: a malformed ``hf://`` spec or one with ``..``/absolute components.
        packft.ingest.download.DownloadError: network, HTTP, checksum or Hub failures.
    """
    spec = str(spec)
    if spec.startswith(("http://", "https://")):
        return [
            fetch_url(
                spec, Path(cache_dir), sha256=sha256, known_suffixes=KNOWN_SUFFIXES, refresh=refresh
            )
        ]
    if spec.startswith("hf://"):
        match = _HF_SPEC.match(spec)
        if not match:
            raise InputSpecError(
                f"{spec!r}: expected hf://datasets/OWNER/NAME[@REVISION][/PATH], e.g. "
                "hf://datasets/tatsu-lab/alpaca@main"
            )
        repo_id, revision, subpath = match.group(1), match.group(2), (match.group(3) or "")
        revision = unquote(revision) if revision else None
        _check_hub_parts(spec, repo_id, revision, subpath)
        subpath = subpath.strip("/")
        root = fetch_hub_dataset(repo_id, revision, cache_dir, subpath)
        files = _inside(root, _select(root, subpath, spec), spec)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            parent = path.parent if path.parent.exists() else Path.cwd()
            nearby = sorted(p.name for p in parent.iterdir())[:20]
            raise FileNotFoundError(
                f"--input {spec}: no such file or directory (in {parent}: {nearby}). Pass a "
                "file, a directory, an http(s) URL or hf://datasets/OWNER/NAME."
            )
        files = [path] if path.is_file() else list_data_files(path)
    for file in files:  # a gzip named .json or random bytes fail here, before any other work
        check_content(file, detect_format(file))
    if sha256 is not None and not spec.startswith(("http://", "https://")):
        if len(files) != 1:
            raise InputSpecError(
                f"--input-sha256 checks one file, but {spec} has {len(files)} files"
            )
        actual = file_sha256(files[0])
        if actual != sha256.lower():
            raise SourceError(f"{files[0]}: sha256 is {actual}, expected {sha256.lower()}")
    return files
