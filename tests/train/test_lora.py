"""LoRA in `packft train`: MindSpeed target names, packed LoRA gradients equal the samples run one
by one, the adapter alone loads in PEFT and matches packft's merged weights (HF and mcore), resume
is bit-exact, FSDP2 + LoRA on 2 gloo ranks follows 1 rank. Tiny random Llamas on CPU, fp32."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from packft.cli import main as cli_main
from packft.core.constants import IGNORE_INDEX
from packft.train import attention
from packft.train.config import TrainConfig
from packft.train.data import collate, loss_sum
from packft.train.flags import TARGETS, resolve_targets
from packft.train.loop import train
from packft.train.lora import apply_lora
from tests.helpers.sft_setup import make_sft_setup, torchrun_train
from tests.helpers.tiny_models import COMMON, LLAMA2, build_model, tiny

REPO = Path(__file__).resolve().parents[2]
ALL_MINDSPEED = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
LORA = dict(lora_target_modules=ALL_MINDSPEED, lora_r=4, lora_alpha=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llama2_tokenizer_dir, alpaca_en_path):
    return make_sft_setup(tmp_path_factory.mktemp("lora"), llama2_tokenizer_dir, alpaca_en_path)


def cfg_for(setup, save: str, **kw) -> TrainConfig:
    root = setup["root"]
    base = dict(data_path=str(root / "packed"), model=str(root / "model"), save=str(root / save),
                tokenizer_name_or_path=str(setup["tok"]), lr=1e-3, tracking=False,
                global_batch_size=2, **LORA)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_mindspeed_target_names_map_onto_hf_modules_and_unknown_is_a_usage_error(capsys):
    assert resolve_targets(["linear_qkv"]) == ["q_proj", "k_proj", "v_proj"]
    assert resolve_targets(["linear_fc1", "o_proj"]) == ["o_proj", "gate_proj", "up_proj"]
    assert resolve_targets(ALL_MINDSPEED) == resolve_targets(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    args = ["train", "--data-path", "x", "--model", "m", "--save", "y",
            "--lora-target-modules", "linear_qkv", "attn"]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown attn" in err
    assert all(name in err for name in [*TARGETS, "q_proj", "down_proj"])


# ------------------------------------------------------------------ packed == one by one
def random_samples(n: int, vocab: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) with a masked prompt of 3-10 tokens and an answer of 4-20."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt, answer = rng.integers(3, 11), rng.integers(4, 21)
        ids = rng.integers(0, vocab, prompt + answer).astype(np.int64)
        labels = ids.copy()
        labels[:prompt] = IGNORE_INDEX
        out.append((ids, labels))
    return out


def packed_rows(samples, per_row: int, seq: int, isolate: bool = True):
    """Rows of ``per_row`` samples with neat segment ids (all 1 when not isolated) and a pad tail."""
    rows = []
    for i in range(0, len(samples), per_row):
        group = samples[i : i + per_row]
        ids = np.concatenate([s[0] for s in group])
        labels = np.concatenate([s[1] for s in group])
        seg = np.concatenate(
            [np.full(len(s[0]), k + 1 if isolate else 1) for k, s in enumerate(group)]
        )
        pad = seq - len(ids)
        rows.append((np.r_[ids, np.zeros(pad, np.int64)], np.r_[labels, np.full(pad, IGNORE_INDEX)],
                     np.r_[seg, np.zeros(pad, np.int64)]))  # fmt: skip
    return rows


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(model.get_parameter(k).grad is None for k in frozen)
    return grads


def test_lora_gradients_of_packed_rows_equal_the_samples_run_one_by_one():
    arch, kwargs = tiny(LLAMA2, num_hidden_layers=2)
    cfg = TrainConfig(data_path="x", save="y", model="m", lora_dropout=0.0, **LORA)
    packed = build_model(arch, {**COMMON, **kwargs, "attn_implementation": "packft_varlen"})
    torch.manual_seed(1)
    packed = apply_lora(packed, cfg).train()
    with torch.no_grad():  # B starts at zero, which would leave A without gradient
        for name, p in packed.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    reference = build_model(arch, {**COMMON, **kwargs, "attn_implementation": "sdpa"})
    reference = apply_lora(reference, cfg).train()
    reference.load_state_dict(packed.state_dict())
    samples = random_samples(9, kwargs["vocab_size"])

    tokens = sum(int((s[1][1:] != IGNORE_INDEX).sum()) for s in samples)
    for ids, labels in samples:  # one by one, HF's own attention, the global token mean
        logits = reference(input_ids=torch.from_numpy(ids)[None], use_cache=False).logits[0, :-1]
        ce = F.cross_entropy(logits, torch.from_numpy(labels[1:]), ignore_index=IGNORE_INDEX,
                             reduction="sum")  # fmt: skip
        (ce / tokens).backward()
    expected = lora_grads(reference)
    assert len(expected) == 2 * 7 * 2  # A and B on all seven projections of both layers

    def packed_grads(isolate: bool) -> dict[str, torch.Tensor]:
        packed.zero_grad(set_to_none=True)
        batch = collate(packed_rows(samples, per_row=3, seq=96, isolate=isolate))
        kw = attention.packed_model_kwargs(batch.cu_seqlens, batch.max_seqlen)
        logits = packed(input_ids=batch.input_ids, position_ids=batch.position_ids,
                        use_cache=False, **kw).logits  # fmt: skip
        (loss_sum(logits, batch, "token") / batch.counts["token"]).backward()
        return lora_grads(packed)

    def worst(grads: dict[str, torch.Tensor]) -> float:
        return max(float((grads[k] - g).norm() / g.norm()) for k, g in expected.items())

    assert worst(packed_grads(isolate=True)) < 1e-5
    assert worst(packed_grads(isolate=False)) > 1e-2  # naive packing: samples see each other


# ------------------------------------------------------------------ export, resume, FSDP2
def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_adapter_loads_in_peft_and_equals_the_merged_hf_and_mcore_weights(setup):
    from peft import PeftModel

    from packft.ckpt.convert import load_mcore_as_hf

    root = setup["root"]
    summary = train(cfg_for(setup, "export", train_iters=2, save_mcore=True,
                            lora_target_modules=["linear_qkv", "down_proj"]))  # fmt: skip
    assert summary["checkpoint"] == str(root / "export" / "hf")
    adapter_dir = root / "export" / "adapter"
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.model.layers.") for k in adapter)
    assert len(adapter) == 2 * 2 * 4  # 2 layers x (q, k, v, down) x (A, B)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == ["down_proj", "k_proj", "q_proj", "v_proj"]

    base = load_file(root / "model" / "model.safetensors")
    merged = load_file(root / "export" / "hf" / "model.safetensors")
    assert merged.keys() == base.keys()  # plain HF keys: no lora_*, no base_layer
    for key in base:  # only the targeted projections changed
        targeted = any(f".{m}." in key for m in ("q_proj", "k_proj", "v_proj", "down_proj"))
        assert torch.equal(merged[key], base[key]) != targeted, key

    ids = torch.randint(0, 32000, (2, 40), generator=torch.Generator().manual_seed(0))
    plain = AutoModelForCausalLM.from_pretrained(root / "export" / "hf")  # no packft, no PEFT
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "model"),
                                             adapter_dir)  # fmt: skip
    a, b = logits_of(plain, ids), logits_of(with_adapter, ids)
    base_logits = logits_of(AutoModelForCausalLM.from_pretrained(root / "model"), ids)
    assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max())
    assert float((a - base_logits).abs().max()) > 1e-2  # the adapter really changes the model
    _, mcore = load_mcore_as_hf(root / "export" / "mcore")
    assert all(torch.equal(mcore[k], merged[k]) for k in mcore)


def test_lora_resume_after_a_stop_gives_bit_identical_adapter_and_log(setup):
    from packft.ckpt.torch_dist import DistCheckpoint

    kw = dict(train_iters=5, save_interval=2, lr_warmup_iters=2, weight_decay=0.1,
              lora_dropout=0.2, split="70,30,0", eval_interval=2, eval_iters=1)  # fmt: skip
    full = train(cfg_for(setup, "l-full", **kw))
    first = train(cfg_for(setup, "l-resumed", exit_interval=3, **kw))
    assert first["steps"] == 3 and first["checkpoint"].endswith("iter_0000002")
    stored = DistCheckpoint(Path(first["checkpoint"])).shapes
    model_keys = [k for k in stored if k.startswith("model.")]
    assert model_keys and all(".lora_" in k for k in model_keys)  # the frozen base is not saved
    resumed = train(cfg_for(setup, "l-resumed", resume=True, **kw))
    assert resumed["steps"] == full["steps"] == 5
    assert resumed["valid_loss"] == full["valid_loss"] is not None
    for part in ("adapter/adapter_model.safetensors", "hf/model.safetensors"):
        a = load_file(setup["root"] / "l-full" / part)
        b = load_file(setup["root"] / "l-resumed" / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    log = [(setup["root"] / d / "train_log.jsonl").read_text().splitlines() for d in
           ("l-full", "l-resumed")]  # fmt: skip
    strip = [[{k: v for k, v in json.loads(line).items() if "time" not in k and "per_s" not in k}
              for line in lines] for lines in log]  # fmt: skip
    assert strip[0] == strip[1] and [r["step"] for r in strip[0] if "valid_loss" in r] == [2, 4, 5]


LORA_RUN = ["--lora-target-modules", *ALL_MINDSPEED, "--lora-r", "4", "--lora-alpha", "8",
            "--split", "60,40,0", "--eval-interval", "2", "--eval-iters", "3"]  # fmt: skip


def _torchrun(setup, nproc: int, save: str, extra: list[str]) -> subprocess.CompletedProcess:
    return torchrun_train(setup["root"], nproc, save, [*LORA_RUN, *extra])


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["fsdp2", "ddp"])
def test_lora_on_two_gloo_ranks_follows_one_rank(setup, sharding):
    """Same global batch, same held-out rows (4 rows on 2 ranks, 3 on 1... see eval_plan)."""
    extra = ["--use-torch-fsdp2"] if sharding == "fsdp2" else []
    one = _torchrun(setup, 1, f"lr1-{sharding}", extra)
    two = _torchrun(setup, 2, f"lr2-{sharding}", extra)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    s1, s2 = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (one, two))
    assert s2["world_size"] == 2 and s2["steps"] == 3
    records = [
        [json.loads(x) for x in (setup["root"] / d / "train_log.jsonl").read_text().splitlines()]
        for d in (f"lr1-{sharding}", f"lr2-{sharding}")
    ]
    for key in ("loss", "grad_norm"):
        a, b = ([r[key] for r in rs] for rs in records)
        assert all(abs(x - y) / abs(x) < 1e-5 for x, y in zip(a, b, strict=True)), (key, a, b)
    assert abs(s1["valid_loss"] - s2["valid_loss"]) / s1["valid_loss"] < 1e-5
    a = load_file(setup["root"] / f"lr1-{sharding}" / "adapter" / "adapter_model.safetensors")
    b = load_file(setup["root"] / f"lr2-{sharding}" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_fsdp2_lora_resume_on_two_ranks_gives_the_uninterrupted_adapter(setup):
    """DCP saves only the sharded adapters and their optimizer state; a stop at step 2 and a
    --resume on 2 ranks end with the adapter of the run that was never stopped."""
    extra = ["--use-torch-fsdp2", "--save-interval", "2"]
    full = _torchrun(setup, 2, "fr-full", extra)
    stopped = _torchrun(setup, 2, "fr-resumed", [*extra, "--exit-interval", "2"])
    resumed = _torchrun(setup, 2, "fr-resumed", [*extra, "--resume"])
    for run in (full, stopped, resumed):
        assert run.returncode == 0, run.stderr[-3000:]
    assert (
        "resumed from" in resumed.stderr
        and json.loads(resumed.stdout.splitlines()[-1])["steps"] == 3
    )
    a = load_file(setup["root"] / "fr-full" / "adapter" / "adapter_model.safetensors")
    b = load_file(setup["root"] / "fr-resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
