"""Reading Megatron-mcore checkpoints as a stream of HF layers: ``torch`` and ``torch_dist`` formats.

What is read. ``--load-dir`` is a Megatron save directory (``latest_checkpointed_iteration.txt``
naming ``iter_{n:07d}`` or ``release``) or one iteration directory. Inside it either

* ``torch`` (legacy) format: ``mp_rank_{tp:02d}[_{pp:03d}]/model_optim_rng.pt`` per rank, as
  MindSpeed's converter and Megatron's ``--ckpt-format torch`` training saves write them (with or
  without optimizer, scheduler, RNG and rerun state; only ``args`` and ``model`` are used); or
* ``torch_dist`` format (:mod:`packft.ckpt.torch_dist`): global tensors, layers stacked on axis 0,
  so the TP/PP layout of the writer does not matter.

Algorithm. Both formats are reduced to the same step: per layer, a list of TP-rank dicts of mcore
tensors, handed to ``packft.ckpt.tensors`` (merge TP, unfuse QKV and gate/up). The ``torch``
format yields one pipeline stage's memory-mapped files at a time; ``torch_dist`` reads each layer's
chunks on demand (a torch_dist global tensor is the TP-1 layout, so it is one "rank").

Checks, before anything is written: the args agree with the HF config (layers, sizes, heads,
groups, tied embeddings; TP/PP for the ``torch`` format), every tensor is a known mcore name for the
architecture, every layer is complete, and for ``torch_dist`` every stored chunk the model needs is
present in a file that is long enough.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from packft.ckpt.io import discover_ranks, find_iteration_dir, load_mcore_file
from packft.ckpt.keys import (
    GLOBAL_KEYS,
    HF_LAYER_PREFIX,
    MG_ALIASES,
    MG_IGNORED_SUFFIXES,
    MG_LAYER_PREFIX,
    ConvertError,
    ModelSpec,
    hf_config_from_args,
    spec_from_hf_config,
)
from packft.ckpt.tensors import mcore_ends_to_hf, mcore_layer_to_hf
from packft.ckpt.torch_dist import COMMON, DistCheckpoint, is_dist_checkpoint

LayerStream = Iterator[tuple[int, dict[str, torch.Tensor]]]
_MODEL_PREFIXES = ("embedding.", "decoder.", "output_layer.")
_EMBEDDING = "model.embed_tokens.weight"


def _layer_suffix(rest: str, spec: ModelSpec) -> str | None:
    """The canonical mcore layer suffix of ``rest`` (TE norm names folded in), if it is known."""
    suffix = MG_ALIASES.get(rest, rest)
    return suffix if suffix in {mg for mg, _ in spec.layer_keys.values()} else None


def split_mcore_keys(state: dict[str, Any], spec: ModelSpec) -> tuple[dict, dict]:
    """(layer local index -> suffix dict, whole-model dict); unknown keys are an error."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    ends: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.endswith(MG_IGNORED_SUFFIXES):
            continue
        m = re.fullmatch(re.escape(MG_LAYER_PREFIX) + r"(\d+)\.(.+)", key)
        suffix = _layer_suffix(m.group(2), spec) if m else None
        if m and suffix:
            layers.setdefault(int(m.group(1)), {})[suffix] = value
        elif not m and key in GLOBAL_KEYS.values():
            ends[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConvertError(f"unknown mcore tensors for a {spec.arch} model: {sorted(unknown)[:8]}")
    return layers, ends


def _check_args(args: Any, spec: ModelSpec, load_dir: Path, grid: list | None) -> None:
    checks = [
        ("num_layers", spec.num_layers),
        ("hidden_size", spec.hidden_size),
        ("ffn_hidden_size", spec.ffn_hidden_size),
        ("num_attention_heads", spec.num_heads),
        ("untie_embeddings_and_output_weights", not spec.tied),
    ]
    if grid is not None:  # torch_dist stores global tensors: the writer's TP/PP do not matter
        checks += [("tensor_model_parallel_size", len(grid[0])),
                   ("pipeline_model_parallel_size", len(grid))]  # fmt: skip
    if getattr(args, "group_query_attention", False):
        checks.append(("num_query_groups", spec.num_kv_heads))
    mismatch = [
        f"{name}: checkpoint args say {getattr(args, name)}, HF config implies {want}"
        for name, want in checks
        if getattr(args, name, want) != want
    ]
    if mismatch:
        raise ConvertError(
            f"{load_dir} does not match the HF config (wrong --hf-cfg-dir?): " + "; ".join(mismatch)
        )


def iter_mcore_as_hf(
    load_dir: Path,
    *,
    hf_cfg: dict[str, Any] | None = None,
    model_type_hf: str | None = None,
) -> tuple[dict[str, Any], LayerStream]:
    """HF config plus a stream of ``(layer index, HF tensors of that layer)``.

    The embedding comes with layer 0, the final norm and LM head with the last layer. Every check
    that can fail without reading weights runs before this returns.
    """
    iter_dir = find_iteration_dir(load_dir)
    dist = DistCheckpoint(iter_dir) if is_dist_checkpoint(iter_dir) else None
    if dist is not None and not any(k.startswith("decoder.layers.") for k in dist.shapes):
        raise ConvertError(
            f"{iter_dir} is a torch distributed checkpoint without Megatron decoder tensors "
            f"(it stores {sorted(dist.shapes)[:3]} ...); packft reads Megatron's torch_dist and "
            "torch formats (from torch_dcp, save again with --ckpt-format torch_dist)"
        )
    grid = None if dist is not None else discover_ranks(iter_dir)
    head_file = iter_dir / COMMON if grid is None else grid[0][0]
    head = dist.common() if dist is not None else load_mcore_file(head_file)
    if grid is not None and "model" not in head:
        extra = " (virtual pipeline stages are not supported)" if "model0" in head else ""
        raise ConvertError(f"{head_file} has no 'model' entry{extra}; keys: {sorted(head)}")
    args = head.get("args")
    if not isinstance(args, argparse.Namespace):
        if hf_cfg is None:
            raise ConvertError(f"{head_file} has no argparse.Namespace 'args'; pass --hf-cfg-dir")
        args = argparse.Namespace()
    cfg = hf_cfg if hf_cfg is not None else hf_config_from_args(args, model_type_hf)
    spec = spec_from_hf_config(cfg, model_type_hf or getattr(args, "model_type_hf", None))
    _check_args(args, spec, load_dir, grid)
    del head
    if dist is not None:
        return cfg, _dist_stream(dist, spec)
    return cfg, _rank_stream(grid, spec, load_dir)  # type: ignore[arg-type]


def _rank_stream(grid: list[list[Path]], spec: ModelSpec, load_dir: Path) -> LayerStream:
    """``torch`` format: one pipeline stage's rank files at a time."""
    start = 0
    for stage, files in enumerate(grid):
        split = [split_mcore_keys(load_mcore_file(p)["model"], spec) for p in files]
        local = sorted(split[0][0])
        if local != list(range(len(local))) or any(sorted(s[0]) != local for s in split):
            raise ConvertError(
                f"stage {stage}: layer numbers {local} are not 0..n-1 on every TP rank"
            )
        for j in local:
            yield (
                start + j,
                _to_hf(start + j, [s[0][j] for s in split], [s[1] for s in split], spec),
            )
        start += len(local)
        del split
    if start != spec.num_layers:
        raise ConvertError(f"{load_dir} holds {start} layers, the config says {spec.num_layers}")


def _to_hf(i: int, layer: list[dict], ends: list[dict], spec: ModelSpec) -> dict[str, torch.Tensor]:
    hf = {f"{HF_LAYER_PREFIX}{i}.{k}": v for k, v in mcore_layer_to_hf(layer, spec).items()}
    first, last = i == 0, i == spec.num_layers - 1
    if first or last:
        hf.update(mcore_ends_to_hf(ends, spec, first=first, last=last))
    return hf


def _dist_stream(ckpt: DistCheckpoint, spec: ModelSpec) -> LayerStream:
    """``torch_dist`` format: keys classified and chunks checked now, tensors read per layer."""
    stacked: dict[str, str] = {}  # suffix -> key with a leading layer axis
    per_layer: dict[int, dict[str, str]] = {}  # layer -> suffix -> key (non-homogeneous layers)
    ends, unknown = [], []
    for key, shape in ckpt.shapes.items():
        if not key.startswith(_MODEL_PREFIXES) or key.endswith(MG_IGNORED_SUFFIXES):
            continue  # optimizer state, RNG, extra state
        m = re.fullmatch(r"decoder\.layers\.(?:(\d+)\.)?(.+)", key)
        suffix = _layer_suffix(m.group(2), spec) if m else None
        if m and suffix and m.group(1) is None and shape[0] == spec.num_layers:
            stacked[suffix] = key
        elif m and suffix and m.group(1) is not None:
            per_layer.setdefault(int(m.group(1)), {})[suffix] = key
        elif not m and key in GLOBAL_KEYS.values():
            ends.append(key)
        else:
            unknown.append(f"{key} {list(shape)}")
    if unknown:
        raise ConvertError(
            f"{ckpt.directory}: tensors that are not part of a {spec.num_layers}-layer "
            f"{spec.arch} model: {sorted(unknown)[:8]}"
        )
    if sorted(per_layer) not in ([], list(range(spec.num_layers))):
        raise ConvertError(f"{ckpt.directory}: per-layer keys for layers {sorted(per_layer)}")
    needed = [*stacked.values(), *ends, *(k for d in per_layer.values() for k in d.values())]
    ckpt.check_complete(needed)
    return _dist_layers(ckpt, spec, stacked, per_layer, ends)


def _dist_layers(
    ckpt: DistCheckpoint,
    spec: ModelSpec,
    stacked: dict[str, str],
    per_layer: dict[int, dict[str, str]],
    ends: list[str],
) -> LayerStream:
    for i in range(spec.num_layers):
        layer = {suffix: ckpt.read(key, i) for suffix, key in stacked.items()}
        layer.update({suffix: ckpt.read(key) for suffix, key in per_layer.get(i, {}).items()})
        first, last = i == 0, i == spec.num_layers - 1
        wanted = [k for k in ends if (first if k == GLOBAL_KEYS[_EMBEDDING] else last)]
        yield i, _to_hf(i, [layer], [{k: ckpt.read(k) for k in wanted}], spec)
