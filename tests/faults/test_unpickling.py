"""Nothing on disk is unpickled into code: every file type packft loads, with a smuggled payload.

Each case writes a pickle whose reduction is ``os.system("touch MARKER")`` (or a harmless-looking
global that is still not allowed) into one file type packft reads, runs the command that reads
it, and checks that the command fails with one line (exit 1), names the refused global, writes no
output, and that MARKER was never created. File types: Megatron/MindSpeed ``model_optim_rng.pt``
(convert-ckpt and train --load), MindSpeed's ``defaultdict`` with a non-type default factory,
torch_dist ``common.pt``, ``.metadata`` and tensor chunks, HF ``pytorch_model.bin``, and the
trainer's ``trainer_state.pt``, ``rng_rank*.pt``, DCP ``.metadata`` and DCP object items
(train --resume). Controls: the untouched files convert or resume, and a random-bytes file is a
one-line "not a readable checkpoint" error, not a traceback.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from packft.ckpt.convert import save_hf_as_mcore
from packft.ckpt.io import load_mcore_file
from packft.cli import main as cli_main
from tests.helpers.tiny_models import COMMON, QWEN2_UNTIED, build_model, tiny

pytestmark = pytest.mark.filterwarnings(  # the DCP fixtures are written by one process
    "ignore:torch.distributed is disabled:UserWarning"
)


class Smuggler:
    """Unpickling this runs ``touch MARKER`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def capsys(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> Any:
    """stderr, plus what loggers that reach a handler wrote (torch logs tracebacks on failures;
    its DCP event logger has only a NullHandler and does not propagate, so it never prints)."""
    capsys.logged = lambda: "".join(
        caplog.handler.format(r) + "\n"
        for r in caplog.records
        if logging.getLogger(r.name).propagate
    )
    return capsys


def refused(argv: list[str], capsys: Any, marker: Path, what: str) -> str:
    """Run ``packft argv``: exit 1, one line naming ``what``, and the payload never ran."""
    code = cli_main(argv)
    err = capsys.readouterr().err + capsys.logged()
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith(f"packft {argv[0]}: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err  # (transformers' load bar aside)
    assert what in errors[0], err
    assert not marker.exists(), "the smuggled os.system ran"
    return err


def mg_to_hf(load: Path, save: Path) -> list[str]:
    return ["convert-ckpt", "--load-model-type", "mg", "--save-model-type", "hf",
            "--load-dir", str(load), "--save-dir", str(save)]  # fmt: skip


# ---------------------------------------------------------------------------- converter inputs
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny HF model, its packft mcore conversion and a torch_dist copy of the same weights."""
    root = tmp_path_factory.mktemp("unpickle")
    arch, kwargs = tiny(QWEN2_UNTIED, num_hidden_layers=2)
    model = build_model(arch, {**COMMON, **kwargs})
    model.save_pretrained(root / "hf")
    save_hf_as_mcore(root / "hf", root / "mg")
    write_torch_dist(root / "mg", root / "dist")
    return {"hf": root / "hf", "mg": root / "mg", "dist": root / "dist"}


def write_torch_dist(mg: Path, out: Path) -> None:
    """The layout Megatron's torch_dist writes (global tensors, decoder layers stacked on axis 0,
    ``common.pt`` with the args, ``metadata.json``), written by torch's DCP without megatron."""
    import torch.distributed.checkpoint as dcp

    ckpt = load_mcore_file(mg / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt")
    layers: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
    tensors = {}
    for key, value in ckpt["model"].items():
        if key.startswith("decoder.layers."):
            layers["decoder.layers." + key.split(".", 3)[3]].append(value.clone())
        else:
            tensors[key] = value.clone()
    tensors.update({k: torch.stack(v) for k, v in layers.items()})
    iter_dir = out / "iter_0000010"
    dcp.save(tensors, checkpoint_id=iter_dir, no_dist=True)
    torch.save({"args": ckpt["args"], "iteration": 10, "checkpoint_version": 3.0},
               iter_dir / "common.pt")  # fmt: skip
    (iter_dir / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (out / "latest_checkpointed_iteration.txt").write_text("10")


def test_controls_convert(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The untouched torch and torch_dist files convert; random bytes are a one-line error."""
    assert cli_main(mg_to_hf(models["mg"], tmp_path / "a")) == 0
    assert cli_main(mg_to_hf(models["dist"], tmp_path / "b")) == 0
    bad = tmp_path / "bad"
    shutil.copytree(models["mg"], bad)
    pt = bad / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    pt.write_bytes(os.urandom(4096))
    refused(mg_to_hf(bad, tmp_path / "c"), capsys, tmp_path / "none", "not a readable checkpoint")


def test_mcore_rank_file(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    from packft.ckpt.safe_pickle import UnsafeCheckpointError
    from packft.train.config import TrainConfig
    from packft.train.loop import load_model

    marker, mg = tmp_path / "pwned", tmp_path / "mg"
    shutil.copytree(models["mg"], mg)
    pt = mg / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    obj = load_mcore_file(pt)
    obj["args"].evil = Smuggler(marker)
    torch.save(obj, tmp_path / "evil.pt", pickle_protocol=4)
    os.replace(tmp_path / "evil.pt", pt)  # never write over a file that is still memory-mapped
    refused(
        mg_to_hf(mg, tmp_path / "hf"), capsys, marker, "refused to unpickle the global posix.system"
    )
    assert not (tmp_path / "hf").exists()
    cfg = TrainConfig(data_path=str(tmp_path / "unused"), load=str(mg), save=str(tmp_path / "s"))
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_model(cfg)  # packft train --load
    assert not marker.exists()


@pytest.mark.parametrize("factory", ["os.system", "torch.device"])
def test_mindspeed_defaultdict_factory(assets_dir: Path, tmp_path: Path, capsys, factory: str):
    """MindSpeed's defaultdict(dict) loads (tests/test_convert.py); any other default factory is
    refused, even a global that is otherwise allowed."""
    marker, mg = tmp_path / "pwned", tmp_path / "ms"
    shutil.copytree(assets_dir / "mindspeed_ckpt" / "llama2_mg_tp1pp1", mg)
    pt = mg / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    obj = load_mcore_file(pt)
    default = os.system if factory == "os.system" else torch.device
    obj["model"] = collections.defaultdict(default, obj["model"])
    torch.save(obj, tmp_path / "evil.pt", pickle_protocol=4)
    os.replace(tmp_path / "evil.pt", pt)
    what = "posix.system" if factory == "os.system" else "default factory"
    refused(mg_to_hf(mg, tmp_path / "hf"), capsys, marker, what)


@pytest.mark.parametrize("part", ["common.pt", ".metadata", "tensor chunk"])
def test_torch_dist_files(models: dict[str, Path], tmp_path: Path, capsys, part: str) -> None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import MetadataIndex

    marker, dist = tmp_path / "pwned", tmp_path / "dist"
    shutil.copytree(models["dist"], dist)
    iter_dir = dist / "iter_0000010"
    if part == "common.pt":
        common = torch.load(iter_dir / "common.pt", weights_only=False)  # our own fixture
        common["args"].evil = Smuggler(marker)
        torch.save(common, iter_dir / "common.pt")
    else:
        metadata = pickle.loads((iter_dir / ".metadata").read_bytes())  # our own fixture
        if part == ".metadata":
            metadata.storage_meta.evil = Smuggler(marker)
        else:  # point one model tensor's chunk at a file holding the payload instead
            torch.save(Smuggler(marker), iter_dir / "__9_0.distcp")
            size = (iter_dir / "__9_0.distcp").stat().st_size
            key = "decoder.layers.self_attention.linear_proj.weight"
            chunk = metadata.state_dict_metadata[key].chunks[0]
            index = MetadataIndex(key, chunk.offsets)
            metadata.storage_data[index] = _StorageInfo("__9_0.distcp", 0, size)
        (iter_dir / ".metadata").write_bytes(pickle.dumps(metadata))
    refused(mg_to_hf(dist, tmp_path / "hf"), capsys, marker, "posix.system")
    assert not (tmp_path / "hf").exists()


def test_hf_bin_shard(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    marker, hf = tmp_path / "pwned", tmp_path / "hf"
    shutil.copytree(models["hf"], hf, ignore=shutil.ignore_patterns("*.safetensors"))
    state = dict(load_file(models["hf"] / "model.safetensors"), evil=Smuggler(marker))
    torch.save(state, hf / "pytorch_model.bin")
    argv = ["convert-ckpt", "--load-dir", str(hf), "--save-dir", str(tmp_path / "mg")]
    refused(argv, capsys, marker, "posix.system")


# ----------------------------------------------------------------------------- trainer checkpoints
@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, alpaca_en_path: Path, llama2_tokenizer_dir: Path
) -> dict[str, Any]:
    """One optimizer step of `packft train` with a checkpoint at step 1 (4 short Alpaca records,
    a 1-layer 32-dim Llama with the Llama-2 vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from packft.preprocess.config import PreprocessConfig
    from packft.preprocess.steps import preprocess
    from packft.train.config import TrainConfig
    from packft.train.loop import train

    root = tmp_path_factory.mktemp("trained")
    records = [r for r in json.loads(alpaca_en_path.read_text()) if len(r["output"]) < 200][:4]
    (root / "alpaca.json").write_text(json.dumps(records))
    preprocess(PreprocessConfig(
        input=str(root / "alpaca.json"), tokenizer_name_or_path=str(llama2_tokenizer_dir),
        output_prefix=str(root / "data"), prompt_type="llama2", pack=True, neat_pack=True,
        seq_length=256, cache_dir=str(root / "cache"),
    ))  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(root / "model")  # fmt: skip
    flags = dict(data_path=str(root / "data"), model=str(root / "model"), global_batch_size=1,
                 tracking=False, save_interval=1)  # fmt: skip
    train(TrainConfig(save=str(root / "run"), train_iters=1, **flags))
    argv = ["train", "--data-path", flags["data_path"], "--model", flags["model"],
            "--global-batch-size", "1", "--train-iters", "2", "--no-tracking", "--resume"]  # fmt: skip
    return {"run": root / "run", "argv": argv}


def resume_argv(trained: dict[str, Any], save: Path) -> list[str]:
    return [*trained["argv"], "--save", str(save)]


def test_trainer_control_resumes(trained: dict[str, Any], tmp_path: Path, capsys) -> None:
    shutil.copytree(trained["run"], tmp_path / "run")
    assert cli_main(resume_argv(trained, tmp_path / "run")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


@pytest.mark.parametrize(
    "part",
    ["trainer_state.pt", "rng_rank00000.pt", ".metadata", "dcp object item", "random bytes",
     "random .distcp"],
)  # fmt: skip
def test_trainer_files(trained: dict[str, Any], tmp_path: Path, capsys, part: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    marker, run = tmp_path / "pwned", tmp_path / "run"
    shutil.copytree(trained["run"], run)
    ckpt = run / "checkpoints" / "iter_0000001"
    what = "posix.system"
    if part in ("trainer_state.pt", "rng_rank00000.pt"):
        state = torch.load(ckpt / part, weights_only=False)  # our own fixture
        state["evil"] = Smuggler(marker)
        torch.save(state, ckpt / part)
    elif part == ".metadata":
        metadata = pickle.loads((ckpt / ".metadata").read_bytes())  # our own fixture
        metadata.storage_meta.evil = Smuggler(marker)
        (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    elif part == "dcp object item":  # a non-tensor entry of the optimizer state (param_groups)
        dcp_to_torch_save(ckpt, tmp_path / "flat.pt")
        state = torch.load(tmp_path / "flat.pt", weights_only=False)  # our own fixture
        state["optim"]["param_groups"][0]["lr"] = Smuggler(marker)
        for f in list(ckpt.glob("*.distcp")) + [ckpt / ".metadata"]:
            f.unlink()
        dcp.save(state, checkpoint_id=ckpt, no_dist=True)
    elif part == "random bytes":
        (ckpt / "trainer_state.pt").write_bytes(os.urandom(2048))
        what = "not a readable checkpoint"
    else:
        next(ckpt.glob("*.distcp")).write_bytes(os.urandom(2048))
        what = "the checkpoint is corrupt"
    refused(resume_argv(trained, run), capsys, marker, what)


def test_rng_files_of_older_packft_still_load_and_only_them(tmp_path: Path) -> None:
    """RNG files written before RNG states became tensors hold numpy's state tuple: exactly its
    globals are allowed for them (resume keeps working); another numpy object is refused."""
    import random

    import numpy as np

    from packft.ckpt.safe_pickle import UnsafeCheckpointError, load_weights_only
    from packft.train.checkpoint import _legacy_numpy_globals, rng_state, set_rng_state

    np.random.seed(11)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state()}  # fmt: skip
    torch.save(legacy, tmp_path / "old.pt")
    expected = np.random.random(3)
    np.random.seed(0)
    set_rng_state(load_weights_only(tmp_path / "old.pt", extra_globals=_legacy_numpy_globals()))
    assert np.array_equal(np.random.random(3), expected)
    torch.save(rng_state(), tmp_path / "new.pt")  # today's format: no numpy objects at all
    expected = np.random.random(3)
    set_rng_state(load_weights_only(tmp_path / "new.pt"))
    assert np.array_equal(np.random.random(3), expected)
    torch.save({"numpy": np.random.RandomState(1)}, tmp_path / "other.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle the global numpy"):
        load_weights_only(tmp_path / "other.pt", extra_globals=_legacy_numpy_globals())
