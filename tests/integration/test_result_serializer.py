"""Cached task results are JSON of allow-listed models; a tampered record never runs code.

A real Prefect task (the harness API) persists its result with ``tasks.serializer``; then the
stored record is replaced by what an attacker with write access to ``.packft/`` would put there:
a pickle (under Prefect's own ``pickle`` serializer name), a Prefect ``json`` record whose
``__exc_type__``/``__class__`` names a callable, and a model name that is not allow-listed. Each
time the next run computes again (state Completed, not Cached), the smuggled payload's marker
file is never created, and the record is moved aside as ``<key>.refused``.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path

import pytest
from prefect import flow, task
from pydantic import BaseModel

from tasks.caching import FileRef, content_cache
from tasks.serializer import (
    SERIALIZER,
    PackftJSONSerializer,
    RefusedResult,
    TaskFailure,
    check_record_bytes,
)

CALLS: list[str] = []


class Smuggler:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@task(name="echo-ref", cache_key_fn=content_cache(), persist_result=True,
      result_serializer=SERIALIZER)  # fmt: skip
def echo_ref(name: str) -> dict:
    CALLS.append(name)
    return {"ref": FileRef(path=Path("/data") / name, sha256="ab" * 32), "n": len(name)}


@flow(name="echo-ref-flow")
def echo_flow(name: str, storage: Path) -> tuple[dict, str]:
    state = echo_ref.with_options(result_storage=storage)(name, return_state=True)
    return state.result(), state.name


# --- the serializer alone ---------------------------------------------------------------------


def test_models_round_trip_and_foreign_payloads_are_refused(tmp_path: Path) -> None:
    ser = PackftJSONSerializer()
    value = {"ref": FileRef(path=tmp_path / "a", sha256="0" * 64, size=3), "rows": [1, 2.5, None]}
    back = ser.loads(ser.dumps(value))
    assert back == value and isinstance(back["ref"], FileRef)
    failure = ser.loads(ser.dumps(ValueError("bad row 7")))
    assert isinstance(failure, TaskFailure) and "ValueError: bad row 7" in str(failure)
    marker = tmp_path / "MARKER"
    hostile = [
        pickle.dumps(Smuggler(marker)),
        json.dumps({"__exc_type__": "os.system", "message": f"touch {marker}"}).encode(),
        json.dumps({"__class__": "os.system", "data": f"touch {marker}"}).encode(),
        json.dumps(
            {"__packft_model__": "Popen", "data": {"args": ["touch", str(marker)]}}
        ).encode(),
        json.dumps({"x": [{"__packft_model__": "FileRef", "data": {"path": 1}}]}).encode(),
    ]
    for blob in hostile:
        with pytest.raises(RefusedResult):
            ser.loads(blob)
    assert not marker.exists()
    with pytest.raises(TypeError, match="not allow-listed"):
        ser.dumps({"x": RefusedModel()})


class RefusedModel(BaseModel):
    """A pydantic model nobody allow-listed."""


# --- a real Prefect task over a tampered result storage ---------------------------------------


def _record(storage: Path) -> Path:
    (path,) = [p for p in storage.iterdir() if not p.name.endswith(".refused")]
    return path


def _tamper(record: Path, kind: str, marker: Path) -> None:
    data = json.loads(record.read_bytes())
    if kind == "pickle":  # Prefect's own pickle serializer name, with a payload that runs code
        data["metadata"]["serializer"] = {"type": "pickle", "picklelib": "pickle"}
        data["result"] = base64.b64encode(pickle.dumps(Smuggler(marker))).decode()
    elif kind == "prefect-json":  # Prefect's json decoder imports and calls these names
        data["metadata"]["serializer"] = {"type": "json"}
        data["result"] = json.dumps({"__exc_type__": "os.system", "message": f"touch {marker}"})
    elif kind == "unknown-model":  # our serializer name, a model nobody allow-listed
        data["result"] = json.dumps({"__packft_model__": "Popen", "data": {"args": ["x"]}})
    elif kind == "raw-pickle":  # the whole file replaced by a pickle
        record.write_bytes(pickle.dumps(Smuggler(marker)))
        return
    record.write_text(json.dumps(data))


@pytest.mark.parametrize("kind", ["pickle", "prefect-json", "unknown-model", "raw-pickle"])
def test_tampered_cached_result_is_refused_and_recomputed(
    prefect_api: None, tmp_path: Path, kind: str
) -> None:
    storage, marker = tmp_path / "results", tmp_path / "MARKER"
    name = f"input-{kind}"
    CALLS.clear()
    first, state = echo_flow(name, storage)
    assert state == "Completed" and isinstance(first["ref"], FileRef)
    record = _record(storage)
    check_record_bytes(record.read_bytes())  # what we wrote is accepted
    assert json.loads(record.read_bytes())["metadata"]["serializer"] == {"type": "packft-json"}
    again, state = echo_flow(name, storage)
    assert state == "Cached" and again == first and [name] == CALLS

    _tamper(record, kind, marker)
    with pytest.raises(RefusedResult):
        check_record_bytes(record.read_bytes())
    third, state = echo_flow(name, storage)
    assert state == "Completed" and third == first and [name, name] == CALLS  # computed again
    assert not marker.exists()  # nothing in the file ran
    assert (record.parent / f"{record.name}.refused").exists()
    check_record_bytes(record.read_bytes())  # a good record is back under the key
    assert echo_flow(name, storage)[1] == "Cached"
