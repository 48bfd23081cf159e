"""Task results persisted as plain JSON, rebuilt only into allow-listed models (no unpickling).

Why: Prefect persists a task's result under its result storage (``.packft/...``) and, on a cache
hit, reads it back with the serializer *named in the stored file*. Its default is pickle, and its
built-in ``json`` serializer imports and calls whatever ``__class__``/``__exc_type__`` names the
file holds. Either way a file on disk decides what code runs. House rule: nothing on disk is
unpickled into code.

How:

* :class:`PackftJSONSerializer` (type ``packft-json``) writes JSON data only. A pydantic model
  is written as ``{"__packft_model__": "<name>", "data": {...}}`` and only models registered
  with :func:`allow` (by their name, in code) are rebuilt, through pydantic validation of plain
  data. Any other ``__dunder__`` key, an unknown model name, or bytes that are not JSON are
  refused with :class:`RefusedResult`. An exception (a failed task's record) is written as its
  type name and message and comes back as :class:`TaskFailure` (nothing is imported by name).
* :func:`vet_record` runs before Prefect looks at a cached record (from the tasks' cache key
  function, :func:`tasks.caching.content_cache`): a record whose metadata names another
  serializer (``pickle``, ``json``) or whose payload this serializer refuses is moved aside to
  ``<key>.refused`` (a warning says so) and the task computes again. Prefect therefore never
  deserializes a record that this module has not accepted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, TypeVar

from prefect.serializers import Serializer
from pydantic import BaseModel, Field, ValidationError

from packft.core.durable import retire

if TYPE_CHECKING:
    from prefect.results import ResultStore

log = logging.getLogger(__name__)

SERIALIZER_TYPE = "packft-json"
MODEL_TAG = "__packft_model__"
ERROR_TAG = "__packft_error__"
M = TypeVar("M", bound=type[BaseModel])

_ALLOWED: dict[str, type[BaseModel]] = {}


class RefusedResult(ValueError):
    """A stored result that this serializer does not rebuild (tampered, foreign or unknown)."""


class TaskFailure(RuntimeError):
    """A failed task's stored exception: its original type name and message, nothing more."""


def allow(model: M) -> M:
    """Let ``model`` be rebuilt from stored results (by its class name; names must be unique)."""
    name = model.__name__
    known = _ALLOWED.get(name)
    if known is not None and known is not model:
        raise ValueError(f"two result models named {name!r}: {known} and {model}")
    _ALLOWED[name] = model
    return model


def allowed_models() -> dict[str, type[BaseModel]]:
    """The models a stored result may name (a copy)."""
    return dict(_ALLOWED)


def encode(value: Any) -> Any:
    """``value`` as JSON data; models tagged by name (only allow-listed ones).

    Raises:
        TypeError: a value with no JSON form here (a model not allow-listed, an arbitrary object).
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value  # NaN/inf too (a diverged loss is a result): Python's json reads them back
    if isinstance(value, BaseModel):
        name = type(value).__name__
        if _ALLOWED.get(name) is not type(value):
            raise TypeError(f"result model {name} is not allow-listed (tasks.serializer.allow)")
        return {MODEL_TAG: name, "data": value.model_dump(mode="json")}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str | int) or str(key).startswith("__"):
                raise TypeError(f"result key {key!r}: only plain str/int keys are stored")
            out[str(key)] = encode(item)
        return out
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, BaseException):
        return {ERROR_TAG: type(value).__qualname__, "message": str(value)}
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return encode(value.item())
    raise TypeError(f"no JSON form for a task result: {type(value).__name__}")


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`; refuses anything it did not write.

    Raises:
        RefusedResult: a ``__dunder__`` key other than its own tags, an unknown model name, or
            data the named model does not validate.
    """
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if MODEL_TAG in value:
        name = value.get(MODEL_TAG)
        model = _ALLOWED.get(name) if isinstance(name, str) else None
        if model is None or set(value) != {MODEL_TAG, "data"}:
            raise RefusedResult(
                f"stored result names model {name!r}, not one of {sorted(_ALLOWED)}"
            )
        try:
            return model.model_validate(value["data"])
        except ValidationError as exc:
            raise RefusedResult(
                f"stored {name} does not validate: {exc.error_count()} errors"
            ) from None
    if ERROR_TAG in value:
        if set(value) != {ERROR_TAG, "message"}:
            raise RefusedResult("stored error record has unexpected fields")
        return TaskFailure(f"{value[ERROR_TAG]}: {value['message']}")
    dunder = sorted(k for k in value if k.startswith("__"))
    if dunder:
        raise RefusedResult(f"stored result holds {dunder[0]!r}: not written by packft, refused")
    return {k: decode(v) for k, v in value.items()}


