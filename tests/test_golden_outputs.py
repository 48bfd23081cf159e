"""Golden outputs: the bytes of the written datasets and converted checkpoints do not drift.

Refactors (the package layout, the tokenizer pipeline, the writer) must leave every output
byte-identical; this test pins the sha256 of each ``.bin/.idx`` file of a matrix of
``packft preprocess`` modes (MindSpeed-identical knapsack/drop, bfd/ffd/sequential, neat and
plain packs, split, truncate, mix, uint16 ids, llama2 and qwen templates, Alpaca and ShareGPT)
and of an HF -> mcore -> HF conversion, against ``tests/assets/golden/outputs.json``.

When an output is meant to change, regenerate the file with ``PACKFT_UPDATE_GOLDEN=1`` and say
why in the commit; the test then fails once more to show what changed, and passes after.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from packft.cli import main

GOLDEN = Path(__file__).resolve().parent / "assets" / "golden" / "outputs.json"
ALPACA_KEYS = '{"prompt":"instruction","query":"input","response":"output"}'

CASES: dict[str, tuple[str, str, str, list[str]]] = {
    # name: (input asset, tokenizer asset, handler, extra flags)
    "mindspeed_nopack": ("alpaca/llamafactory_alpaca_en_demo.json", "llama2-tokenizer", "Alpaca",
                         ["--prompt-type", "llama2", "--append-eod", "--seq-length", "4096",
                          "--pack-algorithm", "knapsack", "--overlong", "drop"]),
    "mindspeed_pack": ("alpaca/llamafactory_alpaca_en_demo.json", "llama2-tokenizer", "Alpaca",
                       ["--prompt-type", "llama2", "--append-eod", "--seq-length", "4096", "--pack",
                        "--pack-algorithm", "knapsack", "--overlong", "drop"]),
    "mindspeed_neat": ("sharegpt/llamafactory_glaive_toolcall_en_demo.json", "llama2-tokenizer",
                       "Sharegpt", ["--prompt-type", "llama2", "--seq-length", "1024", "--pack",
                                    "--neat-pack", "--pack-algorithm", "knapsack",
                                    "--overlong", "drop"]),
    "bfd_neat_truncate": ("sharegpt/llamafactory_glaive_toolcall_en_demo.json", "llama2-tokenizer",
                          "Sharegpt", ["--prompt-type", "llama2", "--seq-length", "512", "--pack",
                                       "--neat-pack", "--append-eod"]),
    "qwen_ffd_seed": ("sharegpt/fastchat_dummy_conversation_with_system.json", "qwen2.5-tokenizer",
                      "Sharegpt", ["--prompt-type", "qwen", "--seq-length", "1024", "--pack",
                                   "--neat-pack", "--pack-algorithm", "ffd", "--pack-seed", "7"]),
    "sequential_split_uint16": ("alpaca/llamafactory_alpaca_zh_demo.json", "llama2-tokenizer",
                                "Alpaca", ["--prompt-type", "llama2", "--seq-length", "256",
                                           "--pack", "--pack-algorithm", "sequential",
                                           "--overlong", "split", "--dtype", "optimal"]),
    "bfd_mix": ("alpaca/llamafactory_alpaca_en_demo.json", "llama2-tokenizer", "Alpaca",
                ["--prompt-type", "llama2", "--seq-length", "1024", "--pack", "--mix", "100",
                 "--pack-seed", "3", "--append-eod"]),
}  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def preprocess_digests(assets: Path, tmp: Path, name: str) -> dict[str, str]:
    data, tokenizer, handler, flags = CASES[name]
    prefix = tmp / name / "out"
    prefix.parent.mkdir(parents=True)
    argv = ["preprocess", "--input", str(assets / data),
            "--tokenizer-name-or-path", str(assets / tokenizer), "--output-prefix", str(prefix),
            "--handler-name", f"{handler}StyleInstructionHandler",
            "--cache-dir", str(tmp / name / "cache"), *flags]  # fmt: skip
    if handler == "Alpaca":
        argv += ["--map-keys", ALPACA_KEYS]
    assert main(argv) == 0
    files = sorted(prefix.parent.glob("out_packed_*_document.*"))
    assert len(files) == 6
    return {f.name: sha256(f) for f in files}


def conversion_digests(assets: Path, tmp: Path) -> dict[str, str]:
    """HF -> mcore (TP 2) -> HF of the tiny Llama-2 checkpoint: tensor bytes of every rank file,
    and the bytes of the final safetensors."""
    import torch

    from packft.ckpt.safe_pickle import load_restricted

    hf = assets / "mindspeed_ckpt" / "tiny_llama2_hf"
    mcore, back = tmp / "mcore", tmp / "back"
    assert main(["convert-ckpt", "--load-model-type", "hf", "--save-model-type", "mg",
                 "--load-dir", str(hf), "--save-dir", str(mcore),
                 "--target-tensor-parallel-size", "2"]) == 0  # fmt: skip
    assert main(["convert-ckpt", "--load-model-type", "mg", "--save-model-type", "hf",
                 "--load-dir", str(mcore), "--save-dir", str(back), "--hf-cfg-dir", str(hf)]) == 0  # fmt: skip
    out = {}
    for rank_file in sorted(mcore.rglob("model_optim_rng.pt")):
        state = load_restricted(rank_file)["model"]
        digest = hashlib.sha256()
        for key in sorted(state):
            tensor = state[key]
            if isinstance(tensor, torch.Tensor):
                digest.update(
                    key.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode()
                )
                digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
        out[str(rank_file.relative_to(mcore))] = digest.hexdigest()
    for f in sorted(back.glob("*.safetensors")):
        out[f"hf/{f.name}"] = sha256(f)
    return out


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


def check(golden: dict, section: str, digests: dict[str, str]) -> None:
    if os.environ.get("PACKFT_UPDATE_GOLDEN") == "1":
        golden[section] = digests
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert section in golden, f"no golden digests for {section}: run with PACKFT_UPDATE_GOLDEN=1"
    assert digests == golden[section]


@pytest.mark.parametrize("name", sorted(CASES))
def test_preprocess_outputs_are_unchanged(golden, assets_dir: Path, tmp_path: Path, name: str):
    check(golden, f"preprocess/{name}", preprocess_digests(assets_dir, tmp_path, name))


def test_conversion_outputs_are_unchanged(golden, assets_dir: Path, tmp_path: Path) -> None:
    check(golden, "convert/tiny_llama2_tp2", conversion_digests(assets_dir, tmp_path))
