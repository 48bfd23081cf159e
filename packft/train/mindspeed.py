"""`packft train --engine mindspeed`: run MindSpeed-LLM's own trainer on the same data and weights.

What it does: (1) makes sure there is an mcore checkpoint with the requested TP/PP (`--load`, or
`--model HF_DIR` converted into `{save}/mcore_init` by packft.ckpt.convert); (2) builds the
`torchrun ... {mindspeed_home}/posttrain_gpt.py` command with the model shape read from the HF
config, the training flags of the same TrainConfig and the pack switches MindSpeed needs
(`--is-instruction-dataset --reset-attention-mask`, `--neat-pack` when the dataset carries segment
ids, `--prompt-type`); (3) streams its output, echoing every line and forwarding each Megatron
`iteration N/M | ... | lm loss: X | ...` line to the tracker as `train/loss`, `train/lr`,
`train/grad_norm`, `train/step_time_s` (the native trainer's names, `packft.track.metric_names`);
(4) prints the same one-line JSON summary as the native engine. Only the command building and the
log parsing are tested (on captured log text); it was not run against a real MindSpeed-LLM install
here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packft.track import metric_names
from packft.train.flags import parse_split
from packft.train.megatron_args import megatron_flags
from packft.train.split import eval_enabled

ITERATION = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
FIELDS = {
    "lm loss": ("loss", 1.0),
    "learning rate": ("lr", 1.0),
    "grad norm": ("grad_norm", 1.0),
    "elapsed time per iteration (ms)": ("step_time_s", 1e-3),
    "throughput per GPU (TFLOP/s/GPU)": ("tflops_per_device", 1.0),
    "global batch size": ("global_batch_size", 1.0),
}


def parse_log_line(line: str) -> dict[str, float] | None:
    """Metrics of one Megatron training-log line (None for any other line)."""
    match = ITERATION.search(line)
    if not match:
        return None
    out: dict[str, float] = {"step": int(match.group(1)), "train_iters": int(match.group(2))}
    for piece in line[match.end() :].split("|"):
        name, sep, value = piece.partition(":")
        if not sep or name.strip() not in FIELDS:
            continue
        key, factor = FIELDS[name.strip()]
        try:  # some forks print "current/average"; take the current value
            out[key] = float(value.strip().split("/")[0]) * factor
        except ValueError:
            continue
    return out if "loss" in out else None


def model_arguments(hf: dict[str, Any]) -> list[str]:
    """Megatron model-shape flags for a Llama/Qwen2-style HF config dict."""
    heads = int(hf["num_attention_heads"])
    kv = int(hf.get("num_key_value_heads") or heads)
    args = [
        "--use-mcore-models",
        "--num-layers", str(hf["num_hidden_layers"]),
        "--hidden-size", str(hf["hidden_size"]),
        "--ffn-hidden-size", str(hf["intermediate_size"]),
        "--num-attention-heads", str(heads),
        "--max-position-embeddings", str(hf.get("max_position_embeddings", 4096)),
        "--position-embedding-type", "rope",
        "--rotary-base", str(hf.get("rope_theta", 10000.0)),
        "--normalization", "RMSNorm",
        "--norm-epsilon", str(hf.get("rms_norm_eps", 1e-6)),
        "--swiglu",
        "--disable-bias-linear",
        "--make-vocab-size-divisible-by", "1",
        "--padded-vocab-size", str(hf["vocab_size"]),
    ]  # fmt: skip
    if kv != heads:
        args += ["--group-query-attention", "--num-query-groups", str(kv)]
    if hf.get("model_type") == "qwen2":
        args.append("--add-qkv-bias")
    if not hf.get("tie_word_embeddings", False):
        args.append("--untie-embeddings-and-output-weights")
    return args


def build_command(
    cfg: Any, hf_config: dict[str, Any], load_dir: str, *, neat: bool, master_port: int = 6000
) -> list[str]:
    """The torchrun command line for MindSpeed-LLM's posttrain_gpt.py (TrainConfig -> flags)."""
    script = posttrain_script(cfg) or Path(cfg.mindspeed_home or ".") / SCRIPT
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [
        *launcher, "--nproc_per_node", str(cfg.nproc_per_node), "--nnodes", "1",
        "--node_rank", "0", "--master_addr", "localhost", "--master_port", str(master_port),
        str(script),
        *model_arguments(hf_config),
        "--tensor-model-parallel-size", str(cfg.tensor_model_parallel_size),
        "--pipeline-model-parallel-size", str(cfg.pipeline_model_parallel_size),
        "--micro-batch-size", str(cfg.micro_batch_size),
        "--global-batch-size", str(cfg.global_batch_size),
        "--seq-length", str(cfg.seq_length),
        "--train-iters", str(cfg.train_iters),
        "--lr", str(cfg.lr), "--min-lr", str(cfg.min_lr), "--lr-decay-style", "cosine",
        "--lr-warmup-iters", str(cfg.lr_warmup_iters),
        "--weight-decay", str(cfg.weight_decay), "--clip-grad", str(cfg.clip_grad),
        "--adam-beta1", str(cfg.adam_beta1), "--adam-beta2", str(cfg.adam_beta2),
        "--seed", str(cfg.seed),
        "--data-path", cfg.data_path, "--split", "100,0,0",
        "--tokenizer-type", "PretrainedFromHF",
        "--tokenizer-name-or-path", str(cfg.tokenizer_name_or_path),
        "--load", load_dir, "--save", str(Path(cfg.save) / "mindspeed"),
        "--save-interval", str(cfg.save_interval or cfg.train_iters),
        "--finetune", "--is-instruction-dataset", "--reset-attention-mask",
        "--prompt-type", str(cfg.prompt_type),
        "--use-flash-attn", "--no-load-optim", "--no-load-rng",
        "--log-interval", "1", "--eval-iters", "0", "--log-throughput",
        "--distributed-backend", "nccl",
    ]  # fmt: skip
    if neat:
        cmd.append("--neat-pack")
    if cfg.bf16 is not False:
        cmd.append("--bf16")
    if not cfg.shuffle:
        cmd.append("--no-shuffle")
    cmd += megatron_flags(cfg.recompute_granularity, cfg.recompute_num_layers, cfg.recompute_method)
    return cmd


