"""The pack-dataset flow end to end on real files, Prefect (harness) and MLflow (SQLite).

Task states are read back from the Prefect API (not only from the flow's own summary), so the
cache claims are checked against what Prefect recorded.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from packft.track import metric_names
from tests.helpers.orchestration import pack_config

pytestmark = pytest.mark.slow


def recorded_states(flow_run_id: str) -> Counter[str]:
    """'task-name:State' counts of a flow run and its subflows, as stored by the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        ids = [flow_run_id, *(str(c.id) for c in children)]
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200
        )
    return Counter(f"{r.name.rsplit('-', 1)[0]}:{r.state.name}" for r in runs)


def flow_artifacts(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_cache_then_incremental_change(
    prefect_api: None, mlflow_uri: str, fresh_inputs: list[Path], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from flows.pack_dataset import pack_dataset

    cfg = pack_config(fresh_inputs[0].parent, tmp_path)
    first = pack_dataset(config=cfg)
    assert first.changed and first.states["tokenize"] == ["Completed"] * 3
    prefix = Path(first.latest)
    for key in ("input_ids", "attention_mask", "labels"):
        assert Path(f"{prefix}_packed_{key}_document.bin").stat().st_size > 0
    assert first.stats.efficiency > 0.9
    sidecar = json.loads(Path(f"{first.prefix}.packft.json").read_text())
    assert sidecar["config"]["output_prefix"] == first.prefix  # not the temporary build dir

    second = pack_dataset(config=cfg)
    assert not second.changed and second.version == first.version
    assert "nothing changed" in second.headline
    recorded = recorded_states(second.flow_run_id)
    assert recorded == Counter(
        {"validate:Cached": 3, "tokenize:Cached": 3, "pack:Cached": 1, "write:Cached": 1,
         "download:Completed": 1, "quality-gate:Completed": 1, "publish:Completed": 1,
         "tokenize-shards:Completed": 1}  # the subflow's wrapper task run
    )  # fmt: skip

    rows = json.loads(fresh_inputs[1].read_text())
    new_row = {"instruction": "Name a prime.", "input": "", "output": "Seven is prime."}
    fresh_inputs[1].write_text(json.dumps(rows[5:] + [new_row]))  # 5 removed, 1 added
    third = pack_dataset(config=cfg)
    assert third.states["tokenize"] == ["Cached", "Completed", "Cached"]
    assert third.states["validate"] == ["Cached", "Completed", "Cached"]
    assert third.states["pack"] == ["Completed"] and third.states["write"] == ["Completed"]
    assert third.changed and third.version != first.version
    assert third.diff["samples_added"] == 1 and third.diff["samples_removed"] == 5
    assert third.diff["samples_before"] == 180 and third.diff["samples_after"] == 176
    assert Path(third.latest).parent.resolve() == Path(third.version).resolve()
    (artifact,) = flow_artifacts(third.flow_run_id)
    assert artifact.key == "pack-dataset-summary" and artifact.type == "markdown"
    assert "| efficiency |" in artifact.data and third.latest in artifact.data
    assert third.mlflow_run_id in artifact.data

    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(third.mlflow_run_id)
    assert run.data.tags["prefect.flow_run_id"] == third.flow_run_id
    assert run.data.tags["prefect.deployment"] == "none"
    assert run.data.params["preprocess.seq_length"] == "512"
    assert run.data.metrics["data/seq_utilization"] == pytest.approx(third.stats.efficiency)
    assert run.data.metrics["data/samples_removed"] == 5
    assert run.data.params["stats.lower_bound_rows"] == str(third.stats.lower_bound_rows)
    # only the named data/ and publish/ figures are metrics; every other number is a param
    assert set(run.data.metrics) <= {*metric_names.DATA.values(), *metric_names.PUBLISH.values()}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/sample_lengths.png", "plots/row_fill.png"}
    digests = {i.dataset.digest for i in run.inputs.dataset_inputs}
    assert len(digests) == 3
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    stages = {c.info.run_name: c for c in children}
    assert set(stages) == {"validate", "tokenize", "pack", "publish"}
    assert stages["validate"].data.metrics["data/samples_valid"] == 176
    assert stages["tokenize"].data.metrics["data/samples_valid"] == 176
    assert stages["tokenize"].data.params["stats.written"] == "176"


def test_dead_tracking_server_does_not_fail_the_flow(
    prefect_api: None, fresh_inputs: list[Path], tmp_path: Path, caplog
) -> None:
    from flows.pack_dataset import pack_dataset
    from packft.track.tracking_link import TrackingUnavailable

    cfg = pack_config(fresh_inputs[0], tmp_path)
    dead = cfg.run.model_copy(update={"tracking_uri": "http://127.0.0.1:1/flow"})
    with caplog.at_level("WARNING", logger="packft.track.tracking"):
        summary = pack_dataset(config=cfg.model_copy(update={"run": dead}))
    assert summary.changed and summary.stats.valid == 60 and summary.mlflow_run_id is None
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "packft.track.tracking"]
    assert "unreachable" in warning and "Prefect artifact" in warning
    required = dead.model_copy(update={"tracking_required": True})
    with pytest.raises(TrackingUnavailable, match="tracking is required"):
        pack_dataset(config=cfg.model_copy(update={"run": required}))


def test_failed_run_resumes_from_cache(
    prefect_api: None, mlflow_uri: str, fresh_inputs: list[Path], tmp_path: Path
) -> None:
    from flows.pack_dataset import pack_dataset

    cfg = pack_config(fresh_inputs[0].parent, tmp_path, seq_length=384)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"tracking": False})})
    blocker = cfg.output_root / "versions"
    blocker.write_text("not a directory: the write step must fail")
    failed = pack_dataset(config=cfg, return_state=True)
    assert failed.is_failed()
    blocker.unlink()
    resumed = pack_dataset(config=cfg)
    assert resumed.states["tokenize"] == ["Cached"] * 3
    assert resumed.states["validate"] == ["Cached"] * 3
    assert resumed.states["pack"] == ["Cached"]
    assert resumed.states["write"] == ["Completed"]
    assert resumed.mlflow_run_id is None  # tracking off: NullTracker all the way


