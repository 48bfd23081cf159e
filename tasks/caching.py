"""Content-addressed cache keys for the expensive tasks.

A task's key is the SHA-256 of a canonical JSON document holding:

* the task name, the SHA-256 of the task function's source (editing one task invalidates that
  task only, not the others of its module) and
  the installed packft version (a new release never reuses old outputs);
* every parameter that changes the output, where an input file counts by its content digest
  (:class:`FileRef`), never by its path or mtime, and a tokenizer by the digest of all its files.

Parameters that only say *where* things go (``work_dir`` ...) are excluded by name.

Outputs live at paths derived from the content (``work_dir/shards/<digest>.arrow``), so a cached
result always points at the right files. If those files were deleted while the Prefect result record
survived, :func:`content_cache` sees the record without its outputs and returns a one-off key:
the task runs again and rewrites the same paths, after which the old record is valid again. The
same happens when an output exists but fails its checksum record (``intact``): a corrupt shard or
plan is rebuilt, never reused.

Before Prefect reads a stored record, :func:`tasks.serializer.vet_record` checks it is a
``packft-json`` record of allow-listed data (never a pickle) and moves anything else aside.
Results persist as files named by key under ``result_storage`` (a ``pathlib.Path``; a ``str``
would be read as a block slug), so the cache survives process and server restarts.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from packft import __version__
from packft.core.fingerprint import tree_sha256  # the one tree digest (tokenizers, checkpoints)
from tasks.serializer import allow, vet_record

if TYPE_CHECKING:
    from prefect.context import TaskRunContext

__all__ = [
    "FileRef",
    "content_cache",
    "content_key",
    "digest_json",
    "source_digest",
    "tree_sha256",
]


@allow
class FileRef(BaseModel):
    """An input file pinned by content: the cache sees ``sha256`` (and nothing else)."""

    path: Path
    """Where the bytes are on this machine (local copy of a URL, or the file itself)."""
    sha256: str
    """Hex SHA-256 of the file's bytes."""
    source: str = ""
    """The spec it came from (path, URL, hf:// id): for logs and MLflow dataset sources."""
    size: int = 0
    """Bytes."""

    def cache_view(self) -> str:
        return self.sha256


def _canonical(value: Any) -> Any:
    if hasattr(value, "cache_view"):
        return value.cache_view()
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def digest_json(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (FileRefs reduced to their content digest)."""
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _function_source(fn: Callable[..., Any]) -> str:
    """The source text of ``fn``; for a copy rebuilt by value (cloudpickle, on a Dask worker:
    its code says ``<dynamic-code>``), the source of the function its module defines under
    that name (a Prefect task's ``.fn``)."""
    try:
        return inspect.getsource(inspect.unwrap(fn))
    except (OSError, TypeError):
        pass
    try:
        found: Any = importlib.import_module(fn.__module__)
        for part in fn.__qualname__.split("."):
            found = getattr(found, part)
        return inspect.getsource(inspect.unwrap(getattr(found, "fn", found)))
    except (ImportError, AttributeError, OSError, TypeError):
        return f"{fn.__module__}.{fn.__qualname__}"  # a cache miss, never a wrong reuse


@cache
def source_digest(fn: Callable[..., Any]) -> str:
    """SHA-256 of the task function's own source, not of its module: editing one task
    invalidates that task's cache only. The same in every process (see
    :func:`_function_source` for functions shipped to workers)."""
    return hashlib.sha256(_function_source(fn).encode()).hexdigest()


@cache
def result_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model ``fn`` is annotated to return, if it returns one: a stored result of
    that task must hold one (:func:`tasks.serializer.vet_record` refuses an older shape)."""
    try:
        hint = typing.get_type_hints(inspect.unwrap(fn)).get("return")
    except (NameError, TypeError, AttributeError):  # an annotation not resolvable here
        return None
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def content_key(task_name: str, fn: Callable[..., Any], params: Mapping[str, Any]) -> str:
    """The cache key of ``fn`` (a task body) called with ``params`` (already filtered)."""
    return digest_json(
        {
            "task": task_name,
            "source": source_digest(fn),
            "packft": __version__,
            "params": params,
        }
    )


def content_cache(
    *,
    exclude: tuple[str, ...] = (),
    outputs: Callable[[Mapping[str, Any]], Iterable[Path]] | None = None,
    view: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    intact: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn`` keyed on content (see module docstring).

    Args:
        exclude: parameter names that do not change the output (destinations, handles).
        outputs: ``params -> paths`` the task writes (derived from content, not from the key); a
            stored result whose paths are gone is not reused.
        view: ``kept params -> what the key sees`` (e.g. drop config fields that do not matter).
        intact: ``params -> bool``, called when the outputs exist: False (a corrupt cache entry,
            see :func:`packft.dataset.check_seal`) re-runs the task instead of reusing it.
    """

    def key_fn(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        task = context.task
        kept = {k: v for k, v in parameters.items() if k not in exclude}
        if view is not None:
            kept = view(kept)
        key = content_key(task.name, task.fn, kept)
        store = getattr(context, "result_store", None)
        if store is not None:  # before Prefect reads the record: refuse what we did not write
            key = vet_record(store, key, result_model(task.fn))
        paths = list(outputs(parameters)) if outputs is not None else []
        stale = not all(Path(p).exists() for p in paths) or (intact and not intact(parameters))
        if stale and store is not None and store.exists(key):
            return f"{key}-rebuild-{uuid.uuid4().hex[:12]}"
        return key

    return key_fn
