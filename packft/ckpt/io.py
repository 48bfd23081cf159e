"""Checkpoint files for ``packft.ckpt.convert``: lazy HF reads, safe Megatron reads, atomic writes.

* HF weights are read one tensor at a time: safetensors through ``safe_open`` (only the requested
  tensor is copied out of the file), ``.bin`` through ``torch.load(weights_only=True, mmap=True)``.
  A missing, unreadable or corrupt shard is one error naming the file.
* Megatron/MindSpeed ``model_optim_rng.pt`` files (and torch_dist ``common.pt``) carry an
  ``argparse.Namespace`` with torch dtypes and Megatron enums, ``collections.defaultdict``,
  optimizer, scheduler and RNG state; torch's weights-only loader rejects them. They are read
  through the allow-list unpickler of :mod:`packft.ckpt.safe_pickle` (nothing outside it is imported
  or called; Megatron/numpy objects load as inert records), memory-mapped so a stage's shards cost
  page cache, not heap. torch_dist directories are read by :mod:`packft.ckpt.torch_dist`.
* Layout: ``latest_checkpointed_iteration.txt`` names ``iter_{n:07d}`` or ``release``;
  ``--load-dir`` may also be one iteration directory itself.
* Output directories appear atomically (:func:`packft.core.atomic.atomic_dir`: a staged
  directory, fsynced, renamed into place, an existing one swapped out in one rename). Before any
  work, ``check_save_dir`` refuses an existing target (without ``--overwrite``) and probes that
  the target's file system is writable.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from packft.ckpt.keys import ConvertError
from packft.ckpt.safe_pickle import (
    CorruptCheckpointError,
    load_restricted,
    load_weights_only,
)
from packft.ckpt.torch_dist import METADATA, is_dist_checkpoint
from packft.core.errors import PackftError, describe_os_error
from packft.core.faults import inject
from packft.core.writers import probe_writable

LATEST_FILE = "latest_checkpointed_iteration.txt"
MODEL_FILE = "model_optim_rng.pt"
HF_INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


# ------------------------------------------------------------------------------------ safe pickle
def load_mcore_file(path: Path) -> dict[str, Any]:
    """Read one ``model_optim_rng.pt`` (or a torch_dist ``common.pt``) through the allow-list.

    Raises:
        UnsafeCheckpointError: the file references a global outside the allow-list (names it).
        CorruptCheckpointError: the file is not a torch checkpoint (truncated, random bytes).
    """
    obj = load_restricted(path)
    if not isinstance(obj, dict):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a Megatron checkpoint dict")
    return obj


# -------------------------------------------------------------------------------- Megatron layout
def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    """``mp_rank_XX`` or, with pipeline parallelism, ``mp_rank_XX_YYY``."""
    return f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp > 1 else "")


def is_iteration_dir(path: Path) -> bool:
    """An ``iter_*``/``release`` directory itself: rank directories or a torch_dist checkpoint."""
    return path.is_dir() and (
        is_dist_checkpoint(path) or any(p.name.startswith("mp_rank_") for p in path.iterdir())
    )


def find_iteration_dir(load_dir: Path) -> Path:
    """The directory ``latest_checkpointed_iteration.txt`` names (``iter_0000001``, ``release``),
    or ``load_dir`` itself when it is one iteration directory (as Megatron's own loader resolves
    it: an integer means ``iter_{n:07d}``, the word ``release`` the ``release`` directory)."""
    if not load_dir.is_dir():
        what = "is not a directory" if load_dir.exists() else "does not exist"
        raise FileNotFoundError(
            f"--load-dir {load_dir} {what}; pass a Megatron checkpoint directory"
        )
    if is_iteration_dir(load_dir):
        return load_dir
    latest = load_dir / LATEST_FILE
    if not latest.is_file():
        found = sorted(p.name for p in load_dir.iterdir())
        iters = [n for n in found if n == "release" or n.startswith("iter_")]
        hint = f" or one iteration directory, e.g. {load_dir / iters[-1]}" if iters else ""
        raise FileNotFoundError(
            f"{latest} is missing, so {load_dir} is not a Megatron checkpoint (it holds: "
            f"{found[:10] or 'nothing'}). Pass the directory that contains {LATEST_FILE}{hint}."
        )
    text = latest.read_text(errors="replace").strip()
    if text != "release" and not text.isdigit():
        raise ConvertError(
            f"{latest} holds {text[:40]!r}, not an iteration number or 'release' (Megatron "
            "writes one of those); fix the file or pass the iteration directory as --load-dir"
        )
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
        if list(iter_dir.glob("*.distcp")):
            hint = f": it looks like a distributed checkpoint without its {METADATA} (incomplete)"
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
        if not model_dir.is_dir():
            what = "is not a directory" if model_dir.exists() else "does not exist"
            raise FileNotFoundError(f"--load-dir {model_dir} {what}; pass an HF model directory")
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (model_dir / index).is_file():
                self.key_file = _read_index(model_dir / index)
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
                with _safetensors(f) as handle:
                    self.key_file.update(dict.fromkeys(handle.keys(), f))
            else:
                self.key_file.update(dict.fromkeys(self._load_bin(f), f))

    def _load_bin(self, path: Path) -> dict[str, torch.Tensor]:
        if self._bin is None or self._bin[0] != path:
            self._bin = None
            sd = load_weights_only(path, mmap=True)  # pre-zip .bin files are read, not mapped
            if not isinstance(sd, dict):
                raise CorruptCheckpointError(
                    f"{path} holds a {type(sd).__name__}, not a state dict"
                )
            self._bin = (path, sd)
        return self._bin[1]

    def keys(self) -> list[str]:
        return list(self.key_file)

    def get(self, key: str) -> torch.Tensor:
        path = self.key_file[key]
        if path.suffix != ".safetensors":
            return self._load_bin(path)[key]
        with _safetensors(path) as handle:
            return handle.get_tensor(key)


def _read_index(index: Path) -> dict[str, Path]:
    """``weight_map`` of an HF index file: tensor name -> shard path."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: index.parent / f for k, f in weight_map.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptCheckpointError(
            f"{index} is not an HF index (JSON with a 'weight_map' object): {exc}"
        ) from None


