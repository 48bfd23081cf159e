"""The publish gate in the real pack-dataset flow (Prefect test server, MLflow SQLite).

One good version is published; then an efficiency regression and a >20% sample loss are each
refused (flow run Failed, ``latest`` unchanged, the diff in MLflow and in a Prefect artifact, both
read back); then the override publishes the refused version without rebuilding it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.orchestration import pack_config

pytestmark = pytest.mark.slow


def flow_artifacts(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def mlflow_run_of(client: Any, flow_run_id: str) -> Any:
    """The MLflow run a Prefect flow run recorded (found by its tag, as a user would)."""
    experiment = client.get_experiment_by_name("pack-dataset")
    (run,) = client.search_runs(
        [experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    )
    return run


def publish_stage(client: Any, run: Any) -> Any:
    (stage,) = client.search_runs(
        [run.info.experiment_id],
        f"tags.mlflow.parentRunId = '{run.info.run_id}' and tags.`packft.stage` = 'publish'",
    )
    return stage


def assert_refused(state: Any, client: Any, latest: Path, good: str, tmp_path: Path) -> dict:
    """Failed run, latest unchanged, diff in MLflow and the Prefect artifact: returns the diff."""
    from packft.dataset.publish_gate import PublishRefused

    assert state.is_failed()
    with pytest.raises(PublishRefused) as info:
        state.result()
    refused = info.value
    assert os.readlink(latest) == good and (latest / "VERSION.json").is_file()
    assert Path(refused.version).is_dir() and Path(refused.version).name != Path(good).name
    assert refused.version in str(refused) and "force_publish" in str(refused)

    flow_run_id = str(state.state_details.flow_run_id)
    run = mlflow_run_of(client, flow_run_id)
    assert run.info.status == "FAILED" and run.data.tags["packft.publish"] == "refused"
    assert run.data.tags["packft.unpublished_version"] == Path(refused.version).name
    assert run.data.metrics["data/samples_removed"] == refused.diff["samples_removed"]
    assert int(run.data.params["diff.samples_before"]) == refused.diff["samples_before"]
    stage = publish_stage(client, run)
    assert stage.data.metrics["publish/published"] == 0
    assert stage.data.metrics["publish/gate_passed"] == 0
    saved = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "publish_refused.json", tmp_path)
        ).read_text()
    )
    assert saved["diff"] == refused.diff and saved["gate"]["problems"] == refused.verdict.problems

    artifacts = [a for a in flow_artifacts(flow_run_id) if a.key]  # not Prefect's state record
    assert [(a.key, a.type) for a in artifacts] == [("pack-dataset-publish-refused", "markdown")]
    artifact = artifacts[0]
    assert refused.version in artifact.data and "force_publish" in artifact.data
    assert f"| diff: samples_removed | {refused.diff['samples_removed']} |" in artifact.data
    assert run.info.run_id in artifact.data
    return {"diff": refused.diff, "problems": refused.verdict.problems, "version": refused.version,
            "mlflow": run, "stage": stage}  # fmt: skip


def test_gate_refuses_regressions_and_the_override_publishes(
    prefect_api: None, mlflow_uri: str, fresh_inputs: list[Path], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from flows.pack_dataset import pack_dataset

    client = MlflowClient(tracking_uri=mlflow_uri)
    cfg = pack_config(fresh_inputs[0].parent, tmp_path)
    latest = cfg.output_root / "latest"
    first = pack_dataset(config=cfg)
    assert first.changed and first.stats.valid == 180
    good = os.readlink(latest)

    # same samples, packed in input order: ~21 points less efficient (0.98 -> 0.77)
    sequential = cfg.preprocess.model_copy(update={"pack_algorithm": "sequential"})
    state = pack_dataset(
        config=cfg.model_copy(update={"preprocess": sequential}), return_state=True
    )
    refused = assert_refused(state, client, latest, good, tmp_path / "a")
    assert refused["diff"]["samples_removed"] == 0 and len(refused["problems"]) == 1
    assert "efficiency falls from" in refused["problems"][0]
    assert refused["stage"].data.metrics["publish/efficiency_drop"] > 0.05

    # two of the three files cut to 5 records each: 110 of 180 samples gone
    for path in fresh_inputs[1:]:
        path.write_text(json.dumps(json.loads(path.read_text())[:5]))
    state = pack_dataset(config=cfg, return_state=True)
    refused = assert_refused(state, client, latest, good, tmp_path / "b")
    assert refused["diff"]["samples_removed"] == 110 and refused["diff"]["samples_before"] == 180
    assert "removes 110 of 180 samples (61.1% > max_removed_fraction 20%)" in refused["problems"]
    assert refused["stage"].data.metrics["publish/removed_fraction"] == pytest.approx(110 / 180)

    # the override publishes exactly the refused version (not rebuilt) and says it was forced
    forced_run = cfg.run.model_copy(update={"force_publish": True})
    forced = pack_dataset(config=cfg.model_copy(update={"run": forced_run}))
    assert forced.changed and forced.version == refused["version"]
    assert forced.states["write"] == ["Cached"]
    assert latest.resolve() == Path(refused["version"]).resolve()
    run = client.get_run(forced.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["packft.publish"] == "forced"
    assert run.data.metrics["data/samples_removed"] == 110
    (artifact,) = flow_artifacts(forced.flow_run_id)
    assert "FORCED past: removes 110 of 180 samples" in artifact.data
