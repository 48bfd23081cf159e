"""Options of ``packft train`` (:class:`TrainConfig`): Megatron/MindSpeed flag names, also the
input of the ``finetune`` flow. Imports neither torch nor transformers, so the flows' config
(:mod:`packft.pipeline_config`) and the checkpoint code can use it without loading the trainer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from packft.train.flags import parse_split, resolve_targets


class TrainConfig(BaseModel):
    """Options of `packft train` (Megatron/MindSpeed flag names); also the Prefect flow's input."""

    data_path: str = Field(description="dataset prefix: {prefix}_packed_*_document.{bin,idx}")
    model: str | None = Field(None, description="Hugging Face model directory to fine-tune")
    load: str | None = Field(None, description="Megatron/MindSpeed mcore checkpoint directory")
    tokenizer_name_or_path: str | None = Field(None, description="tokenizer dir (eos/pad ids)")
    save: str = Field(description="output directory: checkpoints/, hf/, mcore/, train_log.jsonl")
    seq_length: int | None = Field(None, description="row length; default: the dataset's")
    micro_batch_size: int = Field(1, ge=1, description="rows per forward pass per rank")
    global_batch_size: int = Field(8, ge=1, description="rows per optimizer step, all ranks")
    train_iters: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(1e-5, gt=0, description="peak learning rate")
    min_lr: float = Field(0.0, ge=0, description="learning rate at the end of the cosine decay")
    lr_warmup_iters: int = Field(0, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    adam_beta1: float = Field(0.9, description="AdamW beta1")
    adam_beta2: float = Field(0.999, description="AdamW beta2")
    adam_eps: float = Field(1e-8, description="AdamW epsilon")
    clip_grad: float = Field(1.0, ge=0, description="max global grad norm (0 = no clipping)")
    seed: int = Field(1234, description="seed for data order and RNG")
    shuffle: bool = Field(True, description="shuffle rows each epoch (--no-shuffle keeps order)")
    save_interval: int = Field(0, ge=0, description="DCP checkpoint every N steps (0 = none)")
    exit_interval: int | None = Field(None, description="stop after this step (tests, preemption)")
    log_interval: int = Field(1, ge=1, description="plain log line every N steps")
    device: Literal["auto", "npu", "cuda", "cpu"] = Field("auto", description="device type")
    bf16: bool | None = Field(None, description="bf16 autocast (default: on accelerators only)")
    use_torch_fsdp2: bool = Field(False, description="shard with FSDP2 instead of DDP")
    recompute_granularity: Literal["full", "selective"] | None = Field(
        None, description="activation recomputation: full (whole layers) | selective (attention)"
    )
    recompute_num_layers: int | None = Field(
        None, ge=0, description="recompute only the first N decoder layers (default: all)"
    )
    recompute_method: Literal["block", "uniform"] | None = Field(
        None, description="block: the first --recompute-num-layers layers; uniform: every layer"
    )
    loss_reduction: Literal["token", "sample"] = Field("token", description="loss averaging")
    pack_mode: Literal["auto", "neat", "eos", "unpacked"] = Field(
        "auto", description="sample boundaries: auto|neat|eos|unpacked"
    )
    resume: bool = Field(False, description="continue from {save}/checkpoints/latest")
    save_mcore: bool = Field(False, description="also write {save}/mcore (TP/PP as given)")
    engine: Literal["native", "mindspeed"] = Field("native", description="trainer to run")
    tracking: bool = Field(True, description="log to MLflow (--no-tracking to disable)")
    tracking_required: bool = Field(
        False, description="fail when MLflow is unreachable (default: warn once, train on)"
    )
    tracking_uri: str | None = Field(None, description="MLflow URI (default: project SQLite)")
    experiment: str = Field("packft-train", description="MLflow experiment name")
    run_name: str | None = Field(None, description="MLflow run name")
    mindspeed_home: str | None = Field(
        None, description="MindSpeed-LLM checkout (--engine mindspeed)"
    )
    prompt_type: str | None = Field(None, description="MindSpeed --prompt-type (mindspeed engine)")
    tensor_model_parallel_size: int = Field(1, ge=1, description="TP (mindspeed engine)")
    pipeline_model_parallel_size: int = Field(1, ge=1, description="PP (mindspeed engine)")
    nproc_per_node: int = Field(1, ge=1, description="processes per node (mindspeed engine)")
    split: str = Field(
        "100,0,0", description="train,valid,test weights of the rows (Megatron's --split)"
    )
    valid_data_path: str | None = Field(
        None, description="held-out dataset prefix to evaluate (instead of a --split share)"
    )
    eval_interval: int = Field(
        1000, ge=1, description="validation loss every N steps and at the end"
    )
    eval_iters: int = Field(
        100, ge=0, description="global batches of held-out rows per evaluation (0 = none)"
    )
    lora_target_modules: list[str] = Field(
        default_factory=list,
        description="LoRA on these modules: linear_qkv linear_proj linear_fc1 linear_fc2 "
        "(MindSpeed) or q_proj k_proj v_proj o_proj gate_proj up_proj down_proj; none = full",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha/r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        problems = []
        if (self.model is None) == (self.load is None):
            problems.append("give exactly one of --model HF_DIR or --load MCORE_DIR")
        if self.min_lr > self.lr:
            problems.append(f"--min-lr {self.min_lr} exceeds --lr {self.lr}")
        if self.global_batch_size % self.micro_batch_size:
            problems.append("--global-batch-size must be a multiple of --micro-batch-size")
        problems += held_out_problems(self) + lora_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def held_out_problems(cfg: TrainConfig) -> list[str]:
    """--split parses; a held-out share and --valid-data-path are not both given."""
    try:
        weights = parse_split(cfg.split)
    except ValueError as error:
        return [str(error)]
    if weights[1] > 0 and cfg.valid_data_path:
        return [
            f"--split {cfg.split} holds out validation rows and --valid-data-path is given; "
            "use one (e.g. --split 100,0,0 --valid-data-path PREFIX)"
        ]
    return []


def lora_problems(cfg: TrainConfig) -> list[str]:
    """Every --lora-target-modules name is a MindSpeed or HF module name."""
    try:
        resolve_targets(cfg.lora_target_modules)
    except ValueError as error:
        return [str(error)]
    return []
