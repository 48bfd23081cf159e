"""Memory plan before the first step: what one device will hold, and whether it fits.

Why: a 7B run at seq 4096 that runs out of memory after loading the checkpoint and building the
optimizer wastes minutes per try; the arithmetic is known before any weight is read.

Formula (bytes per device; P = all parameters, P_t = trainable ones, S = FSDP2 shards = world
size with ``--use-torch-fsdp2`` else 1; T = micro-batch x seq-length tokens; L layers, d hidden,
d_kv = kv heads x head dim, f FFN width, H heads, V vocab; a = 2 bytes under bf16 autocast else 4):
  parameters   4 P / S                      fp32 master weights (packft loads fp32)
               + 2 P   (DDP/1 device, bf16)  autocast keeps a bf16 copy of every weight in forward
               + 2 x 2 P_layer (FSDP2, bf16) the gathered bf16 layer and the prefetched next one
  gradients    4 P_t / S                    fp32 (DDP keeps a second copy in its buckets: x2)
  optimizer    8 P_t / S                    AdamW exp_avg + exp_avg_sq in fp32
  activations  stored + max(logits, replay + backward transient), where
               stored = what each decoder layer keeps per token for backward, times T:
                 not recomputed  a (7 d + 2 d_kv + 4 f) + p
                 selective       a (4 d + 4 f)   (the attention block keeps only its input)
                 full            4 d             (the layer input)
               p = core attention: 0 for the fused varlen kernels (NPU, varlen_attn, flash, flex
               keep output + log-sum-exp, counted in 7d); H x s^2 x 4 bytes per sample of length s
               for CPU's SDPA, which materialises the probabilities (the plan assumes one sample
               filling the row, the worst case), and 2p more while its backward runs;
               logits = T x V x (a + 3 x 4): logits, the fp32 log-softmax kept, and the two fp32
               gradients alive at the start of backward (the peak without recomputation);
               replay = one whole layer (full) or one attention block (selective) rebuilt in
               backward (the peak with recomputation, when it exceeds the logits)
  total        parameters + gradients + optimizer + activations (gradients are counted whole:
               the peak comes early in backward when few exist, so this errs on the safe side)
Checked against torch's MemTracker on CPU for tiny Llamas (tests/train/test_memory.py: within
25% of the measured peak, with and without recomputation; 2-16% over in practice). Not yet
compared on a GPU or NPU: benchmarks/gpu_check.py reports it against max_memory_allocated.

A run whose total exceeds the device memory by more than the estimate's error (MARGIN, 25%) is
refused before anything is loaded, with the components and what to change (recomputation, a
smaller micro-batch, FSDP2, more devices); between 100% and 125% the plan says "may not fit".
Imports neither torch nor transformers at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from packft.core.errors import PackftError

GIB = 1024**3
MARGIN = 1.25  # the estimate is within 25% of measured peaks: refuse only beyond that
CoreAttention = Literal["fused", "sdpa"]


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelShape:
        heads = int(cfg["num_attention_heads"])
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=int(cfg["hidden_size"]),
            ffn=int(cfg["intermediate_size"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
            vocab=int(cfg["vocab_size"]),
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        d, q = self.hidden, self.heads * self.head_dim
        attention = d * q + 2 * d * self.kv_width + q * d
        return attention + 3 * d * self.ffn + 2 * d

    def lora_params(self, targets: list[str], r: int) -> int:
        """Adapter parameters of LoRA rank ``r`` on the HF projections ``targets``: each
        ``in x out`` projection gains ``r * (in + out)``, in every layer."""
        d, q, kv, f = self.hidden, self.heads * self.head_dim, self.kv_width, self.ffn
        shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                  "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}  # fmt: skip
        return self.layers * sum(r * sum(shapes[name]) for name in targets)

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params + embeddings + self.hidden


@dataclass(frozen=True)
class RunShape:
    """How the model is trained: tokens per micro-batch, sharding, precision, recomputation."""

    micro_batch: int
    seq_length: int
    world: int = 1
    fsdp: bool = False
    bf16: bool = False
    recompute: str | None = None  # None | "full" | "selective"
    recompute_layers: int | None = None  # None = all layers
    core_attention: CoreAttention = "fused"
    trainable_params: int | None = None  # None = every parameter (LoRA passes fewer)


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated bytes per device by component; ``fits`` against ``device_bytes`` when known."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    activations_without_recompute: int
    device_bytes: int | None
    device_name: str

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    @property
    def fits(self) -> bool | None:
        """True under the device memory, False clearly over it (beyond MARGIN), None between
        (may not fit) or when the device memory is unknown."""
        if (
            self.device_bytes is None
            or self.device_bytes < self.total <= MARGIN * self.device_bytes
        ):
            return None
        return self.total <= self.device_bytes

    def lines(self) -> list[str]:
        """The plan as printed at the start of a run and by ``packft train --dry-run``."""

        def gib(n: int) -> str:
            return f"{n / GIB:.2f} GiB"

        verdict = {True: "fits", False: "DOES NOT FIT"}.get(self.fits) or (
            "device memory unknown" if self.device_bytes is None else "may not fit (tight)"
        )
        have = f" of {gib(self.device_bytes)} on {self.device_name}" if self.device_bytes else ""
        return [
            "memory plan per device (estimate, see packft.train.memory):",
            f"  parameters   {gib(self.parameters)}",
            f"  gradients    {gib(self.gradients)}",
            f"  optimizer    {gib(self.optimizer)}",
            f"  activations  {gib(self.activations)} "
            f"(without recomputation {gib(self.activations_without_recompute)})",
            f"  total        {gib(self.total)}{have}: {verdict}",
        ]


def activation_bytes_per_token(shape: ModelShape, run: RunShape, granularity: str | None) -> int:
    """Bytes one decoder layer keeps per token for backward at ``granularity``."""
    a = 2 if run.bf16 else 4
    d, kv, f = shape.hidden, shape.kv_width, shape.ffn
    if granularity == "full":
        return 4 * d
    if granularity == "selective":
        return a * (4 * d + 4 * f)
    return a * (7 * d + 2 * kv + 4 * f)


def attention_probabilities_bytes(shape: ModelShape, run: RunShape) -> int:
    """Per layer and micro-batch: the H x s^2 probabilities CPU SDPA materialises (0 if fused)."""
    if run.core_attention != "sdpa":
        return 0
    return shape.heads * run.seq_length**2 * 4 * run.micro_batch


def activation_bytes(shape: ModelShape, run: RunShape, granularity: str | None) -> int:
    """Peak activations of one micro-batch (see the module docstring for the terms)."""
    tokens = run.micro_batch * run.seq_length
    a = 2 if run.bf16 else 4
    wrapped = 0 if granularity is None else min(run.recompute_layers or shape.layers, shape.layers)
    probs = attention_probabilities_bytes(shape, run)
    whole_layer = tokens * activation_bytes_per_token(shape, run, None) + probs
    stored = (shape.layers - wrapped) * whole_layer
    stored += wrapped * tokens * activation_bytes_per_token(shape, run, granularity)
    if wrapped and granularity == "full":
        replay = whole_layer
    elif wrapped:  # selective: the attention block's q, k, v, output, o_proj input
        replay = tokens * a * (3 * shape.hidden + 2 * shape.kv_width) + probs
    else:
        replay = 0
    backward_transient = 2 * probs  # gradients of the probabilities and of the scores
    logits = tokens * shape.vocab * (a + 3 * 4)
    return stored + max(logits, replay + backward_transient)


def estimate(shape: ModelShape, run: RunShape) -> tuple[int, int, int, int, int]:
    """(parameters, gradients, optimizer, activations, activations without recomputation)."""
    shards = run.world if run.fsdp else 1
    params = shape.params
    trainable = params if run.trainable_params is None else run.trainable_params
    weights = 4 * params // shards
    if run.bf16:
        weights += 2 * 2 * shape.layer_params if run.fsdp else 2 * params
    grads = 4 * trainable // shards * (2 if run.world > 1 and not run.fsdp else 1)
    optimizer = 8 * trainable // shards
    acts = activation_bytes(shape, run, run.recompute)
    plain = activation_bytes(shape, run, None)
    return weights, grads, optimizer, acts, plain


def plan(
    shape: ModelShape, run: RunShape, device_bytes: int | None, device_name: str
) -> MemoryPlan:
    weights, grads, optimizer, acts, plain = estimate(shape, run)
    return MemoryPlan(weights, grads, optimizer, acts, plain, device_bytes, device_name)


def advice(plan_: MemoryPlan, run: RunShape) -> list[str]:
    """What to change, biggest saving first."""
    tips = []
    if plan_.activations > plan_.total // 4:
        if run.recompute != "full":
            tips.append("--recompute-granularity full")
        if run.micro_batch > 1:
            tips.append(f"--micro-batch-size {max(1, run.micro_batch // 2)}")
    if not run.fsdp:
        tips.append("--use-torch-fsdp2 (shards weights, gradients and optimizer states)")
    tips.append("more devices (torchrun --nproc-per-node N with --use-torch-fsdp2)")
    return tips


def require_fit(plan_: MemoryPlan, run: RunShape) -> None:
    """Refuse a run that clearly cannot fit (the estimate exceeds the device by > MARGIN)."""
    if plan_.fits is False:
        raise PackftError(
            f"this run needs about {plan_.total / GIB:.1f} GiB per device "
            f"(parameters {plan_.parameters / GIB:.1f}, gradients {plan_.gradients / GIB:.1f}, "
            f"optimizer {plan_.optimizer / GIB:.1f}, activations {plan_.activations / GIB:.1f}) "
            f"but {plan_.device_name} has {plan_.device_bytes / GIB:.1f} GiB "  # type: ignore[operator]
            f"(packft train --dry-run shows the plan); try {'; '.join(advice(plan_, run))}"
        )


# ------------------------------------------------------------------ the plan of a `packft train` run
def model_config(model: str | None, load: str | None) -> tuple[dict[str, Any], str]:
    """The HF config dict of ``--model`` or ``--load`` and where it came from (no weights used)."""
    import json
    from pathlib import Path

    if model:
        path = Path(model) / "config.json"
        return json.loads(path.read_text()), str(path)
    from packft.ckpt.read import iter_mcore_as_hf

    config, _layers = iter_mcore_as_hf(Path(str(load)))  # reads the args, not the tensors
    return config, str(load)


def dataset_seq_length(data_path: str) -> int:
    """The longest row of the set (its row length when packed)."""
    from packft.dataset.indexed import IndexedDataset, sft_prefix

    return int(IndexedDataset(sft_prefix(data_path, "input_ids")).lengths.max())


def device_memory(device_type: str, local_world: int = 1) -> tuple[int | None, str]:
    """Total memory of one device (CPU: the host RAM shared by the local ranks) and its name."""
    import torch

    if device_type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(props.total_memory), props.name
    if device_type == "npu":
        try:
            props = torch.npu.get_device_properties(torch.npu.current_device())  # type: ignore[attr-defined]
            return int(props.total_memory), str(props.name)
        except Exception:  # noqa: BLE001 - unknown size means "no verdict", never a crash
            return None, "npu"
    import psutil

    return int(psutil.virtual_memory().total) // max(1, local_world), "CPU RAM"


def run_plan(
    cfg: Any, device_type: str, world: int, bf16: bool, trainable_params: int | None = None
) -> tuple[MemoryPlan, RunShape]:
    """The plan of a TrainConfig on ``world`` devices of ``device_type``."""
    import os

    config, _ = model_config(cfg.model, cfg.load)
    shape = ModelShape.from_hf_config(config)
    if trainable_params is None and getattr(cfg, "lora_target_modules", None):
        from packft.train.flags import resolve_targets

        trainable_params = shape.lora_params(resolve_targets(cfg.lora_target_modules), cfg.lora_r)
    run = RunShape(
        micro_batch=cfg.micro_batch_size,
        seq_length=cfg.seq_length or dataset_seq_length(cfg.data_path),
        world=world,
        fsdp=bool(cfg.use_torch_fsdp2 and world > 1),
        bf16=bf16,
        recompute=cfg.recompute_granularity,
        recompute_layers=None if cfg.recompute_method == "uniform" else cfg.recompute_num_layers,
        core_attention="sdpa" if device_type == "cpu" else "fused",
        trainable_params=trainable_params,
    )
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device_bytes, name = device_memory(device_type, local_world)
    return plan(shape, run, device_bytes, name), run


def announce(
    cfg: Any, device_type: str, world: int, bf16: bool, main: bool = True,
    trainable_params: int | None = None,
) -> MemoryPlan:  # fmt: skip
    """Log the plan (rank 0) and refuse a run that cannot fit: the first lines of every run."""
    import logging

    plan_, run = run_plan(cfg, device_type, world, bf16, trainable_params)
    if main:
        for line in plan_.lines():
            logging.getLogger("packft.train").info(line)
    require_fit(plan_, run)
    return plan_
