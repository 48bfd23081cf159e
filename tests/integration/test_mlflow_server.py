"""The pack flow against a real ``mlflow server``, read back through its REST API."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.orchestration import pack_config

pytestmark = pytest.mark.slow


def rest(base: str, endpoint: str, body: dict[str, Any] | None = None, **query: str) -> Any:
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def test_pack_flow_logs_to_mlflow_server(
    mlflow_server_process: tuple,  # first: starts while the Prefect harness starts
    prefect_api: None,
    mlflow_server: str,
    small_inputs: list[Path],
    tmp_path: Path,
) -> None:
    from flows.pack_dataset import pack_dataset

    cfg = pack_config(small_inputs[0], tmp_path)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"tracking_uri": mlflow_server})})
    summary = pack_dataset(config=cfg)

    exp = rest(mlflow_server, "experiments/get-by-name", experiment_name="pack-dataset")
    exp_id = exp["experiment"]["experiment_id"]
    run = rest(mlflow_server, "runs/get", run_id=summary.mlflow_run_id)["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["preprocess.prompt_type"] == "llama2" and params["preprocess.seq_length"] == "512"
    assert metrics["data/seq_utilization"] == pytest.approx(summary.stats.efficiency)
    assert metrics["data/rows"] == summary.stats.rows and metrics["data/samples_valid"] == 60
    assert tags["prefect.flow_run_id"] == summary.flow_run_id
    (dataset,) = run["inputs"]["dataset_inputs"]
    assert dataset["dataset"]["digest"] and dataset["dataset"]["source_type"] == "local"

    listed = rest(mlflow_server, "artifacts/list", run_id=run["info"]["run_id"], path="plots")
    assert {f["path"] for f in listed["files"]} == {
        "plots/sample_lengths.png",
        "plots/row_fill.png",
    }

    children = rest(
        mlflow_server,
        "runs/search",
        {"experiment_ids": [exp_id],
         "filter": f"tags.mlflow.parentRunId = '{run['info']['run_id']}'"},
    )["runs"]  # fmt: skip
    assert {c["info"]["run_name"] for c in children} == {"validate", "tokenize", "pack", "publish"}
