"""MindSpeed/Megatron launch flags on ``packft train``: used, checked against the model, or ignored.

Why: a team moving from MindSpeed-LLM pastes the argument list of its launch script (e.g.
``tune_llama2_7B_full_pack_ptd.sh``) after ``packft train``. Most of those flags either mean
something packft does (they are *used*), describe the model (they are *checked* against the
checkpoint: a 7B flag set against a 13B checkpoint is a mistake, never silently trained), or tune
Megatron internals that have no counterpart here (they are *ignored*, listed once).

Algorithm:
  1. :func:`add_arguments` registers every flag of :data:`FLAGS` that is not already an option of
     :class:`~packft.train.config.TrainConfig` (those, e.g. ``--lr``, ``--seq-length``, ``--bf16``,
     ``--recompute-granularity``, are used as they are), under ``dest="megatron__<name>"``, so a
     flag outside this table and the config is still a usage error (a typo is never swallowed).
  2. :func:`take_passthrough` removes them from the parsed namespace and translates the used ones
     into config options that were not given explicitly (``--lr-warmup-fraction`` -> warmup
     iterations, ``--recompute-activations`` -> selective recomputation); a value packft cannot
     honour (``--lr-decay-style linear``) is an error naming the flag and what works.
  3. :meth:`Passthrough.check_model` compares the shape flags with the checkpoint's config
     (``--num-layers`` vs ``num_hidden_layers`` ...) and raises one error naming both values of
     every mismatch.
  4. :meth:`Passthrough.summary` is the single line that lists what was used, checked, ignored.
Imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from packft.core.errors import UsageError

PREFIX = "megatron__"

# flag -> (takes a value, role). role: "used" (translated below), "shape" (checked), "ignored".
FLAGS: dict[str, tuple[bool, str]] = {
    # model shape: checked against the checkpoint's config
    "--num-layers": (True, "shape"),
    "--hidden-size": (True, "shape"),
    "--ffn-hidden-size": (True, "shape"),
    "--num-attention-heads": (True, "shape"),
    "--group-query-attention": (False, "shape"),
    "--num-query-groups": (True, "shape"),
    "--max-position-embeddings": (True, "shape"),
    "--untie-embeddings-and-output-weights": (False, "shape"),
    "--normalization": (True, "shape"),
    "--swiglu": (False, "shape"),
    "--position-embedding-type": (True, "shape"),
    "--use-rotary-position-embeddings": (False, "shape"),
    "--disable-bias-linear": (False, "shape"),
    "--add-qkv-bias": (False, "shape"),
    "--padded-vocab-size": (True, "shape"),
    "--kv-channels": (True, "shape"),
    # what packft does anyway, or translated into its options
    "--lr-warmup-fraction": (True, "used"),
    "--lr-decay-style": (True, "used"),
    "--lr-decay-iters": (True, "used"),
    "--recompute-activations": (False, "used"),
    "--tokenizer-type": (True, "used"),
    "--finetune": (False, "used"),
    "--is-instruction-dataset": (False, "used"),
    "--stage": (True, "used"),
    "--reset-attention-mask": (False, "used"),
    "--neat-pack": (False, "used"),
    "--no-load-optim": (False, "used"),
    "--no-load-rng": (False, "used"),
    "--use-mcore-models": (False, "used"),
    "--ckpt-format": (True, "used"),
    "--attention-dropout": (True, "used"),
    "--hidden-dropout": (True, "used"),
    "--use-flash-attn": (False, "used"),
    # Megatron/MindSpeed internals without a counterpart here
    "--sequence-parallel": (False, "ignored"),
    "--context-parallel-size": (True, "ignored"),
    "--tokenizer-not-use-fast": (False, "ignored"),
    "--make-vocab-size-divisible-by": (True, "ignored"),
    "--init-method-std": (True, "ignored"),
    "--use-fused-rmsnorm": (False, "ignored"),
    "--use-fused-swiglu": (False, "ignored"),
    "--use-fused-rotary-pos-emb": (False, "ignored"),
    "--no-masked-softmax-fusion": (False, "ignored"),
    "--attention-softmax-in-fp32": (False, "ignored"),
    "--initial-loss-scale": (True, "ignored"),
    "--no-gradient-accumulation-fusion": (False, "ignored"),
    "--transformer-impl": (True, "ignored"),
    "--use-distributed-optimizer": (False, "ignored"),
    "--overlap-grad-reduce": (False, "ignored"),
    "--overlap-param-gather": (False, "ignored"),
    "--no-shared-storage": (False, "ignored"),
    "--num-workers": (True, "ignored"),
    "--variable-seq-lengths": (False, "ignored"),
    "--no-rope-fusion": (False, "ignored"),
    "--rotary-base": (True, "ignored"),
    "--norm-epsilon": (True, "ignored"),
    "--use-mc2": (False, "ignored"),
    "--no-save-optim": (False, "ignored"),
    "--no-save-rng": (False, "ignored"),
    "--log-throughput": (False, "ignored"),
    "--no-check-for-nan-in-loss-and-grad": (False, "ignored"),
    "--manual-gc": (False, "ignored"),
    "--tensorboard-dir": (True, "ignored"),
    "--distributed-backend": (True, "ignored"),  # packft picks hccl/nccl/gloo by device
}

# shape flag -> HF config key it must equal
SHAPE_KEYS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "max_position_embeddings": "max_position_embeddings",
    "padded_vocab_size": "vocab_size",
    "kv_channels": "head_dim",
}


def dest(flag: str) -> str:
    return PREFIX + flag.removeprefix("--").replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser, own_options: set[str]) -> None:
    """Register the table's flags that ``packft train`` does not already have."""
    for flag, (takes_value, _role) in FLAGS.items():
        if flag.removeprefix("--").replace("-", "_") in own_options:
            continue
        kwargs: dict[str, Any] = {"dest": dest(flag), "default": argparse.SUPPRESS}
        kwargs["help"] = argparse.SUPPRESS  # listed once in README, not in --help
        if not takes_value:
            kwargs["action"] = "store_true"
        parser.add_argument(flag, **kwargs)


