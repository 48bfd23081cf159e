"""Checkpoint files for ``packft.convert``: lazy HF reading, safe Megatron reading, atomic writing.

* HF weights are read one tensor at a time: safetensors through ``safe_open`` (only the requested
  tensor is copied out of the file), ``.bin`` through ``torch.load(weights_only=True, mmap=True)``.
* Megatron/MindSpeed ``model_optim_rng.pt`` files are pickled with protocol 4 and carry an
  ``argparse.Namespace``, which torch's weights-only loader rejects. They are read through
  ``RESTRICTED_PICKLE``, handed to ``torch.load`` as its ``pickle_module``: its unpickler resolves
  only tensor/storage rebuild functions, torch dtypes and ``Size``, ``OrderedDict``,
  ``argparse.Namespace`` and plain builtin types. Names from Megatron, MindSpeed, Transformer Engine
  and numpy (enums in Megatron's args such as ``AttnBackend``, numpy RNG state, TE's ``BytesIO``
  extra state) are never imported or called: they load as inert ``Opaque`` records. Any other
  global (``os.system``, ``builtins.eval``, ...) stops the load with ``UnsafeCheckpointError``
  naming it. Files are
  memory-mapped, so a stage's shards cost page cache, not heap.
* Output directories appear atomically: everything is written into a temporary sibling directory,
  fsynced, then renamed over the target (``atomic_dir``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import re
import shutil
import tempfile
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from packft.convert_keys import ConvertError

LATEST_FILE = "latest_checkpointed_iteration.txt"
MODEL_FILE = "model_optim_rng.pt"
HF_INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


# ------------------------------------------------------------------------------------ safe pickle
class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint references a Python global that a weights file has no reason to contain."""


class Opaque:
    """Inert stand-in for a Megatron/MindSpeed/numpy object: records its name, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Opaque({self.qualname}, args={self.args!r})"

    qualname = "?"


_TORCH_FUNCS = {
    ("torch._utils", n)
    for n in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
    )
}
_PLAIN = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("_codecs", "encode"): __import__("_codecs").encode,  # protocol-2 pickles spell bytes this way
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
_BUILTIN_TYPES = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "bool", "str"}
_BUILTIN_TYPES |= {"bytes", "bytearray", "complex"}
_OPAQUE_PREFIXES = ("megatron", "mindspeed", "mindspeed_llm", "transformer_engine", "numpy")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_FUNCS:
            return getattr(torch._utils, name)
        if (module, name) in _PLAIN:
            return _PLAIN[(module, name)]
        if module == "builtins" and name in _BUILTIN_TYPES:
            return getattr(__import__("builtins"), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.split(".")[0] in _OPAQUE_PREFIXES or (module, name) == ("_io", "BytesIO"):
            return type(name, (Opaque,), {"qualname": f"{module}.{name}"})
        raise UnsafeCheckpointError(
            f"refused to unpickle the global {module}.{name}: a weights checkpoint only needs "
            "tensors, OrderedDict, argparse.Namespace and plain types, so this file may run code "
            "when loaded. Do not load it unless you know where it came from."
        )


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


RESTRICTED_PICKLE = types.ModuleType("packft_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]


def load_mcore_file(path: Path) -> dict[str, Any]:
    """Read one ``model_optim_rng.pt`` safely (restricted unpickler), memory-mapped when possible.

    Raises:
        UnsafeCheckpointError: the file references a global outside the allow-list (names it).
    """
    kwargs: dict[str, Any] = dict(map_location="cpu", pickle_module=RESTRICTED_PICKLE)
    try:
        try:
            obj = torch.load(path, weights_only=False, mmap=True, **kwargs)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            obj = torch.load(path, weights_only=False, **kwargs)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{path}: {exc}") from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a Megatron checkpoint dict")
    return obj


# -------------------------------------------------------------------------------- Megatron layout
def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    """``mp_rank_XX`` or, with pipeline parallelism, ``mp_rank_XX_YYY``."""
    return f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp > 1 else "")


def find_iteration_dir(load_dir: Path) -> Path:
    """The directory ``latest_checkpointed_iteration.txt`` names (``iter_0000001``, ``release``)."""
    latest = load_dir / LATEST_FILE
    if not latest.is_file():
        found = sorted(p.name for p in load_dir.iterdir()) if load_dir.is_dir() else []
        raise FileNotFoundError(
            f"{latest} is missing, so {load_dir} is not a Megatron checkpoint (it holds: "
            f"{found[:10] or 'nothing'}). Pass the directory that contains {LATEST_FILE}."
        )
    text = latest.read_text().strip()
    name = "release" if text == "release" else f"iter_{int(text):07d}"
    if not (load_dir / name).is_dir():
        raise FileNotFoundError(f"{latest} says {text!r} but {load_dir / name} does not exist")
    return load_dir / name


def discover_ranks(iter_dir: Path) -> list[list[Path]]:
    """``paths[pp_rank][tp_rank]`` of every ``model_optim_rng.pt``; checks the grid is complete."""
    ranks: dict[tuple[int, int], Path] = {}
    for d in iter_dir.iterdir():
        m = re.fullmatch(r"mp_rank_(\d{2})(?:_(\d{3}))?(_\d{3})?", d.name)
        if not m:
            continue
        if m.group(3):
            raise ConvertError(
                f"{d} has an expert-parallel rank; MoE checkpoints are not supported"
            )
        ranks[(int(m.group(2) or 0), int(m.group(1)))] = d / MODEL_FILE
    if not ranks:
        hint = ""
        if list(iter_dir.glob("*.distcp")) or (iter_dir / ".metadata").exists():
            hint = (
                ": it is a torch_dist (distributed) checkpoint; packft reads the 'torch' format, "
                "so save with --ckpt-format torch (or convert it with Megatron first)"
            )
        raise FileNotFoundError(f"no mp_rank_* directories in {iter_dir}{hint}")
    pp = max(p for p, _ in ranks) + 1
    tp = max(t for _, t in ranks) + 1
    grid = [[ranks.get((p, t)) for t in range(tp)] for p in range(pp)]
    missing = [rank_dir_name(t, p, pp) for p in range(pp) for t in range(tp) if grid[p][t] is None]
    missing += [str(x) for row in grid for x in row if x is not None and not x.is_file()]
    if missing:
        raise FileNotFoundError(f"{iter_dir} is incomplete for TP={tp} PP={pp}; missing {missing}")
    return grid  # type: ignore[return-value]


def save_mcore_file(path: Path, state: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    """One rank's file, as MindSpeed writes it: pickle protocol 4, no optimizer or RNG state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"args": args, "checkpoint_version": 3.0, "iteration": 1, "model": state}
    torch.save(obj, path, pickle_protocol=4)


