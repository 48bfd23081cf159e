"""The ``finetune`` flow runs the engine its config names: with ``engine: mindspeed`` the library
(:func:`packft.train.engine.train`, what the flow's task calls) launches MindSpeed-LLM's
``posttrain_gpt.py``, here a stand-in on PATH that records how it was started and prints loss
lines in Megatron's log format, which packft forwards to the trainer's MLflow run. A config the
engine cannot run with fails before anything is converted."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from packft.core.atomic import Stage
from packft.dataset.indexed import IndexedDatasetWriter, sft_prefix
from packft.pipeline_config import ConvertConfig, FinetuneConfig, RunOptions
from packft.train.config import TrainConfig

pytestmark = pytest.mark.slow

STAND_IN = '''\
"""Stand-in for MindSpeed-LLM's posttrain_gpt.py (run by torchrun like the real one)."""
import json, os, sys
with open({record!r}, "w") as out:
    json.dump({{"argv": sys.argv, "cwd": os.getcwd(),
               "env": {{k: os.environ.get(k) for k in
                       ("CUDA_DEVICE_MAX_CONNECTIONS", "RANK", "WORLD_SIZE", "LOCAL_RANK")}}}}, out)
iters = int(sys.argv[sys.argv.index("--train-iters") + 1])
for i in range(1, iters + 1):
    print(f" iteration {{i:8d}}/{{iters:8d}} | consumed samples: {{8 * i:12d}} | elapsed time per "
          f"iteration (ms): 40.0 | learning rate: 1.000000E-05 | global batch size:     8 | "
          f"lm loss: {{2.0 - 0.25 * i:.6E}} | loss scale: 1.0 | grad norm: 1.500 | number of "
          "skipped iterations:   0 |", flush=True)
'''


def install_stand_in(bin_dir: Path, record: Path) -> Path:
    bin_dir.mkdir()
    script = bin_dir / "posttrain_gpt.py"
    script.write_text(textwrap.dedent(STAND_IN).format(record=str(record)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def write_dataset(prefix: Path) -> None:
    prefix.parent.mkdir(parents=True)
    with Stage(prefix.parent) as stage:
        for key, seq in (("input_ids", [5, 6, 2, 0]), ("labels", [-100, 6, 2, -100]),
                         ("attention_mask", [1, 1, 1, 0])):  # fmt: skip
            with IndexedDatasetWriter(sft_prefix(prefix, key), stage) as writer:
                for _ in range(8):
                    writer.add(np.array(seq))
                writer.finalize()
        stage.commit()


def tiny_llama(path: Path) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def mindspeed_train(tmp_path: Path, tokenizer: Path, **kw: object) -> TrainConfig:
    base = dict(engine="mindspeed", data_path=str(tmp_path / "data" / "d"),
                save=str(tmp_path / "save"), tokenizer_name_or_path=str(tokenizer),
                prompt_type="llama2", seq_length=4, train_iters=3, global_batch_size=8,
                micro_batch_size=1, bf16=True)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_finetune_flow_with_engine_mindspeed_runs_posttrain(
    prefect_api: None, mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    llama2_tokenizer_dir: Path,
) -> None:  # fmt: skip
    from mlflow import MlflowClient

    from flows.finetune import finetune_flow

    record = tmp_path / "posttrain-call.json"
    script = install_stand_in(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    write_dataset(tmp_path / "data" / "d")
    model = tiny_llama(tmp_path / "model")
    train = mindspeed_train(tmp_path, llama2_tokenizer_dir, model=str(model))
    cfg = FinetuneConfig(train=train, run=RunOptions(work_dir=tmp_path / "work"))

    result = finetune_flow(config=cfg)

    call = json.loads(record.read_text())  # the MindSpeed command ran, not the native trainer
    argv = call["argv"]
    assert Path(argv[0]).resolve() == script.resolve() and call["cwd"] == str(script.parent)
    flag = {
        name: argv[argv.index(name) + 1] for name in ("--train-iters", "--load", "--prompt-type")
    }
    assert flag == {"--train-iters": "3", "--load": str(tmp_path / "save" / "mcore_init"),
                    "--prompt-type": "llama2"}  # fmt: skip
    assert {"--is-instruction-dataset", "--reset-attention-mask", "--finetune"} <= set(argv)
    assert call["env"] == {"CUDA_DEVICE_MAX_CONNECTIONS": "1", "RANK": "0", "WORLD_SIZE": "1",
                           "LOCAL_RANK": "0"}  # fmt: skip
    summary = result.train
    assert summary.engine == "mindspeed" and summary.returncode == 0
    assert (summary.steps, summary.first_loss, summary.final_loss) == (3, 1.75, 1.25)
    assert not (tmp_path / "save" / "checkpoints").exists()  # the native loop never started

    client = MlflowClient(tracking_uri=mlflow_uri)
    root = client.get_run(result.mlflow_run_id)
    runs = client.search_runs([root.info.experiment_id], "attributes.run_name = 'trainer'")
    trainer = max(runs, key=lambda r: r.info.start_time)
    losses = [m.value for m in client.get_metric_history(trainer.info.run_id, "train/loss")]
    assert losses == [1.75, 1.5, 1.25]  # each log line forwarded under the native name


def test_a_setting_the_engine_cannot_run_with_fails_before_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama2_tokenizer_dir: Path
) -> None:
    from flows.finetune import run_finetune

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no posttrain_gpt.py anywhere
    converted = tmp_path / "mcore"
    cfg = FinetuneConfig(
        convert=ConvertConfig(load_dir=str(tmp_path / "model"), save_dir=str(converted)),
        train=mindspeed_train(tmp_path, llama2_tokenizer_dir, load=str(converted),
                              loss_reduction="sample"),
        run=RunOptions(work_dir=tmp_path / "work", tracking=False),
    )  # fmt: skip
    with pytest.raises(ValueError, match="posttrain_gpt.py not found in PATH") as info:
        run_finetune(cfg)
    assert "--loss-reduction sample has no MindSpeed equivalent" in str(info.value)
    assert not converted.exists() and not (tmp_path / "work").exists()
