"""Key tables, model shape and split planning for HF <-> Megatron-mcore conversion (llama family).

The tables say, for every Hugging Face tensor, which mcore tensor it becomes and how that tensor is
split across tensor-parallel (TP) ranks; ``packft.ckpt.tensors`` holds the pure functions that
apply them.

Worked example (Llama-3 style GQA, hidden 32, 4 query heads, 2 KV groups, head dim 8, TP 2)::

    model.layers.5.self_attn.{q,k,v}_proj.weight  [32,32] [16,32] [16,32]
      -> per group g: [q heads of g (16 rows) | k of g (8) | v of g (8)]  -> linear_qkv [64, 32]
      -> TP rank r keeps group r: decoder.layers.{5 - first layer of the stage}.linear_qkv [32, 32]

Megatron's ``args`` Namespace is built from the HF config with Megatron's own attribute names, so
Megatron and MindSpeed read it as if their converter had written it (``args_from_spec``), and the
HF config comes back from it (``hf_config_from_args``). ``plan_stages`` checks that a TP x PP split
is possible and reports every impossible number at once, with the values that would work.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

import torch

# ---------------------------------------------------------------------------------------- tables
HF_LAYER_PREFIX = "model.layers."
MG_LAYER_PREFIX = "decoder.layers."

# Whole-model tensors: HF key -> mcore key.
GLOBAL_KEYS: dict[str, str] = {
    "model.embed_tokens.weight": "embedding.word_embeddings.weight",
    "model.norm.weight": "decoder.final_layernorm.weight",
    "lm_head.weight": "output_layer.weight",
}

# Per-layer tensors: HF suffix -> (mcore suffix, part). ``part`` names the slot of a fused tensor.
LLAMA_LAYER_KEYS: dict[str, tuple[str, str | None]] = {
    "input_layernorm.weight": ("input_layernorm.weight", None),
    "post_attention_layernorm.weight": ("pre_mlp_layernorm.weight", None),
    "self_attn.q_proj.weight": ("self_attention.linear_qkv.weight", "q"),
    "self_attn.k_proj.weight": ("self_attention.linear_qkv.weight", "k"),
    "self_attn.v_proj.weight": ("self_attention.linear_qkv.weight", "v"),
    "self_attn.o_proj.weight": ("self_attention.linear_proj.weight", None),
    "mlp.gate_proj.weight": ("mlp.linear_fc1.weight", "gate"),
    "mlp.up_proj.weight": ("mlp.linear_fc1.weight", "up"),
    "mlp.down_proj.weight": ("mlp.linear_fc2.weight", None),
}
QWEN2_LAYER_KEYS: dict[str, tuple[str, str | None]] = {
    **LLAMA_LAYER_KEYS,
    "self_attn.q_proj.bias": ("self_attention.linear_qkv.bias", "q"),
    "self_attn.k_proj.bias": ("self_attention.linear_qkv.bias", "k"),
    "self_attn.v_proj.bias": ("self_attention.linear_qkv.bias", "v"),
}

# How each mcore tensor is laid out across TP ranks.
#   "replicate": every rank holds all of it     "rows"/"cols": torch.chunk along dim 0 / dim 1
#   "qkv": per-group fused q|k|v, then rows     "gate_up": rank r holds cat(gate_r, up_r)
TP_LAYOUT: dict[str, str] = {
    "input_layernorm.weight": "replicate",
    "pre_mlp_layernorm.weight": "replicate",
    "self_attention.linear_qkv.weight": "qkv",
    "self_attention.linear_qkv.bias": "qkv",
    "self_attention.linear_proj.weight": "cols",
    "mlp.linear_fc1.weight": "gate_up",
    "mlp.linear_fc2.weight": "cols",
    "embedding.word_embeddings.weight": "rows",
    "output_layer.weight": "rows",
    "decoder.final_layernorm.weight": "replicate",
}

# HF buffers that old checkpoints carry and that hold no weights.
HF_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Transformer-Engine spellings of the two layer norms, accepted when reading mcore checkpoints.
MG_ALIASES: dict[str, str] = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
MG_IGNORED_SUFFIXES = ("_extra_state",)


@dataclass(frozen=True)
class Arch:
    """One supported architecture: its HF ``model_type`` and its layer key table."""

    hf_model_type: str
    layer_keys: dict[str, tuple[str, str | None]]
    qkv_bias: bool


ARCHS: dict[str, Arch] = {
    "llama2": Arch("llama", LLAMA_LAYER_KEYS, qkv_bias=False),
    "llama3": Arch("llama", LLAMA_LAYER_KEYS, qkv_bias=False),
    "mistral": Arch("mistral", LLAMA_LAYER_KEYS, qkv_bias=False),
    "qwen2": Arch("qwen2", QWEN2_LAYER_KEYS, qkv_bias=True),
}
SUPPORTED = ", ".join(ARCHS)
_CAUSAL_LM = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class ConvertError(ValueError):
    """A checkpoint or a requested layout that cannot be converted; the message says what to do."""


class ConvertUsageError(ConvertError):
    """A flag asks for something impossible (a TP/PP split, a wrong --model-type-hf): exit 2."""

    exit_code = 2


# ------------------------------------------------------------------------------------ model shape
@dataclass(frozen=True)
class ModelSpec:
    """The shape facts a conversion needs; built from an HF config or from Megatron args."""

    arch: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied: bool

    @property
    def qkv_bias(self) -> bool:
        return ARCHS[self.arch].qkv_bias

    @property
    def layer_keys(self) -> dict[str, tuple[str, str | None]]:
        return ARCHS[self.arch].layer_keys


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling or None) from old (``rope_theta``) or new (``rope_parameters``) keys."""
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or (
        params if params.get("rope_type", "default") != "default" else None
    )
    return float(theta), scaling


