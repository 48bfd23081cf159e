"""Activation recomputation: fp32 loss and gradients unchanged, measured peak memory falls.

A tiny random Llama (4 layers) runs one packed micro-batch (two samples, varlen attention) with and
without ``--recompute-granularity``; memory is measured on CPU with torch's own MemTracker (every
tensor allocated during forward + backward, by category)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import LlamaConfig, LlamaForCausalLM

from packft.train.attention import ATTN_IMPLEMENTATION, packed_model_kwargs
from packft.train.recompute import apply_recompute, decoder_layers, recompute_layers

LENGTHS = (96, 160)


def tiny_llama(layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176,
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=512)  # fmt: skip
    cfg._attn_implementation = ATTN_IMPLEMENTATION
    return LlamaForCausalLM(cfg).train()


def packed_batch(vocab: int = 512) -> dict:
    gen = torch.Generator().manual_seed(1)
    total = sum(LENGTHS)
    cu = torch.tensor([0, LENGTHS[0], total], dtype=torch.int32)
    kwargs = packed_model_kwargs(cu, max(LENGTHS))
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    ids = torch.randint(0, vocab, (1, total), generator=gen)
    return {"input_ids": ids, "position_ids": positions, "use_cache": False, **kwargs}


def loss_of(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    logits = model(**batch).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, batch["input_ids"][0, 1:])


def loss_and_grads(granularity, num_layers=None) -> tuple[float, dict[str, torch.Tensor]]:
    model = tiny_llama()
    apply_recompute(model, granularity, num_layers)
    loss = loss_of(model, packed_batch())
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def peak_activation_bytes(granularity) -> int:
    """Peak bytes of activations + temporaries of one forward + backward (MemTracker, CPU)."""
    model = tiny_llama()
    apply_recompute(model, granularity)
    batch = packed_batch()
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        loss_of(model, batch).backward()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    return sum(v for k, v in peak.items() if str(k).endswith(("ACT", "TEMP")))


@pytest.mark.parametrize(("granularity", "num_layers"), [("full", None), ("selective", None),
                                                         ("full", 2)])  # fmt: skip
def test_recompute_keeps_loss_and_every_gradient(granularity, num_layers):
    base_loss, base_grads = loss_and_grads(None)
    loss, grads = loss_and_grads(granularity, num_layers)
    assert loss == pytest.approx(base_loss, rel=1e-6)
    assert grads.keys() == base_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, base_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_recompute_lowers_the_measured_peak_memory():
    none, full, selective = (peak_activation_bytes(g) for g in (None, "full", "selective"))
    assert full < 0.6 * none, (none, full)
    assert selective < none, (none, selective)
    assert full < selective


def test_recompute_wraps_the_chosen_layers_and_keeps_parameter_names():
    model = tiny_llama()
    names = [n for n, _ in model.named_parameters()]
    assert apply_recompute(model, "full", 2) == 2
    wrapped = [getattr(layer, "_packft_recompute", False) for layer in decoder_layers(model)]
    assert wrapped == [True, True, False, False]
    assert [n for n, _ in model.named_parameters()] == names
    assert apply_recompute(model, None) == 0
    assert recompute_layers("uniform", 2) is None and recompute_layers("block", 2) == 2


def test_recompute_errors_name_the_flag():
    with pytest.raises(ValueError, match="--recompute-granularity 'partial'"):
        apply_recompute(tiny_llama(1), "partial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model.layers"):
        apply_recompute(torch.nn.Linear(2, 2), "full")


def test_recompute_does_nothing_under_no_grad():
    model = tiny_llama(1)
    batch = packed_batch()
    with torch.no_grad():
        before = model(**batch).logits
    apply_recompute(model, "full")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before)
