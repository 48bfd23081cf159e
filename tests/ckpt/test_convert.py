"""HF <-> Megatron-mcore conversion: exact round trips, a forward pass from mcore files, safety.

Tiny random models of every supported architecture (tests/helpers/tiny_models.py) are built with
transformers in the tests.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from packft.ckpt.convert import load_mcore_as_hf, mcore_to_hf, save_hf_as_mcore
from packft.ckpt.io import load_mcore_file
from packft.ckpt.keys import ConvertError
from packft.cli import main as cli_main
from tests.helpers.tiny_models import (
    COMMON,
    LLAMA2,
    LLAMA3,
    MISTRAL,
    QWEN2,
    QWEN2_UNTIED,
    build_model,
    tiny,
)

pytestmark = pytest.mark.filterwarnings(  # megatron-core's import-time notes (Megatron fixtures)
    "ignore:Transformer Engine and Apex are not installed:UserWarning",
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
    "ignore:torch.distributed is disabled:UserWarning",  # DCP fixtures written in one process
)
MODELS = {  # name: (transformers architecture prefix, config kwargs); 4 layers allow PP up to 4
    "llama2": tiny(LLAMA2, num_hidden_layers=4),
    "llama3": tiny(LLAMA3, num_hidden_layers=4),
    "mistral": tiny(MISTRAL, num_hidden_layers=4),
    "qwen2": tiny(QWEN2, num_hidden_layers=4),
    "qwen2-untied": tiny(QWEN2_UNTIED, num_hidden_layers=2),
}
LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2)]


def build(name: str, seed: int = 0) -> torch.nn.Module:
    arch, kwargs = MODELS[name]
    return build_model(arch, {**COMMON, **kwargs}, seed)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved HF directory per model; llama2 sharded (with an index), the others single-file."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name in MODELS:
        d = root / name
        build(name).save_pretrained(d, max_shard_size="40KB" if name == "llama2" else "1GB")
        (d / "tokenizer_config.json").write_text('{"model_max_length": 128}')
        out[name] = d
    return out


def hf_tensors(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def mcore_states(d: Path) -> dict[str, dict]:
    return {p.parent.name: load_mcore_file(p) for p in sorted(d.glob("iter_0000001/*/*.pt"))}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_bit_identical(name: str, hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    original = hf_tensors(hf_dirs[name])
    layers = MODELS[name][1]["num_hidden_layers"]
    for tp, pp in LAYOUTS:
        if pp > layers:
            continue
        mg, back = tmp_path / f"mg{tp}{pp}", tmp_path / f"hf{tp}{pp}"
        save_hf_as_mcore(hf_dirs[name], mg, tp, pp)
        assert sorted(
            p.parent.name for p in mg.glob("iter_0000001/*/model_optim_rng.pt")
        ) == sorted(
            f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "")
            for t in range(tp)
            for p in range(pp)
        )
        mcore_to_hf(mg, back, hf_cfg_dir=hf_dirs[name])
        assert_identical(original, hf_tensors(back))
        index = json.loads((back / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {
            f"model-{i:05d}-of-{layers:06d}.safetensors" for i in range(1, layers + 1)
        }
        assert (back / "tokenizer_config.json").read_text() == '{"model_max_length": 128}'
        assert json.loads((back / "config.json").read_text()) == json.loads(
            (hf_dirs[name] / "config.json").read_text()
        )


def test_uneven_stages_bf16_and_bin_input(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    """--num-layer-list 1,3; sharded .bin input read with weights_only; --params-dtype casts."""
    model = build("llama3")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(hf_dirs["llama3"] / "config.json", bin_dir)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    keys = sorted(state)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):  # 2 shards + index
        torch.save({k: state[k] for k in part}, bin_dir / f"pytorch_model-{i}.bin")
        weight_map.update(dict.fromkeys(part, f"pytorch_model-{i}.bin"))
    index = {"weight_map": weight_map}
    (bin_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    save_hf_as_mcore(bin_dir, tmp_path / "mg", 2, 2, num_layer_list="1,3", params_dtype="bf16")
    states = mcore_states(tmp_path / "mg")
    assert states["mp_rank_00_000"]["args"].num_layer_list == "1,3"
    assert states["mp_rank_00_000"]["args"].params_dtype == "bf16"
    layer_ids = {k.split(".")[2] for k in states["mp_rank_01_001"]["model"] if "layers" in k}
    assert layer_ids == {"0", "1", "2"}  # local numbering on the 3-layer stage
    assert all(t.dtype == torch.bfloat16 for s in states.values() for t in s["model"].values())
    mcore_to_hf(tmp_path / "mg", tmp_path / "back", hf_cfg_dir=bin_dir)
    assert_identical(
        {k: v.to(torch.bfloat16) for k, v in state.items()}, hf_tensors(tmp_path / "back")
    )
    assert json.loads((tmp_path / "back" / "config.json").read_text())["dtype"] == "bfloat16"


# ------------------------------------------------------------------------ layout facts and args
def test_layout_keys_args_and_pickle_protocol(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    for name, tied in (("qwen2", True), ("llama2", False)):
        for pp in (1, 2):
            mg = tmp_path / f"{name}{pp}"
            save_hf_as_mcore(hf_dirs[name], mg, 2, pp)
            assert (mg / "latest_checkpointed_iteration.txt").read_text() == "1"
            states = mcore_states(mg)
            last = "mp_rank_01" + ("_001" if pp > 1 else "")
            first = "mp_rank_01" + ("_000" if pp > 1 else "")
            assert "embedding.word_embeddings.weight" in states[first]["model"]
            assert "decoder.final_layernorm.weight" in states[last]["model"]
            # MindSpeed stores output_layer when untied, or when tied but split over stages.
            assert ("output_layer.weight" in states[last]["model"]) == (not tied or pp > 1)
            if pp > 1:
                assert "embedding.word_embeddings.weight" not in states[last]["model"]
                assert "decoder.layers.2.input_layernorm.weight" not in states[last]["model"]
            for s in states.values():
                assert s["checkpoint_version"] == 3.0 and s["iteration"] == 1
                assert isinstance(s["args"], argparse.Namespace)
    args = vars(states[last]["args"])
    expected = dict(
        num_layers=4,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=4,
        group_query_attention=False,
        padded_vocab_size=64,
        max_position_embeddings=128,
        rotary_base=10000.0,
        norm_epsilon=1e-5,
        swiglu=True,
        untie_embeddings_and_output_weights=True,
        add_qkv_bias=False,
        tensor_model_parallel_size=2,
        pipeline_model_parallel_size=2,
        params_dtype="fp32",
        kv_channels=8,
        position_embedding_type="rope",
        normalization="RMSNorm",
        model_type_hf="llama2",
    )
    assert {k: args[k] for k in expected} == expected
    assert all(v is None or isinstance(v, (int, float, str, bool)) for v in args.values())
    pt = next((tmp_path / "llama22").glob("iter_0000001/*/model_optim_rng.pt"))
    with zipfile.ZipFile(pt) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        assert z.read(pkl)[:2] == b"\x80\x04"  # pickle protocol 4, as MindSpeed writes


def test_load_mcore_as_hf_and_state_dict_input(tmp_path: Path) -> None:
    model = build("qwen2")
    save_hf_as_mcore(model.state_dict(), tmp_path / "mg", 2, 2, config=model.config)
    cfg, state = load_mcore_as_hf(tmp_path / "mg")
    assert type(cfg) is Qwen2Config and cfg.tie_word_embeddings and cfg.num_key_value_heads == 4
    clone = Qwen2ForCausalLM(cfg).eval()
    missing, unexpected = clone.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert torch.equal(clone(ids).logits, model(ids).logits)


# -------------------------------------------------------------- forward pass from mcore layout
def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding, rotate-half convention; x is [seq, heads, dim]."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.outer(torch.arange(x.shape[0], dtype=torch.float32), inv)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + half * sin


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def mcore_forward(mg: Path, ids: torch.Tensor) -> torch.Tensor:
    """Megatron-style tensor-parallel forward: each TP rank computes its own heads and FFN slice;
    row-parallel outputs (linear_proj, linear_fc2) are summed over ranks, like an all-reduce."""
    states = mcore_states(mg)
    a = next(iter(states.values()))["args"]
    tp, pp = a.tensor_model_parallel_size, a.pipeline_model_parallel_size
    d, heads, groups = a.kv_channels, a.num_attention_heads, a.num_query_groups
    stage = [
        [states[f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "")]["model"] for t in range(tp)]
        for p in range(pp)
    ]
    emb = torch.cat([r["embedding.word_embeddings.weight"] for r in stage[0]])  # vocab-parallel
    h = emb[ids]
    seq = ids.shape[0]
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    for ranks in stage:
        n_local = len({k.split(".")[2] for k in ranks[0] if k.startswith("decoder.layers.")})
        for i in range(n_local):
            L = f"decoder.layers.{i}."
            x = rms(h, ranks[0][L + "input_layernorm.weight"], a.norm_epsilon)
            attn = torch.zeros_like(h)
            for r in ranks:
                qkv = x @ r[L + "self_attention.linear_qkv.weight"].T
                if a.add_qkv_bias:
                    qkv = qkv + r[L + "self_attention.linear_qkv.bias"]
                g = qkv.view(seq, groups // tp, heads // groups + 2, d)  # [q.. | k | v] per group
                q = g[:, :, :-2].reshape(seq, -1, d)
                k = g[:, :, -2:-1].expand(-1, -1, heads // groups, -1).reshape(seq, -1, d)
                v = g[:, :, -1:].expand(-1, -1, heads // groups, -1).reshape(seq, -1, d)
                q, k = rope(q, a.rotary_base), rope(k, a.rotary_base)
                s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + mask
                o = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).reshape(seq, -1)
                attn = attn + o @ r[L + "self_attention.linear_proj.weight"].T
            h = h + attn
            x = rms(h, ranks[0][L + "pre_mlp_layernorm.weight"], a.norm_epsilon)
            mlp = torch.zeros_like(h)
            for r in ranks:
                gate, up = (x @ r[L + "mlp.linear_fc1.weight"].T).chunk(2, -1)
                mlp = mlp + (torch.nn.functional.silu(gate) * up) @ r[L + "mlp.linear_fc2.weight"].T
            h = h + mlp
    h = rms(h, stage[-1][0]["decoder.final_layernorm.weight"], a.norm_epsilon)
    key = "output_layer.weight" if "output_layer.weight" in stage[-1][0] else None
    head = (
        [r[key] for r in stage[-1]]
        if key
        else [r["embedding.word_embeddings.weight"] for r in stage[0]]
    )
    return torch.cat([h @ w.T for w in head], -1)  # column-parallel logits, gathered


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_from_mcore_matches_hf(name: str, hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = build(name)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (12,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids[None]).logits[0]
    for tp, pp in [(2, 2), (4, 1)] if name != "qwen2-untied" else [(2, 2)]:
        mg = tmp_path / f"mg{tp}{pp}"
        save_hf_as_mcore(hf_dirs[name], mg, tp, pp)
        got = mcore_forward(mg, ids)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------ errors & safety
def test_impossible_splits_fail_before_writing(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        (dict(tp=3), ["num_attention_heads=8, num_key_value_heads (query groups)=4", "[1, 2, 4]"]),
        (dict(tp=8), ["num_key_value_heads (query groups)=4 not divisible by --target-tensor"]),
        (dict(pp=3), ["num_layers=4", "--target-pipeline-parallel-size 3", "[1, 2, 4]"]),
        (dict(pp=2, num_layer_list="1,2"), ["--num-layer-list 1,2", "summing to num_layers=4"]),
    ]
    for kwargs, phrases in cases:
        with pytest.raises(ConvertError) as err:
            save_hf_as_mcore(hf_dirs["qwen2"], out, **kwargs)
        for phrase in phrases:
            assert phrase in str(err.value)
        assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_unsupported_arch_and_unknown_tensor(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "gpt2"
    shutil.copytree(hf_dirs["qwen2-untied"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ConvertError, match="model_type='gpt2'.*llama2, llama3, mistral, qwen2"):
        save_hf_as_mcore(bad, tmp_path / "o1")
    model = build("qwen2-untied")
    state = dict(model.state_dict(), **{"model.layers.0.mystery.weight": torch.zeros(2)})
    with pytest.raises(ConvertError, match="model.layers.0.mystery.weight"):
        save_hf_as_mcore(state, tmp_path / "o2", config=model.config)
    assert not (tmp_path / "o2").exists()
    save_hf_as_mcore(hf_dirs["qwen2-untied"], tmp_path / "mg")
    with pytest.raises(
        ConvertError, match="num_layers: checkpoint args say 2, HF config implies 4"
    ):
        mcore_to_hf(tmp_path / "mg", tmp_path / "o3", hf_cfg_dir=hf_dirs["qwen2"])
    assert not (tmp_path / "o3").exists()


def test_existing_save_dir_needs_overwrite(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mg"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_hf_as_mcore(hf_dirs["qwen2-untied"], out)
    assert (out / "keep.txt").exists()
    save_hf_as_mcore(hf_dirs["qwen2-untied"], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "iter_0000001").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["mg"]  # no temp dirs left behind


def test_cli_both_directions(hf_dirs: dict[str, Path], tmp_path: Path, capsys) -> None:
    src = hf_dirs["llama3"]
    mg, back = tmp_path / "mg", tmp_path / "back"
    base = ["convert-ckpt", "--load-dir"]
    assert (
        cli_main(
            base
            + [
                str(src),
                "--save-dir",
                str(mg),
                "--model-type-hf",
                "llama3",
                "--target-tensor-parallel-size",
                "2",
                "--target-pipeline-parallel-size",
                "2",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            base
            + [
                str(mg),
                "--save-dir",
                str(back),
                "--load-model-type",
                "mg",
                "--save-model-type",
                "hf",
                "--hf-cfg-dir",
                str(src),
            ]
        )
        == 0
    )
    assert_identical(hf_tensors(src), hf_tensors(back))
    assert (
        cli_main(
            base
            + [str(src), "--save-dir", str(tmp_path / "x"), "--target-tensor-parallel-size", "3"]
        )
        == 2
    )
    assert "not divisible by --target-tensor-parallel-size 3" in capsys.readouterr().err
    assert (
        cli_main(base + [str(src), "--save-dir", str(tmp_path / "y"), "--model-type-hf", "qwen2"])
        == 2
    )
    assert "--model-type-hf qwen2 expects HF model_type 'qwen2'" in capsys.readouterr().err


def test_one_convert_config_for_the_cli_and_the_flows(
    hf_dirs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """The CLI's flags and the flows' YAML are one model, with one (safe) overwrite default."""
    from packft import pipeline_config
    from packft.ckpt.convert import add_arguments, config_from_args, convert
    from packft.ckpt.options import ConvertConfig

    assert pipeline_config.ConvertConfig is ConvertConfig
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--load-dir", "a", "--save-dir", "b"])
    assert config_from_args(args) == ConvertConfig(load_dir="a", save_dir="b")
    assert ConvertConfig(load_dir="a", save_dir="b").overwrite is False
    out = tmp_path / "mg"
    out.mkdir()
    flow_like = ConvertConfig(load_dir=str(hf_dirs["qwen2-untied"]), save_dir=str(out))
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(flow_like)  # a flow must say overwrite: true to replace its intermediate
    assert convert(flow_like.model_copy(update={"overwrite": True})) == out
    assert (out / "iter_0000001").is_dir()
    argv = ["convert-ckpt", "--load-dir", "a", "--save-dir", "b", "--save-model-type", "hf"]
    assert cli_main(argv) == 2  # hf -> hf
    assert "hf->mg or mg->hf" in capsys.readouterr().err


MINDSPEED_CKPT = "mindspeed_ckpt/llama2_mg_tp1pp1"
MINDSPEED_HF = "mindspeed_ckpt/tiny_llama2_hf"


@pytest.mark.parametrize("with_cfg", [True, False], ids=["hf-cfg-dir", "args-only"])
def test_real_mindspeed_checkpoint_converts_back_bit_exact(
    assets_dir: Path, tmp_path: Path, capsys, with_cfg: bool
) -> None:
    """MindSpeed-LLM's convert_ckpt_v2.py output (its pickle holds collections.defaultdict) ->
    exactly the bf16 HF tensors it was made from, with --hf-cfg-dir or from its args alone."""
    src, hf = assets_dir / MINDSPEED_CKPT, assets_dir / MINDSPEED_HF
    pt = src / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    assert type(load_mcore_file(pt)["model"]) is collections.defaultdict
    out = tmp_path / "hf"
    cmd = ["convert-ckpt", "--load-model-type", "mg", "--save-model-type", "hf",
           "--load-dir", str(src), "--save-dir", str(out)]  # fmt: skip
    assert cli_main(cmd + (["--hf-cfg-dir", str(hf)] if with_cfg else [])) == 0
    assert json.loads(capsys.readouterr().out)["save_dir"] == str(out)
    assert_identical(load_file(hf / "model.safetensors"), hf_tensors(out))
    config = json.loads((out / "config.json").read_text())
    want = json.loads((hf / "config.json").read_text())
    for key in ("num_key_value_heads", "intermediate_size", "vocab_size", "rms_norm_eps"):
        assert config[key] == want[key], key
    _, state = load_mcore_as_hf(src)  # what `packft train --load` reads
    assert_identical(state, {k: v for k, v in load_file(hf / "model.safetensors").items()})


TRAINING_VARIANTS = {  # name: (TP, PP, write_training_checkpoint options)
    "full-tp2pp2": (2, 2, {}),
    "no-save-optim": (2, 1, dict(no_save_optim=True)),
    "no-save-rng": (1, 2, dict(no_save_rng=True)),
    "release-te-distrib-optim": (2, 1, dict(release=True, te=True, distributed_optimizer=True)),
    "padded-vocab": (1, 1, dict(pad_vocab_to=128)),
}


@pytest.mark.parametrize("variant", list(TRAINING_VARIANTS))
def test_megatron_training_checkpoints_convert_and_load(
    hf_dirs: dict[str, Path], tmp_path: Path, variant: str
) -> None:
    """Checkpoints as Megatron-LM's training loop saves them (tests/helpers/megatron_ckpt.py: args with
    dtypes and enums, optimizer, scheduler, RNG and rerun state, --no-save-optim/--no-save-rng,
    release directory, TE names, padded vocabulary) convert back exactly and load for training."""
    from packft.ckpt.safe_pickle import Opaque
    from tests.helpers.megatron_ckpt import write_training_checkpoint

    tp, pp, options = TRAINING_VARIANTS[variant]
    src = hf_dirs["qwen2"]
    save_hf_as_mcore(src, tmp_path / "ours", tp, pp)
    trained = write_training_checkpoint(tmp_path / "ours", tmp_path / "megatron", **options)
    iter_dir = trained / ("release" if options.get("release") else "iter_0000500")
    first = load_mcore_file(sorted(iter_dir.glob("mp_rank_*/model_optim_rng.pt"))[0])
    backend = first["args"].attention_backend  # an inert record: nothing was imported or run
    assert isinstance(backend, Opaque) and backend.qualname.endswith("enums.AttnBackend")
    assert first["args"].params_dtype is torch.bfloat16
    assert ("optimizer" in first) is not options.get("no_save_optim", False)
    assert ("rng_state" in first) is not options.get("no_save_rng", False)
    for load_dir in (trained, iter_dir):  # the save directory, or one iteration directory
        out = tmp_path / f"hf-{load_dir.name}"
        mcore_to_hf(load_dir, out, hf_cfg_dir=src)
        assert_identical(hf_tensors(src), hf_tensors(out))
    cfg, state = load_mcore_as_hf(trained)  # `packft train --load`, without an HF config
    expected = hf_tensors(src)
    if options.get("pad_vocab_to"):  # the config then keeps Megatron's padded vocabulary
        assert cfg.vocab_size == 128
        embedding = state["model.embed_tokens.weight"]
        assert torch.equal(embedding[:64], expected["model.embed_tokens.weight"])
        assert not embedding[64:].any()
    else:
        assert type(cfg) is Qwen2Config and cfg.num_key_value_heads == 4
        assert_identical(state, expected)


def test_rope_scaling_saved_as_megatron_args(tmp_path: Path) -> None:
    rope = dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
    )
    cfg = LlamaConfig(**COMMON, **{**MODELS["llama3"][1], "rope_parameters": rope})
    model = LlamaForCausalLM(cfg)
    save_hf_as_mcore(model.state_dict(), tmp_path / "mg", config=cfg)
    args = mcore_states(tmp_path / "mg")["mp_rank_00"]["args"]
    assert (args.use_rope_scaling, args.rope_scaling_factor, args.rotary_base) == (
        True,
        8.0,
        500000.0,
    )
    assert args.rope_scaling_original_max_position_embeddings == 64
    back, _ = load_mcore_as_hf(tmp_path / "mg")
    assert back.rope_parameters["rope_type"] == "llama3" and back.rope_parameters["factor"] == 8.0


def test_streams_one_layer_at_a_time(hf_dirs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """HF tensors are fetched lazily in layer order, each once (the tied embedding twice: first and
    last stage), and each stage's mcore files are written before the next stage is read."""
    from packft.ckpt import convert
    from packft.ckpt import io as ckpt_io

    events: list[str] = []
    real_get, real_save = ckpt_io.HFReader.get, convert.save_mcore_file
    monkeypatch.setattr(
        ckpt_io.HFReader, "get", lambda self, k: events.append(k) or real_get(self, k)
    )
    monkeypatch.setattr(
        convert, "save_mcore_file", lambda p, *a: events.append(str(p)) or real_save(p, *a)
    )
    save_hf_as_mcore(hf_dirs["qwen2"], tmp_path / "mg", 2, 2)
    fetched = [e for e in events if not e.endswith(".pt")]
    assert sorted(fetched) == sorted([*hf_tensors(hf_dirs["qwen2"]), "model.embed_tokens.weight"])
    layer_of = [int(k.split(".")[2]) for k in fetched if k.startswith("model.layers.")]
    assert layer_of == sorted(layer_of)
    first_stage_saved = max(
        i for i, e in enumerate(events) if e.endswith("_000/model_optim_rng.pt")
    )
    assert all(
        not e.startswith(("model.layers.2.", "model.layers.3.")) for e in events[:first_stage_saved]
    )