class PackftJSONSerializer(Serializer):
    """Prefect serializer ``packft-json``: JSON data plus allow-listed models (see module doc)."""

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(encode(obj), sort_keys=True).encode()

    def loads(self, blob: bytes) -> Any:
        try:
            data = json.loads(blob.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RefusedResult(f"stored result is not JSON ({exc.__class__.__name__})") from None
        return decode(data)


def check_record_bytes(content: bytes, expected: type[BaseModel] | None = None) -> None:
    """Accept a stored Prefect result record only if it is ours, through and through, and (when
    ``expected`` is given: the task's return type) holds that model, not an older shape of it.

    Raises:
        RefusedResult: not a JSON record, another serializer named, a refused payload, or a
            value that is not an ``expected``.
    """
    try:
        record = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RefusedResult("the record is not JSON (e.g. a pickle)") from None
    if not isinstance(record, dict) or not isinstance(record.get("metadata"), dict):
        raise RefusedResult("the record has no metadata")
    serializer = record["metadata"].get("serializer")
    kind = serializer.get("type") if isinstance(serializer, dict) else None
    if kind != SERIALIZER_TYPE or set(serializer) != {"type"}:
        raise RefusedResult(f"the record names serializer {kind!r}, not {SERIALIZER_TYPE!r}")
    payload = record.get("result")
    if not isinstance(payload, str):
        raise RefusedResult("the record's result is not serialized text")
    value = PackftJSONSerializer().loads(payload.encode())
    if expected is not None and not isinstance(value, expected):
        raise RefusedResult(
            f"the record holds a {type(value).__name__}, not a {expected.__name__} "
            "(a result of an older shape)"
        )


def vet_record(result_store: ResultStore, key: str, expected: type[BaseModel] | None = None) -> str:
    """Check the stored record of ``key`` before Prefect reads it; returns the key to use.

    ``expected`` is the task's return model (:func:`check_record_bytes`).

    A refused record is moved aside (``<file>.refused``) and ``key`` is returned, so the task
    computes and writes a good record there. Where the storage is not a local directory the
    record cannot be moved, and a fresh key is returned instead (the task computes).
    """
    import uuid

    storage = getattr(result_store, "result_storage", None)
    resolve = getattr(storage, "_resolve_path", None)
    if storage is None or resolve is None:
        return key
    try:
        path = resolve(key)
    except ValueError:
        return key
    if not getattr(path, "is_file", lambda: False)():
        return key
    try:
        check_record_bytes(path.read_bytes(), expected)
    except RefusedResult as refused:
        aside = path.with_name(path.name + ".refused")
        try:
            retire(path, aside)  # set aside whole, never read again
        except OSError:
            log.warning("cached result %s refused (%s); computing again", path, refused)
            return f"{key}-refused-{uuid.uuid4().hex[:12]}"
        log.warning("cached result %s refused (%s); moved to %s, computing again",
                    path, refused, aside.name)  # fmt: skip
    return key


def _allow_step_results() -> None:
    from packft.dataset.stats import DatasetStats
    from packft.preprocess import results
    from packft.train.summary import TrainSummary

    for model in (results.InputFile, results.TokenizerPin, results.RecordCounts,
                  results.ValidationResult, results.TokenizeResult, results.PlanResult,
                  DatasetStats, results.WriteResult, TrainSummary):  # fmt: skip
        allow(model)


_allow_step_results()
SERIALIZER = PackftJSONSerializer()
"""The serializer every persisted packft task uses."""
