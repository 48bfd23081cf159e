"""Typed joins: every task and flow declares a typed result, the typed results survive the
result serializer, and a stored result of an older shape is recomputed, never handed on."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from prefect import flow, task

from flows.results import FinetuneRunResult, PackRunResult, PipelineRunResult
from packft.dataset.stats import DatasetStats
from packft.preprocess.results import RecordCounts, WriteResult
from packft.train.summary import TrainSummary
from tasks.caching import content_cache
from tasks.results import ExportResult, PublishedVersion
from tasks.serializer import SERIALIZER, RefusedResult, check_record_bytes

REPO = Path(__file__).resolve().parents[2]
UNTYPED = {"Any", "dict", "Dict", "dict[str, Any]", "Dict[str, Any]", "Mapping[str, Any]", "object"}


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def orchestrated_functions() -> list[tuple[str, ast.FunctionDef]]:
    """Every ``@task``/``@flow`` function of ``tasks/`` and ``flows/``."""
    found = []
    for path in sorted([*(REPO / "tasks").glob("*.py"), *(REPO / "flows").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                _decorator_name(d) in ("task", "flow") for d in node.decorator_list
            ):
                found.append((f"{path.relative_to(REPO)}::{node.name}", node))
    return found


def test_every_task_and_flow_returns_a_typed_result() -> None:
    functions = orchestrated_functions()
    names = {name.split("::")[1] for name, _ in functions}
    assert {"publish", "finetune", "export", "pipeline", "pack_dataset", "finetune_flow"} <= names
    untyped = {
        name: ast.unparse(node.returns) if node.returns else None
        for name, node in functions
        if node.returns is None or ast.unparse(node.returns) in UNTYPED
    }
    assert untyped == {}


def _stats() -> DatasetStats:
    return DatasetStats(seq_length=512, rows=3, items=7, total_tokens=1400, efficiency=0.91,
                        samples_per_row_histogram={"2": 2, "3": 1}, samples_in=9, valid=7,
                        rejected={"empty_answer": 2}, rejected_total=2)  # fmt: skip


def typed_results() -> list[object]:
    train = TrainSummary.of({"steps": 3, "first_loss": 2.5, "final_loss": 1.25, "valid_loss": None,
                             "tokens_per_s": 812.5, "checkpoint": "/s/hf", "world_size": 1,
                             "device": "cpu"})  # fmt: skip
    exported = ExportResult(hf="/s/hf", mcore="/s/mcore")
    pack = PackRunResult(
        headline="dataset changed", changed=True, version="/o/versions/v1", prefix="/o/v1/ds",
        latest="/o/latest/ds", stats=_stats(), diff={"samples_added": 7}, states={"pack": ["Cached"]},
        validation=RecordCounts(total=9, valid=7, rejected={"empty_answer": 2}),
        mlflow_run_id=None, flow_run_id="f", seconds=1.5,
    )  # fmt: skip
    tune = FinetuneRunResult(train=train, exported=exported, states={"finetune": "Completed"},
                             mlflow_run_id="r", seconds=9.0)  # fmt: skip
    published = PublishedVersion(current="v2", previous="v1", changed=True, pruned=["v0"],
                                 diff={"samples_removed": 1}, gate={"passed": True},
                                 latest="/o/latest")  # fmt: skip
    return [
        published,
        train,
        TrainSummary.of({"steps": 3, "engine": "mindspeed", "returncode": 0}),
        exported,
        ExportResult(hf="/s/hf"),
        WriteResult(version=Path("/o/versions/v1"), prefix=Path("/o/versions/v1/ds"), stats=_stats()),
        pack,
        tune,
        PipelineRunResult(pack=pack, finetune=tune, mlflow_run_id="p", seconds=10.5),
    ]  # fmt: skip


@pytest.mark.parametrize("value", typed_results(), ids=lambda v: type(v).__name__)
def test_typed_results_round_trip_through_the_serializer(value: object) -> None:
    back = SERIALIZER.loads(SERIALIZER.dumps(value))
    assert type(back) is type(value) and back == value


def test_train_summary_keeps_the_engine_mapping() -> None:
    native = {"steps": 3, "first_loss": 2.5, "final_loss": float("nan"), "valid_loss": None,
              "tokens_per_s": None, "checkpoint": "/s/hf", "world_size": 2, "device": "cpu"}  # fmt: skip
    figures = TrainSummary.of(native).figures()
    assert list(figures) == list(native) and figures["final_loss"] != figures["final_loss"]
    back = SERIALIZER.loads(SERIALIZER.dumps(TrainSummary.of(native)))
    assert back.final_loss != back.final_loss  # a diverged (NaN) loss is kept, not nulled
    ms = {"steps": 3, "first_loss": 1.75, "final_loss": 1.25, "tokens_per_s": None,
          "checkpoint": "/s/mindspeed", "engine": "mindspeed", "returncode": 0}  # fmt: skip
    assert TrainSummary.of(ms).figures() == {**ms, "valid_loss": None}
    with pytest.raises(ValueError, match="unknown_key"):
        TrainSummary.of({**ms, "unknown_key": 1})


def test_publish_result_keeps_its_mapping() -> None:
    published = typed_results()[0]
    assert list(published.model_dump()) == [
        "current", "previous", "changed", "pruned", "diff", "gate", "latest"
    ]  # fmt: skip


CALLS: list[str] = []


@task(name="typed-export", cache_key_fn=content_cache(), persist_result=True,
      result_serializer=SERIALIZER)  # fmt: skip
def typed_export(name: str) -> ExportResult:
    CALLS.append(name)
    return ExportResult(hf=f"/w/{name}")


@flow(name="typed-export-flow")
def typed_export_flow(name: str, storage: Path) -> tuple[ExportResult, str]:
    state = typed_export.with_options(result_storage=storage)(name, return_state=True)
    return state.result(), state.name


def test_stored_result_of_an_older_shape_is_recomputed(prefect_api: None, tmp_path: Path) -> None:
    storage = tmp_path / "results"
    CALLS.clear()
    first, state = typed_export_flow("m", storage)
    assert state == "Completed" and first == ExportResult(hf="/w/m")
    assert typed_export_flow("m", storage) == (first, "Cached") and CALLS == ["m"]
    (record,) = storage.iterdir()
    data = json.loads(record.read_bytes())
    data["result"] = json.dumps({"hf": "/w/m"})  # what export stored before it was typed
    record.write_text(json.dumps(data))
    with pytest.raises(RefusedResult, match="older shape"):
        check_record_bytes(record.read_bytes(), ExportResult)
    again, state = typed_export_flow("m", storage)
    assert state == "Completed" and again == first and CALLS == ["m", "m"]  # computed again
    assert (record.parent / f"{record.name}.refused").exists()
    check_record_bytes(record.read_bytes(), ExportResult)
