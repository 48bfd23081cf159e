"""megatron-core 0.12.2 itself reads packft's outputs: converted checkpoints and packed datasets.

Checkpoints. Tiny random HF models (Llama 2, Llama 3 with GQA and tied embeddings, Llama 3.1 RoPE
scaling, Mistral with a head_dim that is not hidden/heads, Qwen2 with QKV bias, tied and untied;
shapes shared with the converter tests in tests/helpers/tiny_models.py) are converted with
:func:`packft.ckpt.convert.save_hf_as_mcore` at TP 1 and TP 2. Two spawned CPU ranks (gloo) build
megatron-core's ``GPTModel`` with the local layer spec from the checkpoint ``args``, load their
rank's ``model_optim_rng.pt`` with ``strict=True``, run one forward pass and gather the
vocab-parallel logits, which must match the HF model's to 1e-5 (float32). One spawn serves all
cases: importing torch and megatron twice per case would cost more than the forward passes. CPU
shims, in the child processes only: megatron puts RoPE frequencies on
``torch.cuda.current_device()`` and forks the CUDA RNG tracker around attention dropout.

Datasets. megatron's ``IndexedDataset`` reads what ``IndexedDatasetWriter`` writes (every dtype
code) and a real packed dataset written by ``packft.preprocess`` from the shared Alpaca file with
the shared Llama 2 tokenizer; MindSpeed's glob ``{prefix}_packed_*_document*`` sees exactly the
three fields' files.

megatron-core is a test requirement (``make install`` puts it in .venv with ``pip install
--no-deps``; it needs nothing beyond packft's own dependencies at import); without it these tests
fail, they do not skip. Measured on the shared 2-core VM (load average 6-8): 28-45 s for the file,
of which 19-36 s is the one spawn (two interpreters importing torch and megatron); max |megatron -
HF| over all 12 cases 2.2e-6 with logits up to 3.4 in magnitude.
"""

from __future__ import annotations

import contextlib
import glob
import re
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from packft.core.atomic import Stage
from packft.dataset.indexed import (
    DTYPE_CODES,
    SFT_KEYS,
    IndexedDatasetWriter,
    open_sft_dataset,
    sft_prefix,
)
from tests.helpers.tiny_models import COMMON as TINY_COMMON
from tests.helpers.tiny_models import (
    LLAMA2,
    LLAMA3,
    MISTRAL,
    QWEN2,
    QWEN2_UNTIED,
    build_model,
    tiny,
)

pytestmark = pytest.mark.filterwarnings(  # megatron's import-time notes about optional packages
    "ignore:Apex is not installed:UserWarning",
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
    "ignore:Transformer Engine and Apex are not installed:UserWarning",
)
SEQ = 32
TP_SIZES = (1, 2)
TOLERANCE = 1e-5
MEGATRON_VERSION = "0.12.2"
INSTALL_HINT = (
    "{problem}. These interop tests need megatron-core==0.12.2 in the venv: run `make install` "
    "(or `.venv/bin/pip install -c constraints.txt --no-deps megatron-core==0.12.2`)."
)

# initializer_range 0.1 (HF default 0.02): attention must depend on position, or a RoPE mistake
# would hide under the tolerance (test_cases_are_position_sensitive).
COMMON = {**TINY_COMMON, "initializer_range": 0.1}
LLAMA31_ROPE = dict(  # the Llama 3.1 values; megatron-core 0.12 hard-codes all but the factor
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (transformers architecture prefix, config kwargs); shapes from tests/helpers/tiny_models.py
    "llama2": tiny(LLAMA2, num_hidden_layers=2),
    "llama3-gqa-tied": tiny(LLAMA3, num_hidden_layers=2),
    "llama3.1-rope-scaling": (
        "Llama",
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=64, rope_theta=500000.0,
             rope_scaling=LLAMA31_ROPE, max_position_embeddings=16384, tie_word_embeddings=False),
    ),
    "mistral": tiny(MISTRAL, num_hidden_layers=2),
    "qwen2-bias-tied": tiny(QWEN2, num_hidden_layers=2),
    "qwen2-bias-untied": tiny(QWEN2_UNTIED, num_hidden_layers=2, num_key_value_heads=2),
}  # fmt: skip
CASES = [(name, tp) for name in MODELS for tp in TP_SIZES]


@pytest.fixture(scope="module")
def megatron_core() -> Any:
    """The installed megatron.core package; a missing install fails (with the fix), never skips."""
    try:
        import megatron.core
        from megatron.core.datasets import indexed_dataset  # noqa: F401
        from megatron.core.models.gpt import GPTModel  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            INSTALL_HINT.format(problem=f"megatron-core is not importable ({exc})"), pytrace=False
        )
    return megatron.core


