"""`--engine mindspeed`: the posttrain_gpt.py command for the same config, and parsing of Megatron
training-log lines (written here in Megatron's format) into tracker metrics. The end-to-end test
launches a stand-in posttrain_gpt.py under torchrun that prints such lines; no real MindSpeed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from packft.core.atomic import Stage
from packft.dataset.indexed import IndexedDatasetWriter, sft_prefix
from packft.train import mindspeed
from packft.train.config import TrainConfig
from packft.train.engine import train

LOG = """\
> building PretrainedFromHF tokenizer ...
[before the start of training step] datetime: 2026-11-28 05:00:00
 iteration        1/       3 | consumed samples:            8 | elapsed time per iteration (ms): 4210.5 | throughput per GPU (TFLOP/s/GPU): 101.2 | learning rate: 1.000000E-05 | global batch size:     8 | lm loss: 1.734512E+00 | loss scale: 1.0 | grad norm: 12.345 | number of skipped iterations:   0 | number of nan iterations:   0 |
[Rank 0] (after 1 iterations) memory (MB) | allocated: 1000.0 | max allocated: 2000.0
[2026-11-28 05:00:09] iteration        2/       3 | consumed samples:           16 | elapsed time per iteration (ms): 3990.0/4100.2 | learning rate: 7.500000E-06 | global batch size:     8 | lm loss: 1.512000E+00 | loss scale: 1.0 | grad norm: 9.876 | number of skipped iterations:   0 |
 iteration        3/       3 | consumed samples:           24 | elapsed time per iteration (ms): 3985.1 | learning rate: 2.500000E-06 | global batch size:     8 | lm loss: 1.402000E+00 | loss scale: 1.0 | grad norm: 8.5 | number of skipped iterations:   0 | number of nan iterations:   0 |