@dataclass
class Passthrough:
    """MindSpeed flags given on the command line, by role (names without ``--``, ``_`` form)."""

    values: dict[str, Any] = field(default_factory=dict)

    def names(self, role: str) -> list[str]:
        return [n for n in self.values if FLAGS["--" + n.replace("_", "-")][1] == role]

    def summary(self) -> str | None:
        """One line: what was used, checked and ignored (None when no such flag was given)."""
        if not self.values:
            return None
        parts = []
        for role, label in (("used", "used"), ("shape", "checked against the model"),
                            ("ignored", "ignored (no effect in packft)")):  # fmt: skip
            names = ", ".join("--" + n.replace("_", "-") for n in self.names(role))
            if names:
                parts.append(f"{label}: {names}")
        return "MindSpeed flags " + "; ".join(parts)

    def expected_shape(self) -> dict[str, Any]:
        """HF config key -> value the flags imply (only what the flags say)."""
        v, want = self.values, {}
        for name, key in SHAPE_KEYS.items():
            if name in v:
                want[key] = int(v[name])
        if v.get("group_query_attention") and "num_query_groups" in v:
            want["num_key_value_heads"] = int(v["num_query_groups"])
        elif "num_attention_heads" in v and not v.get("group_query_attention"):
            want["num_key_value_heads"] = int(v["num_attention_heads"])  # Megatron builds MHA
        if v.get("untie_embeddings_and_output_weights"):
            want["tie_word_embeddings"] = False
        if v.get("swiglu"):
            want["hidden_act"] = "silu"
        if v.get("disable_bias_linear"):
            want["mlp_bias"] = False
        return want

    def check_model(self, config: dict[str, Any], where: str) -> None:
        """Raise one error naming both values of every shape flag the checkpoint contradicts."""
        defaults = {"tie_word_embeddings": True, "mlp_bias": False}
        mismatches = []
        for key, want in self.expected_shape().items():
            have = config.get(key, defaults.get(key))
            if key == "head_dim" and have is None:
                have = config["hidden_size"] // config["num_attention_heads"]
            if have != want:
                flag = _flag_for(key)
                mismatches.append(f"{flag} {want} but the checkpoint has {key}={have}")
        norm = self.values.get("normalization")
        if norm is not None and norm != "RMSNorm":
            mismatches.append(f"--normalization {norm} but the checkpoint uses RMSNorm")
        rope = self.values.get("position_embedding_type")
        if rope is not None and rope != "rope":
            mismatches.append(f"--position-embedding-type {rope} but the checkpoint uses rope")
        if mismatches:
            raise UsageError(
                f"the MindSpeed flags do not describe the model in {where}: "
                + "; ".join(mismatches)
                + " (fix the flags or load the checkpoint they describe)"
            )