def forward_log(lines: Iterable[str], tracker: Any, echo: Any = None) -> list[dict[str, float]]:
    """Echo every line and send each iteration line's metrics to the tracker; returns them."""
    steps = []
    for line in lines:
        if echo is not None:
            echo.write(line)
        metrics = parse_log_line(line)
        if metrics:
            step = int(metrics.pop("step"))
            metrics.pop("train_iters")
            tracker.log(metric_names.named(metrics, metric_names.STEP), step=step)
            steps.append({"step": step, **metrics})
    return steps


SCRIPT = "posttrain_gpt.py"


def posttrain_script(cfg: Any) -> Path | None:
    """MindSpeed-LLM's ``posttrain_gpt.py``: in ``--mindspeed-home``, else the executable of that
    name on PATH (None: not found)."""
    if cfg.mindspeed_home:
        script = Path(cfg.mindspeed_home) / SCRIPT
        return script if script.is_file() else None
    found = shutil.which(SCRIPT)
    return Path(found).resolve() if found else None


def check_config(cfg: Any) -> list[str]:
    """Every setting ``--engine mindspeed`` cannot run with (empty: it can)."""
    problems = []
    if posttrain_script(cfg) is None:
        where = f"--mindspeed-home {cfg.mindspeed_home}" if cfg.mindspeed_home else "PATH"
        problems.append(
            f"{SCRIPT} not found in {where}; pass --mindspeed-home of a MindSpeed-LLM checkout "
            "(git clone https://gitee.com/ascend/MindSpeed-LLM) or put its script on PATH"
        )
    for flag, value in (("--prompt-type", cfg.prompt_type), ("--seq-length", cfg.seq_length),
                        ("--tokenizer-name-or-path", cfg.tokenizer_name_or_path)):  # fmt: skip
        if value is None:
            problems.append(f"{flag} is required with --engine mindspeed")
    if cfg.loss_reduction != "token":
        problems.append("--loss-reduction sample has no MindSpeed equivalent; use token")
    problems += native_only_problems(cfg)
    return problems


