"""``packft convert-ckpt``: Hugging Face <-> Megatron-mcore checkpoints (MindSpeed "torch" layout).

Layout written (../shared/docs/reference.md section 4), and read together with Megatron training
saves (optimizer, RNG, ``release``) and ``--ckpt-format torch_dist`` (``packft.ckpt.read``)::

    save_dir/latest_checkpointed_iteration.txt                      "1"
    save_dir/iter_0000001/mp_rank_{tp:02d}[_{pp:03d}]/model_optim_rng.pt
        {"args": Namespace, "checkpoint_version": 3.0, "iteration": 1, "model": {...}}

Algorithm. HF -> mcore walks the pipeline stages in order; for each layer of a stage it loads that
layer's HF tensors lazily, applies the pure functions of ``packft.ckpt.tensors`` (per-group
fused QKV, gate/up fused per TP rank, row/column splits) and files the pieces under layer numbers
local to the stage; then each TP rank file of the stage is saved. mcore -> HF memory-maps the TP
files of one stage, merges one layer at a time and writes it as its own safetensors shard
(``model-{i:05d}-of-{n:06d}.safetensors``, as MindSpeed names them) plus the index, and copies
config/tokenizer files from ``--hf-cfg-dir``.

Guarantees. HF -> mcore -> HF is bit-identical for every tensor (no dtype change unless
``--params-dtype``). Impossible splits and unknown or missing tensors are reported, all at once,
before anything is written. Output appears atomically; an existing ``--save-dir`` needs
``--overwrite``, and an unwritable one is reported before any weights are read. Megatron files
are unpickled through an allow-list (``packft.ckpt.safe_pickle``): nothing in them runs. Memory is
about S/PP for the stage being built plus one layer (one layer for torch_dist).

Checked against megatron-core 0.12.2 in tests/ckpt/test_megatron_interop.py: its ``GPTModel`` with
the local layer spec loads these files with ``strict=True`` at TP 1 and 2 and reproduces the HF
logits to < 2.2e-6 (float32, 32 tokens, init 0.1) for every supported architecture.

Cost: one layer in memory at a time; time and peak RSS measured by benchmarks/bench_convert.py
are in the README's benchmark table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from packft.ckpt.io import (
    LATEST_FILE,
    MODEL_FILE,
    DictReader,
    HFReader,
    check_save_dir,
    copy_hf_side_files,
    hf_shard_name,
    rank_dir_name,
    save_hf_shard,
    save_mcore_file,
    write_hf_index,
)
from packft.ckpt.keys import (
    ARCHS,
    DTYPES,
    HF_LAYER_PREFIX,
    MG_LAYER_PREFIX,
    ConvertError,
    ConvertUsageError,
    args_from_spec,
    check_hf_keys,
    plan_stages,
    spec_from_hf_config,
)
from packft.ckpt.options import ConvertConfig
from packft.ckpt.read import iter_mcore_as_hf
from packft.ckpt.tensors import hf_ends_to_mcore, hf_layer_to_mcore
from packft.core.atomic import atomic_dir

log = logging.getLogger(__name__)
Reader = HFReader | DictReader


# ---------------------------------------------------------------------------------- HF -> mcore
def hf_to_mcore(
    reader: Reader,
    hf_cfg: dict[str, Any],
    save_dir: Path,
    *,
    tp: int = 1,
    pp: int = 1,
    num_layer_list: str | None = None,
    params_dtype: str | None = None,
    model_type_hf: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``reader``'s weights as a TP x PP mcore checkpoint; returns ``save_dir``."""
    check_save_dir(save_dir, overwrite)
    spec = spec_from_hf_config(hf_cfg, model_type_hf)
    layers = plan_stages(spec, tp, pp, num_layer_list)
    check_hf_keys(reader.keys(), spec)
    dtype = DTYPES[params_dtype] if params_dtype else None

    def get(key: str) -> torch.Tensor:
        t = reader.get(key)
        return t.to(dtype) if dtype is not None else t

    args = None
    with atomic_dir(save_dir, replace=overwrite, label="convert") as tmp:
        (tmp / LATEST_FILE).write_text("1")
        start = 0
        for stage, n in enumerate(layers):
            first, last = stage == 0, stage == pp - 1
            ends = (
                {"model.embed_tokens.weight"} if first or (last and spec.tied and pp > 1) else set()
            )
            ends |= (
                {"model.norm.weight"} | (set() if spec.tied else {"lm_head.weight"})
                if last
                else set()
            )
            hf_ends = {k: get(k) for k in ends}
            if args is None:
                args = args_from_spec(
                    spec,
                    hf_cfg,
                    tp=tp,
                    pp=pp,
                    layer_list=layers,
                    dtype=next(iter(hf_ends.values())).dtype,
                )
            ranks = hf_ends_to_mcore(hf_ends, spec, tp, first=first, last=last, pp=pp)
            del hf_ends
            for local, i in enumerate(range(start, start + n)):
                prefix = f"{HF_LAYER_PREFIX}{i}."
                hf_layer = {s: get(prefix + s) for s in spec.layer_keys}
                for r, part in enumerate(hf_layer_to_mcore(hf_layer, spec, tp)):
                    ranks[r].update({f"{MG_LAYER_PREFIX}{local}.{k}": v for k, v in part.items()})
                del hf_layer
            for r in range(tp):
                save_mcore_file(
                    tmp / "iter_0000001" / rank_dir_name(r, stage, pp) / MODEL_FILE, ranks[r], args
                )
            log.info(
                "stage %d/%d: layers %d-%d written for %d TP ranks",
                stage + 1,
                pp,
                start,
                start + n - 1,
                tp,
            )
            del ranks
            start += n
    return save_dir


