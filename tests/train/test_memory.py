"""The memory plan: within 25% of the peak torch's MemTracker measures on CPU for tiny Llamas
(with and without recomputation), exact parameter counts, the Llama-2-7B plan, `--dry-run`, and a
run that cannot fit refused before anything is loaded or written."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import LlamaConfig, LlamaForCausalLM

from packft.cli import main as cli_main
from packft.core.errors import PackftError
from packft.train.attention import ATTN_IMPLEMENTATION, packed_model_kwargs
from packft.train.memory import GIB, ModelShape, RunShape, estimate, plan, require_fit
from packft.train.recompute import apply_recompute

LLAMA2_7B = {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
             "tie_word_embeddings": False}  # fmt: skip


def llama(vocab: int, d: int, f: int, layers: int, heads: int, kv: int, tied=False) -> LlamaConfig:
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=f,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, max_position_embeddings=1024,
                      tie_word_embeddings=tied)  # fmt: skip
    cfg._attn_implementation = ATTN_IMPLEMENTATION
    return cfg


def measured_peak(cfg: LlamaConfig, seq: int, micro: int, granularity) -> int:
    """Peak bytes of the second training step (AdamW states exist), as packft's loop runs it."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).train()
    apply_recompute(model, granularity)
    ids = torch.randint(0, cfg.vocab_size, (1, micro * seq))
    cu = torch.arange(0, micro * seq + 1, seq, dtype=torch.int32)  # one sample per row
    kwargs = packed_model_kwargs(cu, seq)
    positions = torch.arange(seq).repeat(micro)[None]
    optimizer = torch.optim.AdamW(model.parameters())

    def step() -> None:
        logits = model(input_ids=ids, position_ids=positions, use_cache=False, **kwargs).logits
        flat = logits[:, :-1].float().reshape(-1, cfg.vocab_size)
        torch.nn.functional.cross_entropy(flat, ids[0, 1:], reduction="none").sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


@pytest.mark.parametrize(
    ("shape", "seq", "micro", "granularity"),
    [((512, 64, 176, 4, 8, 4), 256, 1, None), ((512, 64, 176, 4, 8, 4), 256, 1, "full"),
     ((2048, 128, 352, 2, 4, 2), 128, 2, "selective")],
)  # fmt: skip
def test_estimate_is_within_25_percent_of_the_measured_peak(shape, seq, micro, granularity):
    cfg = llama(*shape)
    run = RunShape(micro_batch=micro, seq_length=seq, recompute=granularity, core_attention="sdpa")
    estimated = sum(estimate(ModelShape.from_hf_config(cfg.to_dict()), run)[:4])
    measured = measured_peak(cfg, seq, micro, granularity)
    assert 0.75 <= estimated / measured <= 1.25, (estimated, measured)


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_is_exact(tied):
    cfg = llama(1000, 48, 96, 3, 6, 2, tied=tied)
    model = LlamaForCausalLM(cfg)
    assert ModelShape.from_hf_config(cfg.to_dict()).params == model.num_parameters()


@pytest.mark.parametrize(
    "targets", [["linear_qkv"], ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]]
)
def test_lora_trainable_count_is_what_peft_trains(targets):
    from packft.train.config import TrainConfig
    from packft.train.flags import resolve_targets
    from packft.train.lora import apply_lora

    cfg = llama(1000, 48, 96, 3, 6, 2)
    train_cfg = TrainConfig(
        data_path="x", save="y", model="m", lora_target_modules=targets, lora_r=4
    )
    model = apply_lora(LlamaForCausalLM(cfg), train_cfg)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counted = ModelShape.from_hf_config(cfg.to_dict()).lora_params(resolve_targets(targets), 4)
    assert counted == trained > 0


def test_llama2_7b_plan_and_refusal():
    shape = ModelShape.from_hf_config(LLAMA2_7B)
    assert shape.params == 6_738_415_616  # Llama-2-7B's published count
    sharded = RunShape(micro_batch=4, seq_length=4096, world=8, fsdp=True, bf16=True)
    weights, grads, optimizer, acts, _ = estimate(shape, sharded)
    assert optimizer == 8 * shape.params // 8 and grads == 4 * shape.params // 8
    full = RunShape(**{**sharded.__dict__, "recompute": "full"})
    assert estimate(shape, full)[3] < acts / 5  # recomputation frees most activations
    lora = RunShape(**{**full.__dict__, "trainable_params": 4_194_304})
    assert estimate(shape, lora)[2] < optimizer / 1000
    h200 = int(141e9)
    require_fit(plan(shape, full, h200, "H200"), full)  # fits: no error
    one = RunShape(micro_batch=4, seq_length=4096, bf16=True)
    refused = plan(shape, one, int(64 * GIB), "Ascend 910B")
    assert refused.fits is False and refused.lines()[-1].endswith("DOES NOT FIT")
    with pytest.raises(PackftError, match="Ascend 910B has 64.0 GiB.*--recompute-granularity full"):
        require_fit(refused, one)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, llama2_tokenizer_dir, alpaca_en_path):
    from packft.preprocess.config import PreprocessConfig
    from packft.preprocess.steps import preprocess

    root = tmp_path_factory.mktemp("memory")
    records = json.loads(alpaca_en_path.read_text())[:6]
    (root / "alpaca.json").write_text(json.dumps(records))
    preprocess(PreprocessConfig(
        input=str(root / "alpaca.json"), tokenizer_name_or_path=str(llama2_tokenizer_dir),
        prompt_type="llama2", append_eod=True, cache_dir=str(root / "cache"),
        output_prefix=str(root / "alpaca"), pack=True, neat_pack=True, seq_length=512,
    ))  # fmt: skip
    LlamaForCausalLM(llama(32000, 32, 64, 2, 4, 2)).save_pretrained(root / "model")
    return ["train", "--data-path", str(root / "alpaca"), "--model", str(root / "model"),
            "--tokenizer-name-or-path", str(llama2_tokenizer_dir), "--no-tracking", "--fp32",
            "--global-batch-size", "2", "--train-iters", "1"], root  # fmt: skip


def test_dry_run_prints_the_plan_and_trains_nothing(small_run, capsys):
    base, root = small_run
    assert cli_main([*base, "--save", str(root / "dry"), "--dry-run",
                     "--recompute-granularity", "full"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "memory plan per device" in out and "on CPU RAM: fits" in out
    assert "seq 512" in out and "recompute full" in out  # seq from the dataset
    assert not (root / "dry").exists()


def test_a_run_that_cannot_fit_is_refused_before_anything_is_written(small_run, capsys):
    base, root = small_run
    huge = ["--micro-batch-size", "256", "--global-batch-size", "256", "--seq-length", "65536"]
    assert cli_main([*base, "--save", str(root / "huge"), *huge]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("packft train: error: this run needs about")
    assert "try --recompute-granularity full; --micro-batch-size 128" in err
    assert not (root / "huge").exists()
    assert cli_main([*base, "--save", str(root / "huge"), *huge, "--dry-run"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_a_tight_plan_may_not_fit_but_is_not_refused():
    shape = ModelShape.from_hf_config(LLAMA2_7B)
    run = RunShape(micro_batch=1, seq_length=4096, world=8, fsdp=True, bf16=True)
    total = plan(shape, run, None, "x").total
    tight = plan(shape, run, int(total / 1.1), "tight device")
    assert tight.fits is None and tight.lines()[-1].endswith("may not fit (tight)")
    require_fit(tight, run)  # within the estimate's error: warned, not refused
    assert plan(shape, run, int(total / 1.3), "small").fits is False