# ------------------------------------------------------------------------------------ HF weights
class HFReader:
    """Lazy access to an HF checkpoint directory: lists keys up front, loads one tensor per ``get``.

    Safetensors files are opened per ``get``, so no mapping outlives the tensor it produced
    (a long-lived ``safe_open`` keeps every touched page of the shard in RSS). A ``.bin`` shard is
    memory-mapped once and dropped when ``get`` moves on to another shard.
    """

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.key_file: dict[str, Path] = {}
        self._bin: tuple[Path, dict[str, torch.Tensor]] | None = None
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (model_dir / index).is_file():
                weight_map = json.loads((model_dir / index).read_text())["weight_map"]
                self.key_file = {k: model_dir / f for k, f in weight_map.items()}
                return
        files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
        if not files:
            found = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []
            raise FileNotFoundError(
                f"no HF weights in {model_dir} (looked for {HF_INDEX}, *.safetensors, "
                f"pytorch_model.bin); it holds: {found[:10] or 'nothing'}"
            )
        for f in files:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as handle:
                    self.key_file.update(dict.fromkeys(handle.keys(), f))
            else:
                self.key_file.update(dict.fromkeys(self._load_bin(f), f))

    def _load_bin(self, path: Path) -> dict[str, torch.Tensor]:
        if self._bin is None or self._bin[0] != path:
            self._bin = None
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # pre-zip .bin files cannot be memory-mapped
                sd = torch.load(path, map_location="cpu", weights_only=True)
            self._bin = (path, sd)
        return self._bin[1]

    def keys(self) -> list[str]:
        return list(self.key_file)

    def get(self, key: str) -> torch.Tensor:
        path = self.key_file[key]
        if path.suffix != ".safetensors":
            return self._load_bin(path)[key]
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(key)


class DictReader:
    """The ``HFReader`` interface over an in-memory state dict (e.g. ``model.state_dict()``)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def keys(self) -> list[str]:
        return list(self.state)

    def get(self, key: str) -> torch.Tensor:
        return self.state[key].detach()


def hf_shard_name(i: int, n: int) -> str:
    """MindSpeed's per-layer shard name (the two widths really differ)."""
    return f"model-{i:05d}-of-{n:06d}.safetensors"


def save_hf_shard(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    """Write one safetensors shard; returns its payload bytes for the index's ``total_size``."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def write_hf_index(save_dir: Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (save_dir / HF_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def copy_hf_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config and tokenizer files (everything that is not weights)."""
    copied = []
    for f in sorted(src.iterdir()):
        if (
            f.is_file()
            and not f.name.endswith(WEIGHT_SUFFIXES)
            and not f.name.endswith(".index.json")
        ):
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied


# ------------------------------------------------------------------------------- atomic directory
def check_save_dir(save_dir: Path, overwrite: bool, load_dir: Path | None = None) -> None:
    """Refuse an existing ``save_dir`` without ``overwrite`` (checked before any work)."""
    if load_dir is not None and save_dir.resolve() == load_dir.resolve():
        raise ConvertError(f"--save-dir {save_dir} is the --load-dir; choose another directory")
    if save_dir.exists() and not overwrite:
        raise FileExistsError(
            f"--save-dir {save_dir} already exists; pass --overwrite to replace it, "
            "or choose a new directory"
        )


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(dirpath)


@contextmanager
def atomic_dir(final: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success fsync it and rename it into place.

    An existing ``final`` (only with ``overwrite``) is moved aside first and restored if the
    rename fails, so at every instant either the old or the new directory is complete.
    """
    check_save_dir(final, overwrite)
    final = final.absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.rename(final, old / final.name)
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(old / final.name, final)
                old.rmdir()
                raise
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