# ---------------------------------------------------------------------------------- mcore -> HF
def mcore_to_hf(
    load_dir: Path | str,
    save_dir: Path | str,
    *,
    hf_cfg_dir: Path | str | None = None,
    model_type_hf: str | None = None,
    params_dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an mcore checkpoint as sharded HF safetensors (+ index, config, tokenizer files)."""
    load_dir, save_dir = Path(load_dir), Path(save_dir)
    hf_cfg_dir = None if hf_cfg_dir is None else Path(hf_cfg_dir)
    check_save_dir(save_dir, overwrite, load_dir)
    hf_cfg = None
    if hf_cfg_dir is not None:
        if not (hf_cfg_dir / "config.json").is_file():
            raise FileNotFoundError(f"--hf-cfg-dir {hf_cfg_dir} has no config.json")
        hf_cfg = json.loads((hf_cfg_dir / "config.json").read_text())
    cfg, layers = iter_mcore_as_hf(load_dir, hf_cfg=hf_cfg, model_type_hf=model_type_hf)
    n = int(cfg["num_hidden_layers"])
    dtype = DTYPES[params_dtype] if params_dtype else None
    with atomic_dir(save_dir, replace=overwrite, label="convert") as tmp:
        weight_map: dict[str, str] = {}
        total = 0
        out_dtype = None
        for i, tensors in layers:
            if dtype is not None:
                tensors = {k: v.to(dtype) for k, v in tensors.items()}
            out_dtype = next(iter(tensors.values())).dtype
            name = hf_shard_name(i + 1, n)
            total += save_hf_shard(tmp / name, tensors)
            weight_map.update(dict.fromkeys(tensors, name))
        write_hf_index(tmp, weight_map, total)
        if hf_cfg_dir is not None:
            copy_hf_side_files(hf_cfg_dir, tmp)
        else:
            log.warning(
                "no --hf-cfg-dir: writing config.json from the checkpoint args, no tokenizer"
            )
        dtype_key = "torch_dtype" if "torch_dtype" in cfg else "dtype"
        held = str(out_dtype).removeprefix("torch.")  # state what the shards hold, as HF does
        if hf_cfg_dir is None or cfg.get(dtype_key) != held:
            cfg[dtype_key] = held
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return save_dir


# ------------------------------------------------------------------------------------ library API
def _hf_config_dict(config: Any) -> dict[str, Any]:
    return config if isinstance(config, dict) else config.to_dict()


def save_hf_as_mcore(
    model_dir_or_state: Path | str | dict[str, torch.Tensor],
    save_dir: Path | str,
    tp: int = 1,
    pp: int = 1,
    *,
    config: Any = None,
    num_layer_list: str | None = None,
    params_dtype: str | None = None,
    model_type_hf: str | None = None,
    overwrite: bool = False,
) -> Path:
    """HF directory, or state dict plus ``config`` (``PretrainedConfig`` or dict) -> mcore dir."""
    if isinstance(model_dir_or_state, dict):
        if config is None:
            raise ConvertError("save_hf_as_mcore(state_dict, ...) needs config=")
        state = dict(model_dir_or_state)
        cfg = _hf_config_dict(config)
        if cfg.get("tie_word_embeddings") and "lm_head.weight" in state:
            state.pop("lm_head.weight")  # the tied copy of the embedding
        reader: Reader = DictReader(state)
    else:
        model_dir = Path(model_dir_or_state)
        check_save_dir(Path(save_dir), overwrite, model_dir)
        if not model_dir.is_dir():
            what = "is not a directory" if model_dir.exists() else "does not exist"
            raise FileNotFoundError(f"--load-dir {model_dir} {what}; pass an HF model directory")
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir}/config.json is missing; pass an HF model directory"
            )
        cfg = (
            json.loads((model_dir / "config.json").read_text())
            if config is None
            else _hf_config_dict(config)
        )
        reader = HFReader(model_dir)
    return hf_to_mcore(
        reader,
        cfg,
        Path(save_dir),
        tp=tp,
        pp=pp,
        num_layer_list=num_layer_list,
        params_dtype=params_dtype,
        model_type_hf=model_type_hf,
        overwrite=overwrite,
    )


def load_mcore_as_hf(
    load_dir: Path | str, *, model_type_hf: str | None = None
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Merge all TP/PP shards into one HF state dict; the HF config is rebuilt from the args.

    Returns ``(transformers.PretrainedConfig, state)``; with tied embeddings ``state`` has no
    ``lm_head.weight`` (as in HF files): load it with ``model.load_state_dict(state, strict=False)``
    and check that only ``lm_head.weight`` is missing.
    """
    from transformers import AutoConfig

    cfg, layers = iter_mcore_as_hf(Path(load_dir), model_type_hf=model_type_hf)
    state: dict[str, torch.Tensor] = {}
    for _, tensors in layers:
        state.update({k: v.clone() for k, v in tensors.items()})  # detach from the mmapped files
    fields = {k: v for k, v in cfg.items() if k != "model_type"}
    return AutoConfig.for_model(cfg["model_type"], **fields), state


def convert(config: ConvertConfig) -> Path:
    """Run one conversion as ``config`` says (hf->mg or mg->hf); returns the output directory.
    What ``packft convert-ckpt`` and the flows' ``convert_checkpoint`` task both call."""
    c = config
    if c.load_model_type == "hf":
        return save_hf_as_mcore(
            c.load_dir, c.save_dir, c.target_tensor_parallel_size,
            c.target_pipeline_parallel_size, num_layer_list=c.num_layer_list,
            params_dtype=c.params_dtype, model_type_hf=c.model_type_hf, overwrite=c.overwrite,
        )  # fmt: skip
    return mcore_to_hf(
        Path(c.load_dir), Path(c.save_dir),
        hf_cfg_dir=Path(c.hf_cfg_dir) if c.hf_cfg_dir else None,
        model_type_hf=c.model_type_hf, params_dtype=c.params_dtype, overwrite=c.overwrite,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ CLI
def _help(name: str) -> str | None:
    return ConvertConfig.model_fields[name].description


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags modelled on MindSpeed-LLM's ``convert_ckpt_v2.py``; names, defaults and help are
    :class:`~packft.ckpt.options.ConvertConfig`'s."""
    fields = ConvertConfig.model_fields
    parser.add_argument("--load-model-type", choices=["hf", "mg"], default="hf")
    parser.add_argument("--save-model-type", choices=["mg", "hf"], default="mg")
    parser.add_argument("--load-dir", required=True, help=_help("load_dir"))
    parser.add_argument("--save-dir", required=True, help=_help("save_dir"))
    parser.add_argument(
        "--model-type-hf", choices=list(ARCHS), default=None, help=_help("model_type_hf")
    )
    parser.add_argument("--target-tensor-parallel-size", type=int, default=1)
    parser.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--num-layer-list", default=None, help=_help("num_layer_list"))
    parser.add_argument("--hf-cfg-dir", default=None, help=_help("hf_cfg_dir"))
    parser.add_argument(
        "--params-dtype", choices=list(DTYPES), default=None, help=_help("params_dtype")
    )
    parser.add_argument(
        "--overwrite", action="store_true", default=fields["overwrite"].default,
        help=_help("overwrite"),
    )  # fmt: skip


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    """The flags as a :class:`ConvertConfig`; an impossible combination is a usage error."""
    flags = {k: v for k, v in vars(args).items() if k in ConvertConfig.model_fields}
    try:
        return ConvertConfig(**flags)
    except ValidationError as error:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())
        raise ConvertUsageError(problems) from None


def run(args: argparse.Namespace) -> int:
    """Run one conversion and print a one-line JSON summary. Errors propagate to ``packft.cli``,
    which prints them as one line: exit 2 for impossible flags (``ConvertUsageError``), 1 for a
    checkpoint that cannot be read, a refused pickle, an unwritable ``--save-dir`` ..."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    convert(config_from_args(args))
    summary = {"save_dir": str(args.save_dir), "seconds": round(time.perf_counter() - t0, 3)}
    print(json.dumps(summary))
    return 0