def test_unreadable_mcore_layouts_are_explained(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="latest_checkpointed_iteration.txt is missing"):
        mcore_to_hf(hf_dirs["qwen2"], tmp_path / "o")
    dist = tmp_path / "dist"
    (dist / "iter_0000100").mkdir(parents=True)
    (dist / "iter_0000100" / "__0_0.distcp").write_bytes(b"")
    (dist / "latest_checkpointed_iteration.txt").write_text("100")
    with pytest.raises(FileNotFoundError, match="distributed checkpoint without its .metadata"):
        mcore_to_hf(dist, tmp_path / "o")
    mg = tmp_path / "mg"
    save_hf_as_mcore(hf_dirs["qwen2-untied"], mg, 2, 1)
    shutil.rmtree(mg / "iter_0000001" / "mp_rank_01")
    shutil.copytree(mg / "iter_0000001" / "mp_rank_00", mg / "iter_0000001" / "mp_rank_02")
    with pytest.raises(
        FileNotFoundError, match=r"incomplete for TP=3 PP=1; missing \['mp_rank_01'\]"
    ):
        mcore_to_hf(mg, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_checkpoint_errors_are_one_line(
    hf_dirs: dict[str, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    """Unreadable inputs and unwritable outputs: exit 1, one line naming the file, nothing written;
    an unwritable --save-dir is found before any weights are read."""

    def fails(argv: list[str], *phrases: str) -> None:
        assert cli_main(["convert-ckpt", *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("packft convert-ckpt: error: "), err
        assert all(p in err for p in phrases), err
        assert not list(tmp_path.glob("out*")), "nothing may be written"

    out = str(tmp_path / "out")
    mg_hf = ["--load-model-type", "mg", "--save-model-type", "hf"]
    src = hf_dirs["qwen2-untied"]
    for damage in ("random", "truncated", "directory"):
        bad = tmp_path / f"hf-{damage}"
        shutil.copytree(src, bad)
        weights = bad / "model.safetensors"
        if damage == "random":
            weights.write_bytes(os.urandom(5000))
        elif damage == "truncated":
            weights.write_bytes(weights.read_bytes()[:-100])
        else:  # unreadable whoever runs the test (root reads a chmod 000 file)
            weights.unlink()
            weights.mkdir()
        fails(["--load-dir", str(bad), "--save-dir", out], str(weights), "cannot be read")
    mg = tmp_path / "mg"
    save_hf_as_mcore(src, mg)
    pt = mg / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    pt.write_bytes(os.urandom(3000))
    fails([*mg_hf, "--load-dir", str(mg), "--save-dir", out], str(pt), "not a readable checkpoint")
    import torch.distributed.checkpoint as dcp

    plain_dcp = tmp_path / "dcp" / "iter_0000001"  # e.g. packft train's own checkpoints
    dcp.save({"model.model.norm.weight": torch.ones(4)}, checkpoint_id=plain_dcp, no_dist=True)
    fails([*mg_hf, "--load-dir", str(plain_dcp), "--save-dir", out], "without Megatron decoder")
    fails(["--load-dir", str(tmp_path / "nope"), "--save-dir", out], "nope does not exist")
    fails([*mg_hf, "--load-dir", str(tmp_path / "nope"), "--save-dir", out], "nope does not exist")
    (tmp_path / "file").write_text("x")
    fails(["--load-dir", str(src), "--save-dir", str(tmp_path / "file" / "out")], "ENOTDIR")
    monkeypatch.setenv("PACKFT_FAULT", "convert.save_dir.probe=erofs")
    # the corrupt mg checkpoint is never opened: the read-only target is reported first
    fails([*mg_hf, "--load-dir", str(mg), "--save-dir", out], "EROFS (Read-only file system)",
          "nothing was converted")  # fmt: skip