"""  # noqa: E501


class Recorder:
    """packft Tracker protocol, keeping what it is given."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict]] = []
        self.params: dict = {}

    def log(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_params(self, params, *, tags=False):
        self.params.update(params)

    def log_artifact(self, name, payload):
        pass

    def child(self, run_name, tags=None):
        return Recorder()

    def close(self, status="FINISHED"):
        pass


def test_parse_log_lines():
    lines = LOG.splitlines(keepends=True)
    assert mindspeed.parse_log_line(lines[0]) is None
    assert mindspeed.parse_log_line(lines[3]) is None  # memory report, not an iteration
    first = mindspeed.parse_log_line(lines[2])
    assert first == {
        "step": 1,
        "train_iters": 3,
        "step_time_s": pytest.approx(4.2105),
        "tflops_per_device": 101.2,
        "lr": 1e-5,
        "global_batch_size": 8,
        "loss": 1.734512,
        "grad_norm": 12.345,
    }
    second = mindspeed.parse_log_line(lines[4])  # timestamp prefix, "current/average" timing
    assert second["step"] == 2 and second["loss"] == 1.512 and second["step_time_s"] == 3.99


def test_forward_log_sends_loss_lines_to_the_tracker():
    tracker = Recorder()
    steps = mindspeed.forward_log(LOG.splitlines(keepends=True), tracker)
    assert [s for s, _ in tracker.metrics] == [1, 2, 3]
    assert [m["train/loss"] for _, m in tracker.metrics] == [1.734512, 1.512, 1.402]
    assert all({"train/loss", "train/lr", "train/grad_norm"} <= set(m) for _, m in tracker.metrics)
    assert steps[-1]["step"] == 3


def hf_cfg(model_type: str) -> dict:
    return {"model_type": model_type, "num_hidden_layers": 2, "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 8, "num_key_value_heads": 2,
            "vocab_size": 1000, "max_position_embeddings": 512, "rope_theta": 1e6,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": model_type == "qwen2"}  # fmt: skip


def cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(data_path=str(tmp_path / "d"), model=str(tmp_path / "m"), save=str(tmp_path / "s"),
                engine="mindspeed", mindspeed_home=str(tmp_path / "ms"), prompt_type="llama2",
                seq_length=256, tokenizer_name_or_path="tok", tensor_model_parallel_size=2,
                pipeline_model_parallel_size=1, nproc_per_node=2, global_batch_size=8,
                micro_batch_size=1, train_iters=3, bf16=True)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_command_carries_the_same_data_model_and_pack_switches(tmp_path, model_type):
    c = cfg(tmp_path)
    cmd = mindspeed.build_command(c, hf_cfg(model_type), "/ckpt/mcore", neat=True)
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert any(a.endswith("posttrain_gpt.py") for a in cmd)
    assert flag(cmd, "--data-path") == c.data_path and flag(cmd, "--load") == "/ckpt/mcore"
    assert flag(cmd, "--tensor-model-parallel-size") == "2"
    assert flag(cmd, "--seq-length") == "256" and flag(cmd, "--global-batch-size") == "8"
    assert flag(cmd, "--prompt-type") == "llama2"
    for switch in ("--is-instruction-dataset", "--reset-attention-mask", "--neat-pack", "--bf16"):
        assert switch in cmd
    assert flag(cmd, "--num-query-groups") == "2" and flag(cmd, "--num-layers") == "2"
    assert ("--add-qkv-bias" in cmd) == (model_type == "qwen2")
    assert ("--untie-embeddings-and-output-weights" in cmd) == (model_type == "llama")
    plain = mindspeed.build_command(c, hf_cfg(model_type), "/x", neat=False)
    assert "--neat-pack" not in plain


def test_config_problems_are_listed_together(tmp_path):
    problems = mindspeed.check_config(
        cfg(tmp_path, prompt_type=None, seq_length=None, loss_reduction="sample")
    )
    assert len(problems) == 4
    assert "posttrain_gpt.py not found" in problems[0]


def test_validation_and_lora_are_refused_not_dropped_with_the_mindspeed_engine(tmp_path):
    native = mindspeed.check_config(
        cfg(tmp_path, split="98,2,0", lora_target_modules=["linear_qkv"])
    )
    assert [p for p in native if "native engine only" in p] == native[1:] and len(native) == 3
    assert "--lora-target-modules" in native[1] and "--split" in native[2]
    plain = mindspeed.check_config(cfg(tmp_path, split="100,0,0"))
    assert not any("native engine only" in p for p in plain)


@pytest.mark.slow
def test_launch_streams_a_stand_in_posttrain_script(tmp_path, llama2_tokenizer_dir, capsys):
    home = tmp_path / "ms"
    home.mkdir()
    (tmp_path / "log.txt").write_text(LOG)
    (home / "posttrain_gpt.py").write_text(
        textwrap.dedent(f"""\
        import sys
        assert "--is-instruction-dataset" in sys.argv and "--neat-pack" in sys.argv
        sys.stdout.write(open({str(tmp_path / "log.txt")!r}).read())
        """)
    )
    with Stage(tmp_path) as stage:
        for key, seq in (("input_ids", [5, 6, 2, 0]), ("labels", [-100, 6, 2, -100]),
                         ("attention_mask", [1, 1, 1, 0])):  # fmt: skip
            with IndexedDatasetWriter(sft_prefix(tmp_path / "d", key), stage) as w:
                for _ in range(8):
                    w.add(np.array(seq))
                w.finalize()
        stage.commit()
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )  # fmt: skip
    ).save_pretrained(tmp_path / "m")
    c = cfg(tmp_path, tokenizer_name_or_path=str(llama2_tokenizer_dir), seq_length=4,
            tensor_model_parallel_size=1, nproc_per_node=1, tracking=False)  # fmt: skip
    summary = train(c)  # the library entry: checks, then picks the engine
    assert summary["engine"] == "mindspeed" and summary["returncode"] == 0
    assert summary["steps"] == 3 and summary["final_loss"] == 1.402
    assert (tmp_path / "s" / "mcore_init" / "latest_checkpointed_iteration.txt").exists()


def test_hf_config_of_a_real_mindspeed_checkpoint(tmp_path: Path, assets_dir: Path) -> None:
    """--load of what MindSpeed's converter wrote: the shape comes from its args (GQA included,
    which MindSpeed records as num_key_value_heads with group_query_attention False)."""
    load = assets_dir / "mindspeed_ckpt" / "llama2_mg_tp1pp1"
    c = TrainConfig(data_path=str(tmp_path / "d"), load=str(load), save=str(tmp_path / "s"))
    config = mindspeed.hf_config_of(c)
    want = json.loads(
        (assets_dir / "mindspeed_ckpt" / "tiny_llama2_hf" / "config.json").read_text()
    )
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings"):  # fmt: skip
        assert config[key] == want[key], key