def test_megatron_core_is_installed() -> None:
    """The version these tests were written against (the last one for Python 3.11)."""
    try:
        import megatron.core
    except ImportError as exc:
        pytest.fail(
            INSTALL_HINT.format(problem=f"megatron-core is not importable ({exc})"), pytrace=False
        )
    assert megatron.core.__version__ == MEGATRON_VERSION, INSTALL_HINT.format(
        problem=f"megatron-core {megatron.core.__version__} is installed"
    )


# ------------------------------------------------------------------------------------ checkpoints
def _build_hf(name: str, seed: int = 0) -> torch.nn.Module:
    """A random float32 model; norms and biases are randomized too so a swap cannot hide."""
    arch, kwargs = MODELS[name]
    return build_model(arch, {**COMMON, **kwargs}, seed)


def _gpt_model(a: Any, tp: int) -> torch.nn.Module:
    """megatron-core's GPTModel (local layer spec, float32, CPU) shaped by checkpoint args ``a``."""
    import torch.nn.functional as F
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

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
    return GPTModel(
        config,
        get_gpt_layer_local_spec(normalization=a.normalization),
        vocab_size=a.padded_vocab_size,
        max_sequence_length=a.max_position_embeddings,
        share_embeddings_and_output_weights=not a.untie_embeddings_and_output_weights,
        position_embedding_type=a.position_embedding_type,
        rotary_base=int(a.rotary_base),
        rope_scaling=bool(getattr(a, "use_rope_scaling", False)),
        rope_scaling_factor=float(getattr(a, "rope_scaling_factor", 8.0)),
    ).eval()


def _gpt_forward(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    causal = torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool).triu(1)  # True = masked out
    with torch.no_grad():
        return model(ids, torch.arange(SEQ)[None], causal)


def _megatron_forward(ckpt_file: Path, ids: torch.Tensor, tp: int) -> torch.Tensor:
    """Build GPTModel from the checkpoint args, load strictly, return this rank's logits."""
    from packft.ckpt.io import load_mcore_file

    ckpt = load_mcore_file(ckpt_file)
    model = _gpt_model(ckpt["args"], tp)
    model.load_state_dict({k: v.clone() for k, v in ckpt["model"].items()}, strict=True)
    return _gpt_forward(model, ids)


def _worker(rank: int, world: int, root: str) -> None:
    """One gloo rank: every case, TP 1 (two data-parallel replicas) then TP 2."""
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group(  # a file rendezvous: no port to race for on a shared CI host
        "gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world,
        timeout=timedelta(seconds=120),
    )  # fmt: skip
    from megatron.core import parallel_state, tensor_parallel

    torch.cuda.current_device = lambda: "cpu"  # CPU shims, see the module docstring
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    results: dict[tuple[str, int], Any] = {}
    for tp in TP_SIZES:
        parallel_state.initialize_model_parallel(tp, 1)
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        for name in MODELS:
            case = Path(root) / f"{name}-tp{tp}"
            error = ""
            try:
                ckpt = case / f"mg/iter_0000001/mp_rank_{tp_rank:02d}/model_optim_rng.pt"
                logits = _megatron_forward(ckpt, torch.load(Path(root) / f"{name}.ids.pt"), tp)
            except Exception:  # recorded per case; every rank must still reach the collectives
                error = f"rank {rank}: {traceback.format_exc()}"
            errors: list[str] = [""] * world
            dist.all_gather_object(errors, error)
            if any(errors):
                results[(name, tp)] = "\n".join(e for e in errors if e)
            else:
                gathered = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
                results[(name, tp)] = gathered.clone()
        parallel_state.destroy_model_parallel()
    if rank == 0:
        torch.save(results, Path(root) / "results.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def interop_results(
    megatron_core: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | str]]:
    """(HF logits, megatron logits or the error text) for every (model, TP) case."""
    import torch.multiprocessing as mp

    from packft.ckpt.convert import save_hf_as_mcore

    root = tmp_path_factory.mktemp("megatron")
    expected = {}
    for name in MODELS:
        model = _build_hf(name)
        gen = torch.Generator().manual_seed(len(name))
        ids = torch.randint(0, model.config.vocab_size, (1, SEQ), generator=gen)
        torch.save(ids, root / f"{name}.ids.pt")
        for tp in TP_SIZES:
            save_hf_as_mcore(model.state_dict(), root / f"{name}-tp{tp}" / "mg", tp,
                             config=model.config)  # fmt: skip
        with torch.no_grad():
            expected[name] = model(ids).logits
    mp.spawn(_worker, args=(2, str(root)), nprocs=2, join=True)
    got = torch.load(root / "results.pt")
    return {(name, tp): (expected[name], got[(name, tp)]) for name, tp in CASES}


