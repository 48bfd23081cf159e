"""LoRA for `packft train` (``--lora-target-modules``, ``--lora-r``, ``--lora-alpha``,
``--lora-dropout``), with PEFT: the same packed training, a fraction of the trained weights.

Algorithm. :func:`apply_lora` calls ``peft.inject_adapter_in_model``, which replaces every
targeted ``nn.Linear`` of the transformers model in place by PEFT's LoRA layer,
``y = W x + (alpha / r) * B A dropout(x)`` with A (r x in, random) and B (out x r, zeros, so step
0 is the base model), and freezes everything else (``requires_grad=False``). The model stays a
plain ``...ForCausalLM``: packed attention, DDP, FSDP2 (``fully_shard`` per decoder layer; FSDP2
takes frozen and trained parameters in one unit) and the checkpoints treat it like any model, and
the optimizer is built over the trained parameters only. Packed rows give the gradients of the
samples run one by one (tests/train/test_lora.py).

Target names. MindSpeed-LLM takes Megatron module names; :data:`packft.train.flags.TARGETS`
maps them onto the HF modules of a Llama/Qwen2/Mistral model (a fused Megatron layer is several
HF ones). HF names are accepted as they are; anything else is a usage error that lists the
valid names.

Export (:func:`export_adapter`, rank 0, from the full state dict that ``save_final`` gathers):
``{save}/adapter/adapter_model.safetensors`` + ``adapter_config.json`` in PEFT's own layout
(keys ``base_model.model.<module>.lora_A.weight``), loadable with
``PeftModel.from_pretrained(base, dir)``, committed as one staged set (a kill never leaves a mix);
and the merged weights ``W + (alpha / r) B A`` under
the base model's key names (``{save}/hf``, and ``{save}/mcore`` via the converter), loadable
without packft or PEFT. Training checkpoints hold only the trained parameters and the optimizer
(``checkpoint.py``: DCP ``ignore_frozen_params``); the frozen base is read again from
--model/--load on --resume, which therefore must name the same weights.

Cost: r x (in + out) parameters per targeted Linear; Llama-2-7B with r=16 on all seven
projections trains 40M of 6.7B parameters (0.6%), and its optimizer state shrinks in proportion.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packft.train.flags import resolve_targets

if TYPE_CHECKING:
    import torch

    from packft.train.config import TrainConfig

log = logging.getLogger("packft.train")

ADAPTER_NAME = "default"  # PEFT's adapter name; its keys carry it (lora_A.default.weight)
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # the names PeftModel.from_pretrained reads
ADAPTER_CONFIG = "adapter_config.json"
BASE_PREFIX = "base_model.model."  # what PeftModel prepends to the transformers model's keys


def lora_enabled(cfg: TrainConfig) -> bool:
    """LoRA is on when target modules are given (MindSpeed's rule: --lora-r alone does nothing)."""
    return bool(cfg.lora_target_modules)


def lora_config(cfg: TrainConfig) -> Any:
    """The ``peft.LoraConfig`` of the run (also written as the adapter's adapter_config.json)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=resolve_targets(cfg.lora_target_modules), bias="none",
        task_type="CAUSAL_LM", base_model_name_or_path=cfg.model,
    )  # fmt: skip


def apply_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """``model`` with LoRA adapters injected in place and its base frozen (unchanged without LoRA).

    Raises:
        ValueError: none of the targets exists in this model.
    """
    if not lora_enabled(cfg):
        return model
    from peft import inject_adapter_in_model

    config = lora_config(cfg)
    try:
        model = inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except ValueError as error:  # PEFT: "Target modules {...} not found in the base model"
        raise ValueError(
            f"--lora-target-modules {' '.join(cfg.lora_target_modules)}: {error}"
        ) from None
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d alpha=%s on %s: %d of %d parameters train (%.3f%%)", cfg.lora_r,
             cfg.lora_alpha, ",".join(sorted(config.target_modules)), trained, total,
             100 * trained / total)  # fmt: skip
    return model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates (all of them without LoRA)."""
    return [p for p in model.parameters() if p.requires_grad]


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The base model's state dict with each adapter folded in: ``W + scaling * B @ A``.

    ``state`` is the full state dict of the injected model (``q_proj.base_layer.weight``,
    ``q_proj.lora_A.default.weight`` ...); the result has the plain keys (``q_proj.weight``).
    Computed in float32, stored in the base weight's dtype.
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." not in key:
            merged[key] = value
            continue
        module, _, leaf = key.partition(".base_layer.")
        if leaf == "weight":
            a = state[f"{module}.lora_A.{ADAPTER_NAME}.weight"].float()
            b = state[f"{module}.lora_B.{ADAPTER_NAME}.weight"].float()
            value = (value.float() + scaling * (b @ a)).to(value.dtype)
        merged[f"{module}.{leaf}"] = value
    return merged


def adapter_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The adapter weights of ``state`` in the key layout ``PeftModel.save_pretrained`` writes."""
    from peft import get_peft_model_state_dict

    adapter = get_peft_model_state_dict(model, state_dict=state, adapter_name=ADAPTER_NAME)
    return {BASE_PREFIX + k: v.contiguous() for k, v in adapter.items()}


def export_adapter(
    cfg: TrainConfig, model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Write ``{save}/adapter`` and return the merged state dict for ``{save}/hf``. Called on
    rank 0 with the full (gathered) state dict.

    The two files are one :class:`packft.core.atomic.Stage` (fault points ``lora.adapter.*``)
    with ``adapter_config.json`` as its marker: the old config goes first and the new one is
    renamed last, so a kill leaves the previous adapter whole, or no adapter_config.json (PEFT
    then refuses to load), never new weights under an old config or half a file.
    """
    import tempfile

    from safetensors.torch import save_file

    from packft.core.atomic import Stage
    from packft.core.writers import sweep

    config = lora_config(cfg)
    config.inference_mode = True  # as PeftModel.save_pretrained writes it
    out = Path(cfg.save) / ADAPTER_DIR
    out.mkdir(parents=True, exist_ok=True)
    sweep(out)  # temporaries of a killed export
    with Stage(out, label="lora.adapter") as stage:
        save_file(adapter_state_dict(model, state), stage.temp(out / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})  # fmt: skip
        stage.seal(out / ADAPTER_WEIGHTS)
        with tempfile.TemporaryDirectory(dir=out) as scratch:  # PEFT writes a directory
            config.save_pretrained(scratch)
            text = (Path(scratch) / ADAPTER_CONFIG).read_text()
        stage.temp(out / ADAPTER_CONFIG).write_text(text)
        stage.seal(out / ADAPTER_CONFIG)
        stage.commit(marker=out / ADAPTER_CONFIG)
    return merged_state_dict(state, cfg.lora_alpha / cfg.lora_r)
