"""Every shipped deployment and parameter file loads into its typed flow config (no server)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import yaml

from packft.core.errors import ConfigError
from packft.pipeline_config import (
    FinetuneConfig,
    PackDatasetConfig,
    PipelineConfig,
    load_flow_config,
)

REPO = Path(__file__).resolve().parents[2]
MODELS = {"pack-dataset": PackDatasetConfig, "pipeline": PipelineConfig, "finetune": FinetuneConfig}
FLOW_OF_ENTRYPOINT = {
    "flows/pack_dataset.py:pack_dataset": "pack-dataset",
    "flows/pipeline.py:pipeline": "pipeline",
    "flows/finetune.py:finetune_flow": "finetune",
}


def deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def test_prefect_yaml_shape() -> None:
    data = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert not {"pull", "push", "build"} & set(data), "a pull step would pin one checkout path"
    names = {f"{FLOW_OF_ENTRYPOINT[d['entrypoint']]}/{d['name']}" for d in data["deployments"]}
    assert {"pack-dataset/manual", "pipeline/manual", "pack-dataset/nightly-repack"} <= names
    for entry in data["deployments"]:
        assert entry["work_pool"]["name"] == "packft-process"
        assert (REPO / entry["parameters"]["config_file"]).is_file()
    (nightly,) = [d for d in data["deployments"] if d["name"] == "nightly-repack"]
    (schedule,) = nightly["schedules"]
    assert schedule["cron"].split()[2:] == ["*", "*", "*"] and schedule["timezone"]
    assert nightly["concurrency_limit"] == 1


@pytest.mark.parametrize("entry", deployments(), ids=lambda d: f"{d['entrypoint']}:{d['name']}")
def test_parameter_file_loads(entry: dict, tmp_path: Path) -> None:
    flow_name = FLOW_OF_ENTRYPOINT[entry["entrypoint"]]
    overrides: dict = {}
    if flow_name != "finetune":  # keep the test from creating dirs in the checkout
        overrides = {"preprocess": {"output_prefix": str(tmp_path / "ds" / "demo")}}
    cfg = load_flow_config(MODELS[flow_name], REPO / entry["parameters"]["config_file"], overrides)
    if isinstance(cfg, PackDatasetConfig | PipelineConfig):
        assert cfg.preprocess.pack and cfg.preprocess.seq_length
        assert len(cfg.preprocess.input) > 0
    if isinstance(cfg, PipelineConfig):
        assert cfg.train.data_path == str(tmp_path / "ds" / "latest" / "demo")
        assert cfg.train.seq_length == cfg.preprocess.seq_length
        assert cfg.train.load == cfg.convert.save_dir


def test_bad_overrides_list_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_flow_config(
            PackDatasetConfig,
            REPO / "deployments/pack-dataset-manual.yaml",
            {
                "preprocess": {"output_prefix": str(tmp_path / "x"), "prompt_type": "nope"},
                "run": {"parallel": 0, "task_runner": "spark"},
            },
        )
    text = str(info.value)
    assert "nope" in text and "parallel" in text and "task_runner" in text


def test_serve_entry_point_matches_prefect_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prefect's flow loader adds <repo>/flows to sys.path and installs its own root log
    # handlers: both are put back so no later test runs in a changed process.
    monkeypatch.setattr(sys, "path", [str(REPO / "deployments"), *sys.path])
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    import serve

    built = serve.build_deployments(serve.read_deployments())
    assert [(d.flow_name, d.name) for d in built] == [
        (FLOW_OF_ENTRYPOINT[e["entrypoint"]], e["name"]) for e in deployments()
    ]
    nightly = next(d for d in built if d.name == "nightly-repack")
    assert nightly.schedules[0].schedule.timezone == "Europe/Berlin"
    assert nightly.parameters["config_file"].endswith("nightly-repack.yaml")


def test_flow_cli_uses_the_preprocess_flags() -> None:
    from flows.cli import parse_flow_args
    from packft.pipeline_config import RunOptions
    from packft.preprocess.config import PreprocessConfig

    sections = {"preprocess": PreprocessConfig, "run": RunOptions}
    config_file, overrides = parse_flow_args(
        "pack",
        ["x.yaml", "--seq-length", "1024", "--neat-pack", "--parallel", "3",
         "--task-runner", "dask", "--set", "more_inputs=[]", "--set", "run.experiment=nightly"],
        sections,
    )  # fmt: skip
    assert config_file == Path("x.yaml")
    assert overrides == {
        "preprocess": {"seq_length": 1024, "neat_pack": True},
        "run": {"parallel": 3, "task_runner": "dask", "experiment": "nightly"},
        "more_inputs": [],
    }


@pytest.mark.parametrize(
    "entry",
    [d for d in deployments() if FLOW_OF_ENTRYPOINT[d["entrypoint"]] != "finetune"],
    ids=lambda d: f"{d['entrypoint']}:{d['name']}",
)
def test_no_parameter_file_switches_the_publish_gate_off(entry: dict, tmp_path: Path) -> None:
    """``force_publish`` is a one-run override; in a file it would disable the gate every night."""
    flow_name = FLOW_OF_ENTRYPOINT[entry["entrypoint"]]
    overrides = {"preprocess": {"output_prefix": str(tmp_path / "ds" / "demo")}}
    cfg = load_flow_config(MODELS[flow_name], REPO / entry["parameters"]["config_file"], overrides)
    assert not cfg.run.force_publish and "force_publish" not in str(entry["parameters"])
    assert cfg.run.max_removed_fraction <= 0.2 and cfg.run.max_efficiency_drop <= 0.05
