"""Pure tensor functions: one HF layer <-> the TP shards of one mcore layer, and the model ends.

Each function takes a state dict (keys relative to the layer, e.g. ``self_attn.q_proj.weight``)
and returns state dicts; nothing here reads or writes files, so every function is exact and easy
to test. The layouts follow ``packft.ckpt.keys.TP_LAYOUT``:

* ``qkv``: per KV group ``g`` the rows ``[q heads of g | k_g | v_g]`` are stacked (``ng`` blocks),
  then cut into TP row chunks; TP must divide ``ng`` so no group is split. Example, 4 heads, 2
  groups, head dim 2: q rows q0..q7, k rows k0..k3, v rows v0..v3 fuse to
  ``q0 q1 q2 q3 k0 k1 v0 v1 | q4 q5 q6 q7 k2 k3 v2 v3`` and TP rank r keeps block r.
* ``gate_up``: gate and up are each cut into TP row chunks, rank r holds ``cat(gate_r, up_r)``.
* ``rows``/``cols``: ``torch.chunk`` along dim 0/1. ``replicate``: every rank holds the tensor.

Outputs are fresh contiguous tensors (``clone``), so ``torch.save`` of one rank never drags in the
storage of the whole unsplit tensor.
"""

from __future__ import annotations

import torch

