"""Packed attention is exact: packed rows of real Alpaca samples give the same loss and gradients
as the samples run one by one through HF's own SDPA path (tiny random Llama and Qwen2, CPU fp32);
naive packing does not; the NPU and CUDA adapters pass the documented arguments."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from packft.core.constants import IGNORE_INDEX
from packft.train import attention
from packft.train.data import collate, loss_sum

TOL = 1e-5


def alpaca_samples(tokenizer_dir, alpaca_path, n: int, max_len: int = 120):
    """(input_ids, labels) of real Alpaca records, prompt masked, eos appended, short ones kept."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tok.eos_token_id
    out = []
    for rec in json.loads(alpaca_path.read_text()):
        prompt = rec["instruction"] + ("\n" + rec["input"] if rec["input"] else "")
        p = tok.encode(f"[INST] {prompt} [/INST]", add_special_tokens=False)
        a = tok.encode(rec["output"], add_special_tokens=False) + [eos]
        if len(p) + len(a) <= max_len:
            ids = np.array(p + a, np.int64)
            out.append((ids, np.array([IGNORE_INDEX] * len(p) + a, np.int64)))
        if len(out) == n:
            return out, len(tok)
    raise AssertionError("not enough short samples")


def pack_rows(samples, seq_len: int):
    """Greedy in-order packing into rows of seq_len with neat segment ids and a pad tail."""
    rows, cur = [], []
    for s in samples:
        if sum(len(x[0]) for x in cur) + len(s[0]) > seq_len - 1:
            rows.append(cur)
            cur = []
        cur.append(s)
    rows.append(cur)
    packed = []
    for row in rows:
        ids = np.concatenate([s[0] for s in row])
        labels = np.concatenate([s[1] for s in row])
        seg = np.concatenate([np.full(len(s[0]), k + 1) for k, s in enumerate(row)])
        pad = seq_len - len(ids)
        packed.append(
            (
                np.r_[ids, np.zeros(pad, np.int64)],
                np.r_[labels, np.full(pad, IGNORE_INDEX)],
                np.r_[seg, np.zeros(pad, np.int64)],
            )
        )
    return packed


def tiny_model(kind: str, vocab: int, attn: str):
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,  # far from uniform logits, so attention errors show in the loss
    )
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attn_implementation=attn))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, attn_implementation=attn))
    return model.float()


def reference_loss_and_grads(model, samples, reduction: str):
    """Each sample alone (batch 1, no padding, HF sdpa), reduced like the packed loss."""
    model.zero_grad()
    n_tok = sum(int((s[1][1:] != IGNORE_INDEX).sum()) for s in samples)
    total = 0.0
    for ids, labels in samples:
        logits = model(input_ids=torch.from_numpy(ids)[None], use_cache=False).logits[0, :-1]
        tgt = torch.from_numpy(labels[1:])
        ce = F.cross_entropy(logits, tgt, ignore_index=IGNORE_INDEX, reduction="sum")
        n = int((tgt != IGNORE_INDEX).sum())
        loss = ce / n_tok if reduction == "token" else ce / n / len(samples)
        loss.backward()
        total += loss.item()
    return total, {k: p.grad.clone() for k, p in model.named_parameters()}


def packed_loss_and_grads(model, rows, reduction: str, isolate: bool = True):
    model.zero_grad()
    batch = collate(rows)
    if isolate:
        kw = attention.packed_model_kwargs(batch.cu_seqlens, batch.max_seqlen)
        out = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kw
        )
    else:  # naive: causal over the whole row
        out = model(input_ids=batch.input_ids, use_cache=False)
    loss = loss_sum(out.logits, batch, reduction) / batch.counts[reduction]
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def real_samples(llama2_tokenizer_dir, qwen_tokenizer_dir, alpaca_en_path):
    return {
        "llama": alpaca_samples(llama2_tokenizer_dir, alpaca_en_path, 7),
        "qwen": alpaca_samples(qwen_tokenizer_dir, alpaca_en_path, 7),
    }


@pytest.mark.parametrize("kind", ["llama", "qwen"])
@pytest.mark.parametrize("reduction", ["token", "sample"])
def test_packed_loss_and_grads_equal_unpacked(real_samples, kind, reduction):
    samples, vocab = real_samples[kind]
    rows = pack_rows(samples, seq_len=256)
    assert len(rows) >= 2 and any(len(np.unique(r[2])) > 2 for r in rows)
    packed = tiny_model(kind, vocab, attention.ATTN_IMPLEMENTATION)
    ref = tiny_model(kind, vocab, "sdpa")
    ref.load_state_dict(packed.state_dict())
    ref_loss, ref_grads = reference_loss_and_grads(ref, samples, reduction)
    loss, grads = packed_loss_and_grads(packed, rows, reduction)
    assert abs(loss - ref_loss) / ref_loss < TOL
    worst = max(rel(grads[k], ref_grads[k]) for k in ref_grads)
    assert worst < TOL, worst


def test_naive_packing_does_not_match(real_samples):
    samples, vocab = real_samples["llama"]
    rows = pack_rows(samples, seq_len=256)
    naive = tiny_model("llama", vocab, "sdpa")
    ref_loss, ref_grads = reference_loss_and_grads(naive, samples, "token")
    loss, grads = packed_loss_and_grads(naive, rows, "token", isolate=False)
    print("naive packing: loss rel diff", abs(loss - ref_loss) / ref_loss)
    assert abs(loss - ref_loss) / ref_loss > 100 * TOL
    assert max(rel(grads[k], ref_grads[k]) for k in ref_grads) > 1000 * TOL


