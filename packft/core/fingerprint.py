"""Content identities that every cache key is made of: a stable JSON digest and a tree digest.

Both the CLI (which reuses tokenized shards and plans under ``--cache-dir``) and the Prefect
tasks (whose cached results live in the flow's result storage) name "the same work" with these
two functions applied to the same stage options (``*Options.cache_key()``), so the two can
never disagree on what is reusable.

* :func:`json_digest`: SHA-256 of the canonical JSON of a value (sorted keys, no spaces, paths
  as text, tuples as lists). Anything that is not plain JSON data is refused (a ``repr`` would
  embed addresses or ordering that differ between processes).
* :func:`tree_sha256`: one digest over every file of a directory (relative name + SHA-256 of the
  bytes, in name order). Hidden entries (``.git``, ``.cache/huggingface`` download metadata with
  timestamps) are skipped: they never change what a tokenizer or checkpoint computes. mtimes
  are not content. A single file digests as a tree of one.

Cost: ``tree_sha256`` reads every byte once (~1 GB/s here); a Llama-2 tokenizer dir (2 MiB)
takes ~3 ms.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

_CHUNK = 1 << 20


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data (dict keys as text, tuples/sets as lists, paths as text).

    Raises:
        TypeError: something that has no stable JSON form (an object, a function ...).
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(canonical(v) for v in value)
    raise TypeError(f"no stable JSON form for a cache key: {type(value).__name__} {value!r}")


def json_digest(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``value`` (see :func:`canonical`)."""
    text = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """Digest of every non-hidden file under ``path`` (relative names + bytes); see module doc.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist (expected a directory or file to digest)")
    if root.is_file():
        files, root = [root], root.parent
    else:
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    outer = hashlib.sha256()
    for file in files:
        outer.update(f"{file.relative_to(root).as_posix()}\0{_file_digest(file)}\n".encode())
    return outer.hexdigest()