def detect_arch(cfg: dict[str, Any], requested: str | None = None) -> str:
    """The architecture named by ``config.json``'s ``model_type``, checked against ``requested``."""
    model_type = cfg.get("model_type")
    matches = [name for name, arch in ARCHS.items() if arch.hf_model_type == model_type]
    if not matches:
        raise ConvertError(
            f"config.json has model_type={model_type!r}, which packft cannot convert; supported "
            f"--model-type-hf values: {SUPPORTED} (HF model_type llama, mistral, qwen2)"
        )
    if requested is not None:
        if requested not in ARCHS:
            raise ConvertUsageError(f"--model-type-hf {requested!r} is not one of: {SUPPORTED}")
        if requested not in matches:
            raise ConvertUsageError(
                f"--model-type-hf {requested} expects HF model_type "
                f"{ARCHS[requested].hf_model_type!r} but config.json says {model_type!r}; "
                f"use --model-type-hf {matches[0]} or drop the flag"
            )
        return requested
    if model_type == "llama":
        gqa = (
            cfg.get("num_key_value_heads", cfg["num_attention_heads"]) != cfg["num_attention_heads"]
        )
        return "llama3" if gqa or _rope(cfg)[0] >= 500000 else "llama2"
    return matches[0]


def spec_from_hf_config(cfg: dict[str, Any], requested: str | None = None) -> ModelSpec:
    """Read the shape from an HF ``config.json`` dict; refuses features the tables do not cover."""
    arch = detect_arch(cfg, requested)
    problems = []
    if cfg.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={cfg['hidden_act']!r} (only silu/SwiGLU is supported)")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            problems.append(f"{flag}=true (only Qwen2's q/k/v bias is supported)")
    if problems:
        raise ConvertError(f"{arch} checkpoint has unsupported settings: " + "; ".join(problems))
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    return ModelSpec(
        arch=arch,
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        ffn_hidden_size=int(cfg["intermediate_size"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        vocab_size=int(cfg["vocab_size"]),
        # LlamaConfig, MistralConfig and Qwen2Config all default to untied.
        tied=bool(cfg.get("tie_word_embeddings", False)),
    )


def args_from_spec(
    spec: ModelSpec,
    hf_cfg: dict[str, Any],
    *,
    tp: int,
    pp: int,
    layer_list: list[int],
    dtype: torch.dtype,
) -> argparse.Namespace:
    """Megatron/MindSpeed ``args``: scalars only, Megatron attribute names, plus the HF config."""
    theta, scaling = _rope(hf_cfg)
    even = all(n == layer_list[0] for n in layer_list)
    ns = argparse.Namespace(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_heads,
        num_query_groups=spec.num_kv_heads,
        group_query_attention=spec.num_kv_heads != spec.num_heads,
        kv_channels=spec.head_dim,
        padded_vocab_size=spec.vocab_size,
        vocab_size=spec.vocab_size,
        make_vocab_size_divisible_by=1,
        max_position_embeddings=int(hf_cfg.get("max_position_embeddings", 4096)),
        position_embedding_type="rope",
        use_rotary_position_embeddings=True,
        rotary_base=theta,
        normalization="RMSNorm",
        norm_epsilon=float(hf_cfg.get("rms_norm_eps", 1e-6)),
        swiglu=True,
        add_bias_linear=False,
        add_qkv_bias=spec.qkv_bias,
        untie_embeddings_and_output_weights=not spec.tied,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=1,
        num_layer_list=None if even else ",".join(map(str, layer_list)),
        transformer_impl="local",
        params_dtype=DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch.")),
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        model_type_hf=spec.arch,
        hf_config_json=json.dumps(hf_cfg, sort_keys=True),
    )
    if scaling:
        ns.use_rope_scaling = scaling.get("rope_type", scaling.get("type")) == "llama3"
        ns.rope_scaling_type = str(scaling.get("rope_type", scaling.get("type")))
        for ours, theirs in (
            ("rope_scaling_factor", "factor"),
            ("low_freq_factor", "low_freq_factor"),
            ("high_freq_factor", "high_freq_factor"),
            ("rope_scaling_original_max_position_embeddings", "original_max_position_embeddings"),
        ):
            if theirs in scaling:
                setattr(ns, ours, scaling[theirs])
    return ns


# HF config fields MindSpeed's converter copies into ``args`` verbatim (its args hold the HF config).
_HF_FIELDS_IN_ARGS = (
    "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "rms_norm_eps", "rope_theta",
    "max_position_embeddings", "initializer_range", "attention_dropout", "torch_dtype", "dtype",
)  # fmt: skip


def _arg(ns: argparse.Namespace, *names: str) -> Any:
    """The first of ``names`` that ``ns`` holds (Megatron's name first, then HF's)."""
    for name in names:
        if getattr(ns, name, None) is not None:
            return getattr(ns, name)
    raise ConvertError(
        f"the checkpoint args have no {names[0]} (nor {', '.join(names[1:]) or 'an alias'}), so "
        "the HF config cannot be rebuilt from them; pass --hf-cfg-dir with the model's config.json"
    )


def hf_config_from_args(ns: argparse.Namespace, requested: str | None = None) -> dict[str, Any]:
    """Rebuild an HF ``config.json`` dict from Megatron args (packft's carry it verbatim; MindSpeed's
    carry the HF fields beside Megatron's names)."""
    saved = getattr(ns, "hf_config_json", None)
    cfg: dict[str, Any] = json.loads(saved) if isinstance(saved, str) else {}
    if not cfg:
        cfg = {k: getattr(ns, k) for k in _HF_FIELDS_IN_ARGS if getattr(ns, k, None) is not None}
    arch = requested or getattr(ns, "model_type_hf", None)
    if arch is None:
        arch = "qwen2" if getattr(ns, "add_qkv_bias", False) else "llama2"
    if arch not in ARCHS:
        raise ConvertError(f"checkpoint args name model_type_hf={arch!r}; supported: {SUPPORTED}")
    heads = int(_arg(ns, "num_attention_heads"))
    if getattr(ns, "group_query_attention", False):
        groups = int(_arg(ns, "num_query_groups"))
    else:  # MindSpeed leaves group_query_attention False but keeps HF's num_key_value_heads
        groups = int(getattr(ns, "num_key_value_heads", None) or heads)
    hidden = int(_arg(ns, "hidden_size"))
    cfg.update(
        model_type=ARCHS[arch].hf_model_type,
        num_hidden_layers=int(_arg(ns, "num_layers", "num_hidden_layers")),
        hidden_size=hidden,
        intermediate_size=int(_arg(ns, "ffn_hidden_size", "intermediate_size")),
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=int(
            getattr(ns, "kv_channels", None) or getattr(ns, "head_dim", None) or hidden // heads
        ),  # fmt: skip
        vocab_size=int(cfg.get("vocab_size") or _arg(ns, "vocab_size", "padded_vocab_size")),
        tie_word_embeddings=not bool(_arg(ns, "untie_embeddings_and_output_weights")),
        hidden_act="silu",
    )
    cfg.setdefault("max_position_embeddings", int(getattr(ns, "max_position_embeddings", 4096)))
    cfg.setdefault("rms_norm_eps", float(getattr(ns, "norm_epsilon", 1e-6)))
    if "rope_theta" not in cfg and "rope_parameters" not in cfg:
        cfg["rope_theta"] = float(getattr(ns, "rotary_base", 10000.0))
    cfg.setdefault("architectures", [_CAUSAL_LM[cfg["model_type"]]])
    return cfg


# -------------------------------------------------------------------------------- split planning
def plan_stages(spec: ModelSpec, tp: int, pp: int, num_layer_list: str | None = None) -> list[int]:
    """Layers per pipeline stage; every impossible split is reported in one error."""
    problems = []
    sizes = {
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads (query groups)": spec.num_kv_heads,
        "vocab_size": spec.vocab_size,
        "intermediate_size": spec.ffn_hidden_size,
    }
    fitting = [d for d in range(1, 65) if all(n % d == 0 for n in sizes.values())]
    bad = [f"{what}={n}" for what, n in sizes.items() if tp < 1 or n % tp]
    if bad:
        hint = (
            " (the vocabulary is not padded, as in MindSpeed: resize the embedding first)"
            if any(b.startswith("vocab_size") for b in bad)
            else ""
        )
        problems.append(
            f"{', '.join(bad)} not divisible by --target-tensor-parallel-size {tp}; "
            f"TP sizes that fit this model: {fitting}{hint}"
        )
    if spec.num_heads % spec.num_kv_heads:
        problems.append(
            f"num_attention_heads={spec.num_heads} is not a multiple of num_key_value_heads"
        )
    if num_layer_list:
        try:
            layers = [int(x) for x in num_layer_list.split(",")]
        except ValueError:
            layers = []
            problems.append(f"--num-layer-list {num_layer_list!r} is not comma-separated integers")
        if layers and (len(layers) != pp or sum(layers) != spec.num_layers or min(layers) < 1):
            problems.append(
                f"--num-layer-list {num_layer_list} must have {pp} entries (one per pipeline "
                f"stage), each >= 1, summing to num_layers={spec.num_layers}"
            )
    elif pp < 1 or spec.num_layers % pp:
        ok = [d for d in range(1, spec.num_layers + 1) if spec.num_layers % d == 0]
        problems.append(
            f"num_layers={spec.num_layers} is not divisible by --target-pipeline-parallel-size "
            f"{pp}; use a PP size in {ok} or give --num-layer-list"
        )
        layers = []
    else:
        layers = [spec.num_layers // pp] * pp
    if problems:
        raise ConvertUsageError("cannot split this model:\n  - " + "\n  - ".join(problems))
    return layers


def check_hf_keys(keys: list[str], spec: ModelSpec) -> None:
    """Every tensor the tables expect is present and nothing unknown is (before any loading)."""
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    expected |= set() if spec.tied else {"lm_head.weight"}
    for i in range(spec.num_layers):
        expected |= {f"{HF_LAYER_PREFIX}{i}.{s}" for s in spec.layer_keys}
    present = {k for k in keys if not k.endswith(HF_IGNORED_SUFFIXES)}
    allowed = expected | ({"lm_head.weight"} if spec.tied else set())
    unknown, missing = sorted(present - allowed), sorted(expected - present)
    if unknown or missing:
        raise ConvertError(
            f"the HF checkpoint does not match a {spec.num_layers}-layer {spec.arch} model: "
            f"unknown tensors {unknown[:8]}{' ...' if len(unknown) > 8 else ''}, "
            f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