def _flag_for(key: str) -> str:
    names = {v: k for k, v in SHAPE_KEYS.items()}
    names.update(num_key_value_heads="num_query_groups", tie_word_embeddings="untie_embeddings_"
                 "and_output_weights", hidden_act="swiglu", mlp_bias="disable_bias_linear")  # fmt: skip
    return "--" + names[key].replace("_", "-")


def take_passthrough(args: argparse.Namespace) -> Passthrough:
    """Remove the MindSpeed flags from ``args``; set the config options they translate to."""
    values = {
        name.removeprefix(PREFIX): getattr(args, name)
        for name in list(vars(args))
        if name.startswith(PREFIX)
    }
    for name in list(vars(args)):
        if name.startswith(PREFIX):
            delattr(args, name)
    _check_values(values)
    _translate(values, args)
    return Passthrough(values)


def _check_values(v: dict[str, Any]) -> None:
    """Values of used flags that packft cannot honour are errors, not silent differences."""
    rules = [
        ("lr_decay_style", lambda x: x == "cosine", "packft decays with cosine"),
        ("tokenizer_type", lambda x: x == "PretrainedFromHF", "packft reads HF tokenizers"),
        ("stage", lambda x: x == "sft", "packft train does supervised fine-tuning"),
        ("ckpt_format", lambda x: x in ("torch", "torch_dist"), "packft reads torch, torch_dist"),
        ("attention_dropout", lambda x: float(x) == 0, "packft trains without dropout"),
        ("hidden_dropout", lambda x: float(x) == 0, "packft trains without dropout"),
    ]  # fmt: skip
    for name, ok, why in rules:
        if name in v and not ok(v[name]):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {v[name]} is not supported: {why}; drop the flag")


def _translate(v: dict[str, Any], args: argparse.Namespace) -> None:
    """Used flags -> TrainConfig options, unless the option itself was given."""
    given = vars(args)
    if "lr_warmup_fraction" in v and "lr_warmup_iters" not in given:
        iters = given.get("train_iters") or given.get("lr_decay_iters")
        if iters is None:
            raise UsageError("--lr-warmup-fraction needs --train-iters (warmup = fraction x iters)")
        args.lr_warmup_iters = round(float(v["lr_warmup_fraction"]) * int(iters))
    if "lr_decay_iters" in v and int(v["lr_decay_iters"]) != given.get("train_iters"):
        raise UsageError(
            f"--lr-decay-iters {v['lr_decay_iters']} differs from --train-iters "
            f"{given.get('train_iters')}: packft decays over --train-iters; drop --lr-decay-iters"
        )
    if v.get("recompute_activations") and "recompute_granularity" not in given:
        args.recompute_granularity = "selective"
    if v.get("neat_pack") and "pack_mode" not in given:
        args.pack_mode = "neat"


def megatron_flags(
    granularity: str | None, num_layers: int | None, method: str | None
) -> list[str]:
    """The same recomputation for MindSpeed's trainer (``--engine mindspeed``). Megatron's full
    recomputation needs a method: every layer is ``uniform`` with groups of 1 layer."""
    if granularity is None:
        return []
    if granularity == "selective":
        return ["--recompute-granularity", "selective"]
    if num_layers is None or method == "uniform":
        return ["--recompute-granularity", "full", "--recompute-method", "uniform",
                "--recompute-num-layers", "1"]  # fmt: skip
    return ["--recompute-granularity", "full", "--recompute-method", "block",
            "--recompute-num-layers", str(num_layers)]  # fmt: skip