@pytest.mark.parametrize(("name", "tp"), CASES, ids=[f"{n}-tp{t}" for n, t in CASES])
def test_gpt_model_reproduces_hf_logits(interop_results: dict, name: str, tp: int) -> None:
    expected, got = interop_results[(name, tp)]
    assert not isinstance(got, str), f"megatron-core could not load/run {name} at TP {tp}:\n{got}"
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1, "degenerate reference logits"
    diff = float((got - expected).abs().max())
    assert diff < TOLERANCE, f"{name} TP {tp}: max |megatron - HF| = {diff:.3g}"


def test_cases_are_position_sensitive() -> None:
    """Dropping the Llama 3.1 RoPE scaling must move the logits far beyond the tolerance."""
    import transformers

    model = _build_hf("llama3.1-rope-scaling")
    kwargs = {**COMMON, **MODELS["llama3.1-rope-scaling"][1], "rope_scaling": None}
    plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    plain.load_state_dict(model.state_dict())
    ids = torch.arange(SEQ)[None] % model.config.vocab_size
    with torch.no_grad():
        diff = float((model(ids).logits - plain(ids).logits).abs().max())
    assert diff > 100 * TOLERANCE


# -------------------------------------------------------------------------- torch_dist checkpoints
DIST_MODEL = tiny(LLAMA2, num_hidden_layers=2, num_key_value_heads=2)  # 32-dim, GQA, untied
DIST_ITERATION = 100


@contextlib.contextmanager
def _one_gloo_rank(root: Path) -> Any:
    """This process as the only gloo rank, megatron's parallel state at TP 1 / PP 1, and CPU shims:
    CUDA device and synchronize, the CUDA RNG fork, and the ``serialization_format`` argument that
    torch 2.13's ``_write_item`` requires and megatron-core 0.12.2's writer does not pass (the
    default, torch.save per item, is what older torch wrote)."""
    import inspect

    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from torch.distributed.checkpoint import filesystem

    write_item = filesystem._write_item
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "current_device", lambda: "cpu")
        patch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        tracker = tensor_parallel.get_cuda_rng_tracker()
        patch.setattr(tracker, "fork", lambda *a, **k: contextlib.nullcontext())
        if "serialization_format" in inspect.signature(write_item).parameters:
            torch_save = filesystem.SerializationFormat.TORCH_SAVE
            patch.setattr(filesystem_async, "_write_item", lambda *a: write_item(*a, torch_save))
        dist.init_process_group(
            "gloo", init_method=f"file://{root}/rendezvous", rank=0, world_size=1
        )
        try:
            parallel_state.initialize_model_parallel(1, 1)
            yield
        finally:
            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()