from packft.ckpt.keys import GLOBAL_KEYS, TP_LAYOUT, ConvertError, ModelSpec


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave per group: ``[q_g | k_g | v_g]`` for each group ``g`` (weights or biases)."""
    rest = q.shape[1:]
    parts = [t.reshape(groups, -1, *rest) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def unfuse_qkv(qkv: torch.Tensor, spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    """Inverse of ``fuse_qkv``: back to separate q, k, v (rows in HF head order)."""
    rest = qkv.shape[1:]
    q_rows = spec.num_heads // spec.num_kv_heads * spec.head_dim
    g = qkv.reshape(spec.num_kv_heads, -1, *rest)
    if g.shape[1] != q_rows + 2 * spec.head_dim:
        raise ConvertError(
            f"linear_qkv has {qkv.shape[0]} rows, expected {spec.num_kv_heads} groups x "
            f"{q_rows + 2 * spec.head_dim}; the checkpoint's args do not match its tensors"
        )
    q, k, v = g.split([q_rows, spec.head_dim, spec.head_dim], dim=1)
    return tuple(t.reshape(-1, *rest).contiguous() for t in (q, k, v))


def split_tp(t: torch.Tensor, layout: str, tp: int) -> list[torch.Tensor]:
    """Cut one full tensor into ``tp`` rank tensors (``qkv`` must already be fused)."""
    if layout == "replicate":
        return [t.clone()] * tp  # one copy shared by the ranks; never a view of a larger storage
    if layout in ("rows", "qkv"):
        return [c.clone() for c in t.chunk(tp, dim=0)]
    if layout == "cols":
        return [c.clone() for c in t.chunk(tp, dim=1)]
    if layout == "gate_up":
        gate, up = t.chunk(2, dim=0)
        return [torch.cat(p, dim=0) for p in zip(gate.chunk(tp), up.chunk(tp), strict=True)]
    raise ConvertError(f"unknown TP layout {layout!r}")


def merge_tp(shards: list[torch.Tensor], layout: str) -> torch.Tensor:
    """Inverse of ``split_tp``: one full tensor from the rank tensors."""
    if layout == "replicate":
        return shards[0]
    if layout in ("rows", "qkv"):
        return torch.cat(shards, dim=0)
    if layout == "cols":
        return torch.cat(shards, dim=1)
    if layout == "gate_up":
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    raise ConvertError(f"unknown TP layout {layout!r}")


def hf_layer_to_mcore(
    hf: dict[str, torch.Tensor], spec: ModelSpec, tp: int
) -> list[dict[str, torch.Tensor]]:
    """One HF decoder layer -> ``tp`` mcore rank dicts (keys relative to ``decoder.layers.i.``)."""
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for hf_key, (mg_key, part) in spec.layer_keys.items():
        if hf_key not in hf:
            raise ConvertError(f"layer tensor {hf_key} is missing")
        fused.setdefault(mg_key, {})[part or ""] = hf[hf_key]
    unknown = sorted(set(hf) - set(spec.layer_keys))
    if unknown:
        raise ConvertError(f"unknown {spec.arch} layer tensors: {unknown}")
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for mg_key, parts in fused.items():
        layout = TP_LAYOUT[mg_key]
        if layout == "qkv":
            full = fuse_qkv(parts["q"], parts["k"], parts["v"], spec.num_kv_heads)
        elif layout == "gate_up":
            full = torch.cat([parts["gate"], parts["up"]], dim=0)
        else:
            full = parts[""]
        for r, piece in enumerate(split_tp(full, layout, tp)):
            ranks[r][mg_key] = piece
    return ranks


def mcore_layer_to_hf(
    shards: list[dict[str, torch.Tensor]], spec: ModelSpec
) -> dict[str, torch.Tensor]:
    """The ``tp`` rank dicts of one mcore layer -> one HF layer dict (layer-relative keys)."""
    wanted = {mg for mg, _ in spec.layer_keys.values()}
    for r, shard in enumerate(shards):
        if set(shard) != wanted:
            raise ConvertError(
                f"TP rank {r}: layer tensors {sorted(shard)} do not match the {spec.arch} layout "
                f"{sorted(wanted)} (missing {sorted(wanted - set(shard))}, "
                f"unknown {sorted(set(shard) - wanted)})"
            )
    full = {mg: merge_tp([s[mg] for s in shards], TP_LAYOUT[mg]) for mg in wanted}
    out: dict[str, torch.Tensor] = {}
    for mg_key, tensor in full.items():
        layout = TP_LAYOUT[mg_key]
        if layout == "qkv":
            pieces = dict(zip("qkv", unfuse_qkv(tensor, spec), strict=True))
        elif layout == "gate_up":
            pieces = dict(zip(("gate", "up"), tensor.chunk(2, dim=0), strict=True))
        else:
            pieces = {"": tensor}
        for hf_key, (mg, part) in spec.layer_keys.items():
            if mg == mg_key:
                out[hf_key] = pieces[part or ""].contiguous()
    return out


def hf_ends_to_mcore(
    hf: dict[str, torch.Tensor], spec: ModelSpec, tp: int, *, first: bool, last: bool, pp: int
) -> list[dict[str, torch.Tensor]]:
    """Embedding (first stage), final norm and output layer (last stage) for each TP rank.

    With tied embeddings the output layer is stored only when PP > 1: the last stage then needs its
    own copy of the embedding, as Megatron keeps it.
    """
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    names = []
    if first:
        names.append("model.embed_tokens.weight")
    if last:
        names.append("model.norm.weight")
        if not spec.tied or pp > 1:
            names.append("lm_head.weight")
    for name in names:
        source = "model.embed_tokens.weight" if name == "lm_head.weight" and spec.tied else name
        mg_key = GLOBAL_KEYS[name]
        for r, piece in enumerate(split_tp(hf[source], TP_LAYOUT[mg_key], tp)):
            ranks[r][mg_key] = piece
    return ranks


def mcore_ends_to_hf(
    shards: list[dict[str, torch.Tensor]], spec: ModelSpec, *, first: bool, last: bool
) -> dict[str, torch.Tensor]:
    """Inverse of ``hf_ends_to_mcore``; trims a padded vocabulary back to ``spec.vocab_size``."""
    out: dict[str, torch.Tensor] = {}
    names = (["model.embed_tokens.weight"] if first else []) + (
        ["model.norm.weight"] + ([] if spec.tied else ["lm_head.weight"]) if last else []
    )
    for name in names:
        mg_key = GLOBAL_KEYS[name]
        missing = [r for r, s in enumerate(shards) if mg_key not in s]
        if missing:
            raise ConvertError(f"{mg_key} is missing from TP ranks {missing}")
        full = merge_tp([s[mg_key] for s in shards], TP_LAYOUT[mg_key])
        if TP_LAYOUT[mg_key] == "rows":
            if full.shape[0] < spec.vocab_size:
                raise ConvertError(
                    f"{mg_key} has {full.shape[0]} rows but the HF config's vocab_size is "
                    f"{spec.vocab_size}; pass the matching --hf-cfg-dir"
                )
            full = full[: spec.vocab_size]
        out[name] = full.contiguous()
    return out