def native_only_problems(cfg: Any) -> list[str]:
    """Validation and LoRA are native-engine features: not forwarded to MindSpeed (yet), so
    asking for them with --engine mindspeed is refused rather than silently dropped."""
    problems = []
    if cfg.lora_target_modules:
        problems.append("--lora-target-modules runs with the native engine only; drop "
                        "--engine mindspeed (or the LoRA flags)")  # fmt: skip
    if eval_enabled(cfg) or parse_split(cfg.split)[2] > 0:
        problems.append("--split with held-out rows / --valid-data-path run with the native "
                        "engine only; drop --engine mindspeed (or use --split 100,0,0)")  # fmt: skip
    return problems


def hf_config_of(cfg: Any) -> dict[str, Any]:
    """HF config dict of --model, or rebuilt from the args stored in the --load checkpoint."""
    if cfg.model:
        return json.loads((Path(cfg.model) / "config.json").read_text())
    from packft.ckpt.read import iter_mcore_as_hf

    config, _ = iter_mcore_as_hf(Path(cfg.load))  # torch or torch_dist; no weights are read
    return config


def run_mindspeed(cfg: Any) -> dict[str, Any]:
    """Convert if needed, launch posttrain_gpt.py, stream and track its log; returns the summary
    (``returncode`` is the script's exit status). Call it through
    :func:`packft.train.engine.train`, which checks the settings first."""
    from packft.track.tracking import make_tracker
    from packft.train.data import SFTDataset, token_ids

    script = posttrain_script(cfg)
    if script is None:  # the engine checked; the script went away since
        raise FileNotFoundError("; ".join(check_config(cfg)))

    eos, _ = token_ids(cfg)
    neat = SFTDataset(cfg.data_path, pack_mode=cfg.pack_mode, eos_id=eos).mode == "neat"
    load_dir = cfg.load
    if load_dir is None:
        from packft.ckpt.convert import save_hf_as_mcore

        load_dir = str(Path(cfg.save) / "mcore_init")
        save_hf_as_mcore(cfg.model, load_dir, cfg.tensor_model_parallel_size,
                         cfg.pipeline_model_parallel_size, overwrite=True)  # fmt: skip
    cmd = build_command(cfg, hf_config_of(cfg), load_dir, neat=neat)
    tracker = make_tracker(
        cfg.tracking_uri, cfg.experiment, cfg.run_name, enabled=cfg.tracking,
        required=cfg.tracking_required,
    )  # fmt: skip
    tracker.log_params({**cfg.model_dump(), "command": " ".join(cmd)})
    env = {**os.environ, "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    proc = subprocess.Popen(cmd, cwd=script.parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)  # fmt: skip
    try:
        steps = forward_log(proc.stdout, tracker, echo=sys.stderr)
        code = proc.wait()
    finally:
        tracker.close("FINISHED" if proc.poll() == 0 else "FAILED")
    summary = {
        "steps": steps[-1]["step"] if steps else 0,
        "first_loss": steps[0]["loss"] if steps else None,
        "final_loss": steps[-1]["loss"] if steps else None,
        "tokens_per_s": None,  # MindSpeed does not print real (non-pad) tokens
        "checkpoint": str(Path(cfg.save) / "mindspeed"),
        "engine": "mindspeed",
        "returncode": code,
    }
    return summary