@contextmanager
def _safetensors(path: Path) -> Iterator[Any]:
    """``safe_open`` whose failures (missing, unreadable, corrupt header) name the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (the model's index lists it)")
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise CorruptCheckpointError(
            f"{path} cannot be read as safetensors ({exc}); it is unreadable, truncated or "
            "corrupt: copy it again from its source"
        ) from None
    with handle:
        yield handle


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


# ------------------------------------------------------------------------------- save directory
def check_save_dir(save_dir: Path, overwrite: bool, load_dir: Path | None = None) -> None:
    """Refuse an existing ``save_dir`` without ``overwrite`` (checked before any work)."""
    if load_dir is not None and save_dir.resolve() == load_dir.resolve():
        raise ConvertError(f"--save-dir {save_dir} is the --load-dir; choose another directory")
    if save_dir.exists() and not overwrite:
        raise FileExistsError(
            f"--save-dir {save_dir} already exists; pass --overwrite to replace it, "
            "or choose a new directory"
        )
    check_writable(save_dir)


def check_writable(save_dir: Path) -> None:
    """Create and remove a probe directory where ``save_dir`` will appear, so a read-only or
    full file system stops the command before any conversion work, in one line."""
    target = save_dir.absolute().parent
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "--save-dir is inside a file", str(target))
    try:
        inject("convert.save_dir.probe", target)
        probe_writable(target, "the --save-dir location")
    except OSError as exc:
        raise PackftError(
            f"--save-dir {save_dir} cannot be created: {describe_os_error(exc)}. Choose a "
            "writable --save-dir (nothing was converted)"
        ) from exc