def _qkv(t=37, hq=4, hkv=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, hq, d, generator=g), torch.randn(t, hkv, d, generator=g),
            torch.randn(t, hkv, d, generator=g))  # fmt: skip


def emulate_npu_fusion_attention(
    query, key, value, head_num, input_layout, atten_mask, scale, keep_prob, pre_tockens,
    next_tockens, actual_seq_qlen, actual_seq_kvlen, sparse_mode,
):  # fmt: skip
    """Documented semantics of npu_fusion_attention for TND + compressed causal mask (CPU)."""
    assert input_layout == "TND" and sparse_mode in (2, 3) and keep_prob == 1.0
    outs, start = [], 0
    for end_q, end_k in zip(actual_seq_qlen, actual_seq_kvlen, strict=True):
        q, k, v = query[start:end_q], key[start:end_k], value[start:end_k]
        k = k.repeat_interleave(head_num // k.shape[1], dim=1)
        v = v.repeat_interleave(head_num // v.shape[1], dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        lq, lk = q.shape[0], k.shape[0]
        offset = lk - lq if sparse_mode == 3 else 0  # right-down vs left-up alignment
        masked = atten_mask[:lq, offset : offset + lk] if offset >= 0 else None
        scores = scores.masked_fill(masked, float("-inf"))  # True = masked out
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
        start = end_q
    return (torch.cat(outs), None, None, None, 0, 0, 0)


def test_npu_adapter_passes_documented_arguments_and_matches_sdpa():
    q, k, v = _qkv()
    ends = [5, 17, 20, 37]
    args = attention.npu_fusion_arguments(q, k, v, ends, scale=0.3)
    assert args["input_layout"] == "TND"
    assert args["head_num"] == 4
    assert args["actual_seq_qlen"] == ends and args["actual_seq_kvlen"] == ends
    assert all(type(x) is int for x in args["actual_seq_qlen"])
    assert args["sparse_mode"] == attention.NPU_SPARSE_MODE == 3
    mask = args["atten_mask"]
    assert mask.shape == (2048, 2048) and mask.dtype == torch.bool
    assert torch.equal(mask, torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1))
    assert args["scale"] == 0.3 and args["keep_prob"] == 1.0
    out = attention.npu_varlen(q, k, v, ends, 0.3, kernel=emulate_npu_fusion_attention)
    ref = attention.sdpa_segments(q, k, v, ends, 0.3)
    assert torch.allclose(out, ref, atol=1e-6)
    # the emulator is sensitive to a wrong boundary list (the check can fail)
    bad = attention.npu_varlen(q, k, v, [5, 20, 37], 0.3, kernel=emulate_npu_fusion_attention)
    assert not torch.allclose(bad, ref, atol=1e-3)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_forward_matches_segments():
    q, k, v = _qkv(t=40)
    ends = [7, 30, 40]
    with torch.no_grad():
        out = attention.flex_varlen(q, k, v, ends, 0.25)
    assert torch.allclose(out, attention.sdpa_segments(q, k, v, ends, 0.25), atol=1e-5)


def _sig_210(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    pass


def _sig_211(
    q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)
):
    pass


def _sig_213(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None,
             window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None,
             num_splits=None):  # fmt: skip
    pass


def test_varlen_attn_keywords_follow_the_signature():
    assert attention.varlen_attn_kwargs(_sig_210, 0.1, 8, 2) == {"is_causal": True}
    assert attention.varlen_attn_kwargs(_sig_211, 0.1, 8, 2) == {
        "window_size": (-1, 0),
        "scale": 0.1,
    }
    assert attention.varlen_attn_kwargs(_sig_213, 0.1, 8, 2) == {
        "window_size": (-1, 0), "scale": 0.1, "enable_gqa": True}  # fmt: skip
    assert "enable_gqa" not in attention.varlen_attn_kwargs(_sig_213, 0.1, 4, 4)
    from torch.nn.attention.varlen import varlen_attn  # installed torch: the 2.13 signature

    assert set(inspect.signature(_sig_213).parameters) - {"q", "k", "v", "cu_q", "cu_k"} <= set(
        inspect.signature(varlen_attn).parameters
    )


def test_backend_selection_and_missing_cu_seqlens():
    assert attention.select_backend(torch.device("cpu"), torch.float32, 64) == "sdpa"
    model = tiny_model("llama", 50, attention.ATTN_IMPLEMENTATION)
    with pytest.raises(ValueError, match="packed_model_kwargs"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), use_cache=False)


def test_device_detection_without_npu():
    code = (
        "import os, packft.train.device as d; print(os.environ['TORCH_DEVICE_BACKEND_AUTOLOAD'], "
        "d.npu_available(), d.detect_device('auto'), d.dist_backend('cpu'))"
    )
    env = {
        k: v for k, v in __import__("os").environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["0", "False", "cpu", "gloo"], out.stderr
    from packft.train import device

    with pytest.raises(ValueError, match="torch_npu"):
        device.detect_device("npu")
    with pytest.raises(ValueError, match="one of"):
        device.detect_device("tpu")