def _megatron_training_save(model: torch.nn.Module, args: Any, directory: Path) -> None:
    """What Megatron-LM's ``save_checkpoint`` hands to ``dist_checkpointing.save`` for
    ``--ckpt-format torch_dist`` (megatron/training/checkpointing.py, core_v0.12.2):
    ``generate_state_dict`` with the model's ``sharded_state_dict``, the optimizer state as
    ``FP32Optimizer.sharded_state_dict`` shards it (AdamW after one step with zero gradients and
    no weight decay, so the weights do not move), the scheduler, the rerun state machine, the RNG
    state as a ``ShardedObject``, and ``num_floating_point_operations_so_far``."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        optim_state_to_sharding_state,
    )
    from megatron.core.rerun_state_machine import RerunStateMachine

    from tests.helpers.megatron_ckpt import cosine_scheduler, megatron_args, rng_state

    model_sd = model.sharded_state_dict()
    params = list(model.parameters())
    adam = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    adam.step()
    scheduler = cosine_scheduler(adam)
    optim_sd = adam.state_dict()
    step = optim_sd["state"][0]["step"]
    optim_state_to_sharding_state(
        optim_sd, get_param_id_to_sharded_param_map(model_sd, params), exclude_keys="step"
    )
    optim_sd["state"]["common_step"] = step
    state = {
        "args": megatron_args(args, ckpt_format="torch_dist", use_dist_ckpt=True,
                              iteration=DIST_ITERATION),
        "checkpoint_version": 3.0,
        "iteration": DIST_ITERATION,
        "model": model_sd,
        "optimizer": optim_sd,
        "opt_param_scheduler": scheduler.state_dict(),
        "rerun_state_machine": RerunStateMachine().state_dict(None, "torch_dist"),
        "rng_state": ShardedObject("rng_state", rng_state(), (1, 1), (0, 0), replica_id=0),
        "num_floating_point_operations_so_far": 1.5e15,
    }  # fmt: skip
    directory.mkdir(parents=True)
    dist_checkpointing.save(state, str(directory))


@pytest.fixture(scope="module")
def torch_dist_ckpt(megatron_core: Any, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny HF Llama, converted by packft, loaded into megatron-core's GPTModel (one gloo rank,
    in this process) and saved by megatron-core's own ``dist_checkpointing.save`` as Megatron-LM's
    training loop saves ``--ckpt-format torch_dist``; plus GPTModel's and HF's logits."""
    from packft.ckpt.convert import save_hf_as_mcore
    from packft.ckpt.io import load_mcore_file

    root = tmp_path_factory.mktemp("torch_dist")
    arch, kwargs = DIST_MODEL
    hf = build_model(arch, {**COMMON, **kwargs}, seed=3)
    hf.save_pretrained(root / "hf")
    save_hf_as_mcore(hf.state_dict(), root / "mg", config=hf.config)
    ours = load_mcore_file(root / "mg" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt")
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, hf.config.vocab_size, (1, SEQ), generator=gen)
    save = root / "megatron"
    with _one_gloo_rank(root):
        gpt = _gpt_model(ours["args"], 1)
        gpt.load_state_dict({k: v.clone() for k, v in ours["model"].items()}, strict=True)
        megatron_logits = _gpt_forward(gpt, ids)
        _megatron_training_save(gpt, ours["args"], save / f"iter_{DIST_ITERATION:07d}")
    (save / "latest_checkpointed_iteration.txt").write_text(str(DIST_ITERATION))
    with torch.no_grad():
        hf_logits = hf(ids).logits
    return dict(save=save, hf=root / "hf", ids=ids, megatron=megatron_logits, hf_logits=hf_logits)


