"""Check packft's mcore checkpoints against megatron-core itself (CPU, gloo, no GPU needed).

For each tiny test model (tests/test_convert.py) and TP in {1, 2}: convert HF -> mcore with
packft, build megatron-core's ``GPTModel`` (local layer spec) on every TP rank, load that rank's
``model_optim_rng.pt`` with ``strict=True``, run a forward pass and compare the gathered logits with
the HF model's. Prints JSON with the max abs difference per model and TP size.

megatron-core is not a packft dependency; install it next to the venv, without its extras::

    .venv/bin/pip install --no-deps --target /tmp/mcore megatron-core==0.12.2
    PYTHONPATH=/tmp/mcore .venv/bin/python benchmarks/verify_megatron_core.py

(0.12 is the core release MindSpeed-LLM builds on; 0.17+ need Python 3.12.) Two CPU-only shims:
megatron moves the RoPE frequencies to ``torch.cuda.current_device()`` and forks the CUDA RNG
tracker around attention dropout; both are pointed at no-ops on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SEQ = 12


def _worker(rank: int, tp: int, tmp: str, port: int) -> None:
    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=tp)
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    from packft.convert_io import load_mcore_file

    parallel_state.initialize_model_parallel(tp, 1)
    torch.cuda.current_device = lambda: "cpu"  # CPU shim, see the module docstring
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    ckpt = load_mcore_file(Path(tmp) / f"mg/iter_0000001/mp_rank_{rank:02d}/model_optim_rng.pt")
    a = ckpt["args"]
    config = TransformerConfig(
        num_layers=a.num_layers,
        hidden_size=a.hidden_size,
        num_attention_heads=a.num_attention_heads,
        num_query_groups=a.num_query_groups,
        ffn_hidden_size=a.ffn_hidden_size,
        kv_channels=a.kv_channels,
        normalization=a.normalization,
        layernorm_epsilon=a.norm_epsilon,
        gated_linear_unit=a.swiglu,
        activation_func=F.silu,
        add_bias_linear=a.add_bias_linear,
        add_qkv_bias=a.add_qkv_bias,
        tensor_model_parallel_size=tp,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTModel(
        config,
        get_gpt_layer_local_spec(normalization=a.normalization),
        vocab_size=a.padded_vocab_size,
        max_sequence_length=a.max_position_embeddings,
        share_embeddings_and_output_weights=not a.untie_embeddings_and_output_weights,
        position_embedding_type=a.position_embedding_type,
        rotary_base=int(a.rotary_base),
    ).eval()
    model.load_state_dict({k: v.clone() for k, v in ckpt["model"].items()}, strict=True)
    ids = torch.load(Path(tmp) / "ids.pt")
    mask = torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool).triu(1)  # True = masked out
    with torch.no_grad():
        logits = model(ids, torch.arange(SEQ)[None], mask)
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
    if rank == 0:
        torch.save(logits, Path(tmp) / "logits.pt")
    torch.distributed.destroy_process_group()


def main() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from test_convert import MODELS, build

    from packft.convert import save_hf_as_mcore

    result: dict[str, dict[str, float]] = {}
    port = 29600
    for name in MODELS:
        model = build(name)
        for tp in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                save_hf_as_mcore(model.state_dict(), Path(tmp) / "mg", tp, config=model.config)
                ids = torch.randint(0, model.config.vocab_size, (1, SEQ))
                torch.save(ids, Path(tmp) / "ids.pt")
                port += 1
                mp.spawn(_worker, args=(tp, tmp, port), nprocs=tp, join=True)
                got = torch.load(Path(tmp) / "logits.pt")
            with torch.no_grad():
                expected = model(ids).logits
            result.setdefault(name, {})[f"tp{tp}"] = float((got - expected).abs().max())
    print(json.dumps({"megatron_core_vs_hf_max_abs_diff": result}))


if __name__ == "__main__":
    main()
