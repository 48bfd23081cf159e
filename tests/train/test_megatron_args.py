"""MindSpeed's launch flags on `packft train`: the argument list of MindSpeed-LLM's
tune_llama2_7B_full_pack_ptd.sh (tests/assets) runs; shape flags are checked against the
checkpoint; the rest are listed once as ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packft.cli import main as cli_main
from packft.train.megatron_args import FLAGS
from tests.helpers.sft_setup import make_sft_setup

SEQ = 256
# the tiny model of this test, in Megatron flag terms (the script's are Llama-2-7B's)
TINY_SHAPE = {"--num-layers": "2", "--hidden-size": "32", "--ffn-hidden-size": "64",
              "--num-attention-heads": "4", "--max-position-embeddings": "512"}  # fmt: skip


def script_args(assets_dir: Path) -> list[list[str]]:
    """The asset's flags, one [flag, value...] group per line."""
    text = (assets_dir / "mindspeed_tune_llama2_7b_pack_args.txt").read_text()
    return [line.split() for line in text.splitlines() if line and not line.startswith("#")]


def flatten(groups: list[list[str]], root: Path, setup: dict) -> list[str]:
    paths = {"{CKPT_LOAD_DIR}": str(setup["mcore"]), "{TOKENIZER_MODEL}": str(setup["tok"]),
             "{DATA_PATH}": str(root / "packed")}  # fmt: skip
    return [paths.get(word, word) for group in groups for word in group]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llama2_tokenizer_dir, alpaca_en_path):
    from packft.ckpt.convert import save_hf_as_mcore

    root = tmp_path_factory.mktemp("megatron_args")
    make_sft_setup(root, llama2_tokenizer_dir, alpaca_en_path, samples=12, seq=SEQ,
                   initializer_range=0.02)  # fmt: skip
    save_hf_as_mcore(root / "model", root / "mcore")
    return {"root": root, "mcore": root / "mcore", "tok": llama2_tokenizer_dir}


def tiny_groups(assets_dir: Path) -> list[list[str]]:
    """The script's flags with the shape values of the tiny model (GQA: 2 query groups)."""
    groups = [
        [g[0], TINY_SHAPE[g[0]]] if g[0] in TINY_SHAPE else g for g in script_args(assets_dir)
    ]
    return groups + [["--group-query-attention"], ["--num-query-groups", "2"]]


def test_every_flag_of_the_script_is_known(assets_dir):
    from packft.train.config import TrainConfig

    for group in script_args(assets_dir):
        name = group[0].removeprefix("--").replace("-", "_")
        assert group[0] in FLAGS or name in TrainConfig.model_fields, group[0]
        if group[0] in FLAGS:
            assert FLAGS[group[0]][0] == (len(group) == 2), group


def test_the_mindspeed_argument_list_trains(setup, assets_dir, capsys):
    """The pasted list (tiny shapes) trains 1 step; used/checked/ignored listed once."""
    root = setup["root"]
    # the script's batch and step count are for 8 NPUs x 2000 steps; shrink them for CPU (later
    # flags win in argparse, as they do in Megatron)
    argv = ["train", *flatten(tiny_groups(assets_dir), root, setup), "--save", str(root / "s"),
            "--seq-length", str(SEQ), "--micro-batch-size", "1", "--global-batch-size", "2",
            "--train-iters", "1", "--no-tracking", "--fp32"]  # fmt: skip
    assert cli_main(argv) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["first_loss"] > 0
    listed = [line for line in err.splitlines() if "MindSpeed flags" in line]
    assert len(listed) == 1, err
    line = listed[0]
    assert "checked against the model: --num-layers, --hidden-size" in line
    ignored = line.split("ignored (no effect in packft): ")[1]
    for flag in ("--sequence-parallel", "--use-fused-rmsnorm", "--initial-loss-scale",
                 "--transformer-impl"):  # fmt: skip
        assert flag in ignored
    assert "--lr-warmup-fraction" in line.split("used: ")[1].split(";")[0]
    config = json.loads((root / "s" / "train_config.json").read_text())
    assert config["lr"] == 5e-5 and config["min_lr"] == 1.25e-7 and config["adam_beta2"] == 0.95
    assert config["weight_decay"] == 0.1 and config["lr_warmup_iters"] == 0  # round(0.01 x 1)


def test_a_shape_mismatch_names_both_values(setup, assets_dir, capsys):
    """The unmodified 7B flags against the tiny checkpoint: one line, every mismatch, exit 2."""
    root = setup["root"]
    argv = ["train", *flatten(script_args(assets_dir), root, setup), "--save", str(root / "x"),
            "--no-tracking"]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("packft train: error: the MindSpeed flags do not describe the model")
    assert "--num-layers 32 but the checkpoint has num_hidden_layers=2" in err
    assert "--hidden-size 4096 but the checkpoint has hidden_size=32" in err
    assert "--num-query-groups 32 but the checkpoint has num_key_value_heads=2" in err
    assert not (root / "x").exists()


def test_unsupported_values_and_unknown_flags_are_one_line_errors(setup, capsys):
    root = setup["root"]
    base = ["train", "--data-path", str(root / "packed"), "--load", str(setup["mcore"]),
            "--save", str(root / "y"), "--no-tracking"]  # fmt: skip
    assert cli_main([*base, "--lr-decay-style", "linear"]) == 2
    assert "--lr-decay-style linear is not supported: packft decays with cosine" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as usage:  # argparse: a typo is never swallowed
        cli_main([*base, "--lr-warmup-fraction", "0.1", "--no-such-megatron-flag"])
    assert usage.value.code == 2
    assert "unrecognized arguments: --no-such-megatron-flag" in capsys.readouterr().err
    assert not (root / "y").exists()


def test_recompute_flags_reach_the_loop_and_keep_the_loss(setup, assets_dir, capsys):
    """MindSpeed's --recompute-activations (selective) and --recompute-granularity full train
    with the same fp32 first-step loss as no recomputation."""
    root = setup["root"]
    base = ["train", *flatten(tiny_groups(assets_dir), root, setup), "--seq-length", str(SEQ),
            "--micro-batch-size", "1", "--global-batch-size", "2", "--train-iters", "1",
            "--no-tracking", "--fp32", "--no-shuffle"]  # fmt: skip
    losses = {}
    for name, extra in (("none", []), ("selective", ["--recompute-activations"]),
                        ("full", ["--recompute-granularity", "full"])):  # fmt: skip
        assert cli_main([*base, *extra, "--save", str(root / f"r_{name}")]) == 0
        losses[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["first_loss"]
        config = json.loads((root / f"r_{name}" / "train_config.json").read_text())
        assert config["recompute_granularity"] == (None if name == "none" else name)
    assert losses["selective"] == pytest.approx(losses["none"], rel=1e-6)
    assert losses["full"] == pytest.approx(losses["none"], rel=1e-6)


def test_recomputation_reaches_mindspeeds_command():
    from packft.train.megatron_args import megatron_flags

    assert megatron_flags(None, 3, None) == []
    assert megatron_flags("selective", None, None) == ["--recompute-granularity", "selective"]
    assert megatron_flags("full", 3, None)[-4:] == ["--recompute-method", "block",
                                                    "--recompute-num-layers", "3"]  # fmt: skip
    assert megatron_flags("full", None, None)[-3:] == ["uniform", "--recompute-num-layers", "1"]