def _safetensors_dir(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("with_cfg", [True, False], ids=["hf-cfg-dir", "args-only"])
def test_torch_dist_from_megatron_converts_to_hf(
    torch_dist_ckpt: dict, tmp_path: Path, with_cfg: bool
) -> None:
    """mg->hf of megatron-core's torch_dist save: the HF tensors come back bit-identical and the
    converted model reproduces GPTModel's logits."""
    import transformers

    from packft.cli import main as cli_main

    iter_dir = torch_dist_ckpt["save"] / f"iter_{DIST_ITERATION:07d}"
    names = {p.name for p in iter_dir.iterdir()}
    assert {"metadata.json", ".metadata", "common.pt"} <= names and any(
        n.endswith(".distcp") for n in names
    )
    from packft.ckpt.torch_dist import DistCheckpoint

    stored = DistCheckpoint(iter_dir).shapes  # layers stacked; optimizer state beside the model
    assert stored["decoder.layers.self_attention.linear_qkv.weight"][0] == 2
    assert any(k.startswith("optimizer.state.exp_avg.") for k in stored)
    out, hf_dir = tmp_path / "hf", torch_dist_ckpt["hf"]
    cmd = ["convert-ckpt", "--load-model-type", "mg", "--save-model-type", "hf",
           "--load-dir", str(torch_dist_ckpt["save"]), "--save-dir", str(out)]  # fmt: skip
    assert cli_main(cmd + (["--hf-cfg-dir", str(hf_dir)] if with_cfg else [])) == 0
    expected, got = _safetensors_dir(hf_dir), _safetensors_dir(out)
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(torch_dist_ckpt["ids"]).logits
    assert torch.equal(logits, torch_dist_ckpt["hf_logits"])
    diff = float((logits - torch_dist_ckpt["megatron"]).abs().max())
    assert diff < TOLERANCE, f"max |HF(converted torch_dist) - megatron| = {diff:.3g}"


def test_train_load_reads_torch_dist(torch_dist_ckpt: dict, tmp_path: Path) -> None:
    """``packft train --load`` builds its model from the torch_dist save: the same weights."""
    from packft.train.config import TrainConfig
    from packft.train.loop import load_model

    cfg = TrainConfig(data_path=str(tmp_path / "unused"), load=str(torch_dist_ckpt["save"]),
                      save=str(tmp_path / "save"))  # fmt: skip
    state = load_model(cfg).state_dict()
    expected = _safetensors_dir(torch_dist_ckpt["hf"])
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_torch_dist_with_missing_or_truncated_shard_is_one_line(
    torch_dist_ckpt: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    from packft.cli import main as cli_main

    for damage in ("missing", "truncated"):
        broken = tmp_path / damage
        shutil.copytree(torch_dist_ckpt["save"], broken)
        shard = max((broken / f"iter_{DIST_ITERATION:07d}").glob("*.distcp"),
                    key=lambda p: p.stat().st_size)  # fmt: skip
        if damage == "missing":
            shard.unlink()
        else:
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        out = tmp_path / f"hf-{damage}"
        cmd = ["convert-ckpt", "--load-model-type", "mg", "--save-model-type", "hf",
               "--load-dir", str(broken), "--save-dir", str(out)]  # fmt: skip
        assert cli_main(cmd) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"{shard.name} is {damage}" in err and "incomplete" in err
        assert not out.exists()


# --------------------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_megatron_reads_writer_output(megatron_core: Any, tmp_path: Path, code: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dtype = np.dtype(DTYPE_CODES[code])
    rng = np.random.default_rng(code)
    high = 100 if dtype.itemsize == 1 else 30000
    sequences = [rng.integers(0, high, size=int(n)).astype(dtype) for n in [0, 1, 7, 300, 2, 64]]
    prefix = tmp_path / "w"
    with Stage(tmp_path) as stage, IndexedDatasetWriter(prefix, stage, dtype) as writer:
        writer.extend(sequences)
        writer.finalize()
        assert not glob.glob(f"{prefix}*"), "temporary files must be invisible to prefix globs"
        stage.commit()
    ds = IndexedDataset(str(prefix))
    assert len(ds) == len(sequences)
    assert ds.index.dtype == dtype.type
    assert ds.sequence_lengths.tolist() == [len(s) for s in sequences]
    assert ds.document_indices.tolist() == list(range(len(sequences) + 1))
    for i, seq in enumerate(sequences):
        assert ds[i].dtype == dtype and np.array_equal(ds[i], seq), f"sequence {i} differs"
    assert np.array_equal(ds.get(3, offset=5, length=10), sequences[3][5:15])


@pytest.fixture(scope="module")
def packed_alpaca(
    tmp_path_factory: pytest.TempPathFactory, alpaca_en_path: Path, llama2_tokenizer_dir: Path
) -> Path:
    """The shared Alpaca demo (1000 samples) packed like MindSpeed's recipe, uint16 input_ids."""
    from packft.preprocess.config import PreprocessConfig
    from packft.preprocess.steps import preprocess

    root = tmp_path_factory.mktemp("packed")
    cfg = PreprocessConfig(
        input=str(alpaca_en_path), tokenizer_name_or_path=str(llama2_tokenizer_dir),
        output_prefix=str(root / "alpaca"), prompt_type="llama2", pack=True, neat_pack=True,
        append_eod=True, seq_length=512, dtype="optimal", cache_dir=str(root / "cache"),
    )  # fmt: skip
    return preprocess(cfg).prefix


def test_megatron_reads_packed_dataset(megatron_core: Any, packed_alpaca: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ours = open_sft_dataset(packed_alpaca)
    rows = len(ours["input_ids"])
    assert rows > 100
    for key in SFT_KEYS:
        theirs = IndexedDataset(sft_prefix(packed_alpaca, key))
        assert len(theirs) == rows, key
        assert theirs.index.dtype == ours[key].dtype.type, key
        assert set(theirs.sequence_lengths.tolist()) == {512}, key
        assert theirs.document_indices.tolist() == list(range(rows + 1)), key
        for i in range(rows):
            assert np.array_equal(theirs[i], ours[key][i]), f"{key} row {i} differs"
    assert ours["input_ids"].dtype == np.uint16  # --dtype optimal with a 32000-token vocab
    segments = IndexedDataset(sft_prefix(packed_alpaca, "attention_mask"))
    assert max(int(segments[i].max()) for i in range(rows)) > 1, "neat-pack rows hold samples"


def test_mindspeed_glob_sees_exactly_the_three_fields(packed_alpaca: Path) -> None:
    """MindSpeed finds the fields with this glob and regex; side files must not match."""
    prefix = str(packed_alpaca)
    assert Path(f"{prefix}.packft.json").is_file() and Path(f"{prefix}.packft.plan.npz").is_file()
    names = sorted(glob.glob(f"{prefix}_packed_*_document*"))
    expected = sorted(f"{sft_prefix(prefix, k)}.{ext}" for k in SFT_KEYS for ext in ("bin", "idx"))
    assert names == expected
    template = re.escape(prefix) + r"_packed_(.*)_document(.*)"
    assert {re.match(template, n).group(1) for n in names} == set(SFT_KEYS)
