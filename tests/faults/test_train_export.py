"""A LoRA run's adapter export under faults (``PACKFT_FAULT=lora.adapter.<point>``): a kill
before the commit leaves the previous adapter byte-identical; a kill mid-commit leaves no
adapter_config.json (PEFT refuses it) rather than new weights under an old config; a full disk
is one line, exit 1, the previous adapter kept and no temporary left; the next run sweeps up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.sft_setup import make_sft_setup

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llama2_tokenizer_dir, alpaca_en_path):
    return make_sft_setup(tmp_path_factory.mktemp("export"), llama2_tokenizer_dir, alpaca_en_path)


def run_train(setup, lr: str, fault: str | None = None) -> subprocess.CompletedProcess:
    root = setup["root"]
    env = {k: v for k, v in os.environ.items() if k not in ("PACKFT_FAULT", "PACKFT_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env["PACKFT_FAULT"] = fault
    argv = [sys.executable, "-m", "packft", "train", "--data-path", str(root / "packed"),
            "--model", str(root / "model"), "--save", str(root / "run"), "--no-tracking",
            "--global-batch-size", "2", "--train-iters", "1", "--lr", lr,
            "--lora-target-modules", "linear_qkv", "linear_fc2", "--lora-r", "4"]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def adapter_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "run" / "adapter").iterdir())}


def loads_in_peft(root: Path) -> bool:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "model"),
                                  root / "run" / "adapter")  # fmt: skip
    except ValueError:  # PEFT: "Can't find 'adapter_config.json' at ..."
        return False
    return True


def test_adapter_export_survives_a_kill_and_a_full_disk(setup):
    root = setup["root"]
    first = run_train(setup, "1e-3")
    assert first.returncode == 0, first.stderr[-2000:]
    good = adapter_files(root)
    assert set(good) == {"adapter_config.json", "adapter_model.safetensors"}

    killed = run_train(setup, "5e-3", "lora.adapter.staged=kill")  # files staged, not committed
    assert killed.returncode == -9
    assert {k: v for k, v in adapter_files(root).items() if ".packft-" not in k} == good

    full = run_train(setup, "5e-3", "lora.adapter.staged=enospc")
    errors = [line for line in full.stderr.splitlines() if "error" in line.lower()]
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert len(errors) == 1 and errors[0].startswith("packft train: error: ENOSPC")
    assert errors[0].endswith(str(root / "run" / "adapter"))
    assert adapter_files(root) == good  # no temporary left, the killed run's swept too

    torn = run_train(setup, "5e-3", "lora.adapter.renamed=kill")  # weights renamed, no config
    assert torn.returncode == -9
    names = adapter_files(root)
    assert "adapter_config.json" not in names and not loads_in_peft(root)

    again = run_train(setup, "5e-3")
    assert again.returncode == 0, again.stderr[-2000:]
    fresh = adapter_files(root)
    assert (
        set(fresh) == set(good)
        and fresh["adapter_model.safetensors"] != good["adapter_model.safetensors"]
    )
    assert loads_in_peft(root)
