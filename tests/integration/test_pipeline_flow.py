"""The pipeline flow (pack-dataset -> finetune) on a small embedded default, then fully cached."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_pipeline_trains_on_the_packed_version(
    prefect_api: None, mlflow_uri: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from flows.demo import demo_config, make_tiny_llama
    from flows.pipeline import pipeline
    from packft.synthetic import make_demo_data, train_demo_tokenizer

    alpaca, sharegpt = make_demo_data(tmp_path / "data", n_alpaca=300, n_sharegpt=100)
    tokenizer = train_demo_tokenizer([alpaca, sharegpt], tmp_path / "tokenizer", vocab_size=1024)
    model = make_tiny_llama(tmp_path / "model-init", tokenizer)
    paths = {"alpaca": alpaca, "sharegpt": sharegpt, "tokenizer": tokenizer, "model": model}
    overrides = demo_config(tmp_path, paths, train_iters=3)
    overrides["train"]["global_batch_size"] = 4
    overrides["run"]["work_dir"] = str(tmp_path / "work")

    first = pipeline(overrides=overrides)
    pack, tune = first.pack, first.finetune
    assert pack.changed and pack.stats.rejected_total == 7  # the planted bad records
    assert len(Path(f"{pack.prefix}.rejects.jsonl").read_text().splitlines()) == 7
    assert tune.train.steps == 3 and tune.states["finetune"] == "Completed"
    assert Path(tune.exported.mcore, "latest_checkpointed_iteration.txt").is_file()
    assert Path(tune.exported.hf, "config.json").is_file()

    client = MlflowClient(tracking_uri=mlflow_uri)
    root = client.get_run(first.mlflow_run_id)
    runs = client.search_runs([root.info.experiment_id])
    by_id = {r.info.run_id: r for r in runs}

    def path_of(run) -> str:
        names = [run.info.run_name]
        while (parent := run.data.tags.get("mlflow.parentRunId")) in by_id:
            run = by_id[parent]
            names.append(run.info.run_name)
        return "/".join(reversed(names[:-1]))

    paths_seen = {path_of(r) for r in runs if r.info.run_id != root.info.run_id}
    pack_run = next(r for r in runs if r.info.run_id == pack.mlflow_run_id)
    tune_run = next(r for r in runs if r.info.run_id == tune.mlflow_run_id)
    p, t = pack_run.info.run_name, tune_run.info.run_name
    assert {f"{p}/tokenize", f"{p}/pack", f"{t}/train", f"{t}/train/trainer"} <= paths_seen
    trainer = next(r for r in runs if path_of(r) == f"{t}/train/trainer")
    assert len(client.get_metric_history(trainer.info.run_id, "train/loss")) == 3
    assert trainer.data.params["data_path"] == pack.prefix  # trained on the version written
    # the top-level run: headline figures, the loss curve and the loss/lr plot
    assert set(root.data.metrics) == {
        "data/seq_utilization", "data/samples_in", "data/samples_valid", "data/samples_rejected",
        "train/final_loss", "train/mean_tokens_per_s", "run/seconds", "train/loss",
    }  # fmt: skip
    assert root.data.metrics["data/samples_rejected"] == 7
    assert root.data.metrics["train/final_loss"] == pytest.approx(tune.train.final_loss)
    assert [m.step for m in client.get_metric_history(root.info.run_id, "train/loss")] == [1, 2, 3]
    assert [a.path for a in client.list_artifacts(root.info.run_id, "plots")] == [
        "plots/loss_lr.png"
    ]

    again = pipeline(overrides=overrides)
    assert not again.pack.changed
    assert again.finetune.states == {
        "convert_checkpoint": "Cached", "finetune": "Cached", "export": "Cached"
    }  # fmt: skip