def test_corrupt_cached_shard_and_plan_are_rebuilt_not_reused(
    prefect_api: None, fresh_inputs: list[Path], tmp_path: Path
) -> None:
    from flows.pack_dataset import pack_dataset
    from packft.dataset.integrity import check_seal, open_verified

    cfg = pack_config(fresh_inputs[0].parent, tmp_path, seq_length=448)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"tracking": False})})
    first = pack_dataset(config=cfg)
    shard = sorted((tmp_path / "work").rglob("*.arrow"))[0]
    plan = next((tmp_path / "work").rglob("plans/*.npz"))
    for path in (shard, plan):  # flip one byte in the middle of each cached file
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    second = pack_dataset(config=cfg)
    assert sorted(second.states["tokenize"]) == ["Cached", "Cached", "Completed"]
    assert second.states["pack"] == ["Completed"] and second.states["write"] == ["Cached"]
    assert not second.changed and second.version == first.version
    assert check_seal(shard) is None and check_seal(plan) is None  # rebuilt, intact again
    open_verified(second.latest, full=True)  # the published set was never touched


def test_invalid_record_fails_without_retry(
    prefect_api: None, mlflow_uri: str, tmp_path: Path
) -> None:
    from flows.pack_dataset import pack_dataset

    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"instruction": "hi", "input": "", "output": ""}]))
    cfg = pack_config(data, tmp_path, on_invalid="fail")
    state = pack_dataset(config=cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="empty_answer"):
        state.result()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    validate_runs = [r for r in runs if r.name.startswith("validate")]
    assert len(validate_runs) == 1 and validate_runs[0].run_count == 1
    assert validate_runs[0].state.name == "Failed"


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` GETs, then serves ``payload``."""

    payload = b""
    failures = 2
    seen = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_download_retries_then_refetches(
    prefect_api: None, mlflow_uri: str, small_inputs: list[Path], tmp_path: Path
) -> None:
    from flows.pack_dataset import pack_dataset

    FlakyHandler.payload = small_inputs[0].read_bytes()
    FlakyHandler.seen = 0
    with serving(FlakyHandler) as base:
        cfg = pack_config(f"{base}/data/part0.json", tmp_path)
        first = pack_dataset(config=cfg)
        assert FlakyHandler.seen == 3  # two 503s, then the file
        assert first.states["download"] == ["Completed"] and first.stats.valid == 60
        nightly = cfg.model_copy(
            update={"run": cfg.run.model_copy(update={"refresh_sources": True})}
        )
        second = pack_dataset(config=nightly)
        assert FlakyHandler.seen == 4  # re-fetched, same bytes
        assert not second.changed and second.states["tokenize"] == ["Cached"]


def test_retry_policy_classifies_errors() -> None:
    from packft.ingest.download import ChecksumMismatchError, DownloadError, HubUnavailableError
    from packft.ingest.rejects import InvalidRecordError
    from tasks.ingest import is_transient

    # what packft.ingest.download raises after its in-call retries ran out on 5xx/timeouts/resets
    assert is_transient(DownloadError("giving up after 6 failed attempts", transient=True))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(DownloadError("http://x/a.json: HTTP 404 Not Found (check the URL)"))
    assert not is_transient(ChecksumMismatchError("sha256 mismatch"))
    assert not is_transient(HubUnavailableError("cannot fetch hf://datasets/a/b"))
    assert not is_transient(FileNotFoundError("missing.json"))
    assert not is_transient(
        InvalidRecordError("a.json:3: empty_answer", "a.json", 3, "empty_answer", "")
    )
    assert not is_transient(None)


class StatusOnceHandler(FlakyHandler):
    """Answers ``status`` to the first ``failures`` GETs, then serves the file."""

    status = 404

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            self.send_response(type(self).status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)


def _download_once(url: str, cache: Path) -> tuple[Any, BaseException | None, int]:
    """Run the download task (no retry delay) in a flow: (result, error, task run count)."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.ingest import download

    @flow
    def fetch_once() -> Any:
        fast = download.with_options(retry_delay_seconds=0)  # same retries and retry condition
        state = fast(url, cache, return_state=True)
        try:  # unwrap here: a failed state returned by the flow would fail the flow itself
            return state.result(), None, state.state_details.task_run_id
        except Exception as error:
            return None, error, state.state_details.task_run_id

    result, error, task_run_id = fetch_once()
    with get_client(sync_client=True) as client:
        run = client.read_task_run(task_run_id)
    return result, error, run.run_count


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 for the block; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [404, 403])
def test_download_does_not_retry_client_errors(
    prefect_api: None, small_inputs: list[Path], tmp_path: Path, status: int
) -> None:
    StatusOnceHandler.payload = small_inputs[0].read_bytes()
    StatusOnceHandler.status, StatusOnceHandler.failures, StatusOnceHandler.seen = status, 1, 0
    with serving(StatusOnceHandler) as base:
        result, error, run_count = _download_once(f"{base}/part0.json", tmp_path / "cache")
    assert result is None and f"HTTP {status}" in str(error)
    assert run_count == 1 and StatusOnceHandler.seen == 1


def test_download_task_level_retry_on_server_errors(
    prefect_api: None, small_inputs: list[Path], tmp_path: Path, monkeypatch
) -> None:
    """503s that outlast packft.ingest.download's own retries fail the attempt; the task retries."""
    from packft.ingest.download import fetch_url

    # one in-call retry without backoff, so the first task attempt gives up after 2 GETs
    monkeypatch.setitem(fetch_url.__kwdefaults__, "retries", 1)
    monkeypatch.setitem(fetch_url.__kwdefaults__, "backoff", 0.0)
    StatusOnceHandler.payload = small_inputs[0].read_bytes()
    StatusOnceHandler.status, StatusOnceHandler.failures, StatusOnceHandler.seen = 503, 2, 0
    with serving(StatusOnceHandler) as base:
        url = f"{base}/part0.json"
        result, error, run_count = _download_once(url, tmp_path / "cache")
    assert error is None
    (ref,) = result
    assert ref.path.read_bytes() == StatusOnceHandler.payload and ref.source == url
    assert run_count == 2 and StatusOnceHandler.seen == 3


def test_quality_gate_fails_the_run_before_anything_is_written(
    prefect_api: None, mlflow_uri: str, fresh_inputs: list[Path], tmp_path: Path
) -> None:
    from flows.pack_dataset import pack_dataset
    from packft.ingest.quality import QualityGateError

    cfg = pack_config(fresh_inputs[0].parent, tmp_path)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"tracking": False})})
    first = pack_dataset(config=cfg)
    latest = (cfg.output_root / "latest").resolve()
    versions = sorted(p.name for p in (cfg.output_root / "versions").iterdir())
    shards = sorted(p.name for p in (cfg.run.work_path / "shards").iterdir())
    bad = {"instruction": "q", "input": "", "output": " "}
    for path in fresh_inputs[1:]:  # 2 of 3 files now hold only invalid records: 60 of 180 valid
        path.write_text(json.dumps([bad] * 60))
    state = pack_dataset(config=cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(QualityGateError, match=r"only 60 of 180 records are valid .* "
                       r"rejected: empty_answer 120"):  # fmt: skip
        state.result()
    # the API records task states from events, a bit later and in no fixed order: wait for all
    deadline = time.monotonic() + 60
    while True:
        recorded = recorded_states(str(state.state_details.flow_run_id))
        done = recorded["quality-gate:Failed"] == 1 and recorded["validate:Completed"] == 2
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert recorded["quality-gate:Failed"] == 1 and recorded["validate:Completed"] == 2
    assert sorted(p.name for p in (cfg.run.work_path / "shards").iterdir()) == shards
    assert not any(
        key.split(":")[0] in ("tokenize", "pack", "write", "publish") for key in recorded
    )
    assert (cfg.output_root / "latest").resolve() == latest == Path(first.version).resolve()
    assert sorted(p.name for p in (cfg.output_root / "versions").iterdir()) == versions
