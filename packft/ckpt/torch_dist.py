"""Torch distributed checkpoints read without running code: Megatron ``torch_dist`` and packft's own.

Megatron's ``--ckpt-format torch_dist`` (megatron-core ``dist_checkpointing.save``) writes one
directory per iteration::

    iter_0000100/metadata.json   {"sharded_backend": "torch_dist", ...}
    iter_0000100/common.pt       torch.save of the non-sharded state: args, iteration, ...
    iter_0000100/.metadata       pickled torch.distributed.checkpoint Metadata
    iter_0000100/__R_T.distcp    tensors (each one a torch.save at an offset) and pickled objects

Every tensor is stored as its *global* tensor, whatever TP/PP/DP wrote it: the layers of a
homogeneous decoder are stacked along a leading axis (``decoder.layers.mlp.linear_fc2.weight`` has
shape ``(num_layers, hidden, ffn)``, one chunk per layer and TP rank), TP-split tensors are
concatenated (fused QKV per query group, so the global tensor is the TP-1 layout; SwiGLU's fc1 as
``[gate; up]``), ``_extra_state`` and RNG/rerun states are pickled objects.
:class:`DistCheckpoint` reads that without torch.distributed and without unpickling objects:
``.metadata`` and ``common.pt`` go through the allow-list of :mod:`packft.ckpt.safe_pickle`, each
tensor chunk through ``torch.load(weights_only=True)`` of its byte range, one layer at a time, so
memory stays at one layer plus the embedding. Before anything is converted, :meth:`check_complete`
checks that every chunk the model needs exists in a file long enough to hold it and that the chunks
tile each tensor exactly.

packft's trainer writes its own checkpoints with ``torch.distributed.checkpoint`` too;
:func:`safe_dcp_load` is ``dcp.load`` with the metadata read through the allow-list and non-tensor
items through ``weights_only=True`` (torch's reader would ``pickle.load`` both).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from packft.ckpt.safe_pickle import load_restricted, load_weights_only, restricted_loads
from packft.core.errors import IntegrityError, PackftError

METADATA = ".metadata"
MEGATRON_METADATA = "metadata.json"
COMMON = "common.pt"


def is_dist_checkpoint(directory: Path) -> bool:
    """True for a torch distributed checkpoint directory (Megatron torch_dist or plain DCP)."""
    return (directory / MEGATRON_METADATA).is_file() or (directory / METADATA).is_file()


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a global tensor: where it sits in the tensor and in which file."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    start: int
    length: int
    transformed: bool


class DistCheckpoint:
    """Tensors of a torch distributed checkpoint by global key, read chunk by chunk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        info = directory / MEGATRON_METADATA
        if info.is_file():
            try:
                backend = json.loads(info.read_text()).get("sharded_backend")
            except (ValueError, AttributeError) as exc:
                raise IntegrityError(f"{info} is not Megatron's metadata JSON ({exc})") from None
            if backend != "torch_dist":
                raise IntegrityError(
                    f"{info} names the sharded backend {backend!r}; packft reads 'torch_dist' "
                    "(Megatron --ckpt-format torch_dist) and 'torch' checkpoints"
                )
        md_path = directory / METADATA
        if not md_path.is_file():
            raise FileNotFoundError(
                f"{directory} is an incomplete torch_dist checkpoint: {METADATA} is missing "
                f"(it holds {sorted(p.name for p in directory.iterdir())[:10]}); copy the whole "
                "iteration directory again"
            )
        metadata = restricted_loads(md_path.read_bytes(), md_path)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.chunks: dict[str, list[Chunk]] = {}
        for key, item in getattr(metadata, "state_dict_metadata", {}).items():
            if not hasattr(item, "chunks") or not hasattr(item, "size"):
                continue  # a pickled object (extra state, RNG), never read
            self.shapes[key] = tuple(item.size)
            self.chunks[key] = [self._chunk(metadata, key, c) for c in item.chunks]

    @staticmethod
    def _chunk(metadata: Any, key: str, chunk: Any) -> Chunk:
        from torch.distributed.checkpoint.metadata import MetadataIndex

        where = metadata.storage_data.get(MetadataIndex(key, chunk.offsets))
        if where is None:
            raise IntegrityError(f"{METADATA} lists a chunk of {key} at {list(chunk.offsets)} "
                                 "but not where it is stored: the metadata is corrupt")  # fmt: skip
        return Chunk(tuple(chunk.offsets), tuple(chunk.sizes), where.relative_path,
                     where.offset, where.length, bool(getattr(where, "transform_descriptors", None)))  # fmt: skip

    def common(self) -> dict[str, Any]:
        """The non-sharded state (``args``, ``iteration`` ...) from ``common.pt``; {} if absent."""
        path = self.directory / COMMON
        if not path.is_file():
            return {}
        obj = load_restricted(path)
        return obj if isinstance(obj, dict) else {}

    def check_complete(self, keys: Iterable[str]) -> None:
        """Every chunk of ``keys`` is stored in an existing file that is long enough, and the
        chunks of each key cover its global shape exactly (no shard missing)."""
        missing: dict[str, int] = {}
        short: set[str] = set()
        problems = []
        for key in keys:
            volume = 0
            for c in self.chunks[key]:
                path = self.directory / c.file
                if not path.is_file():
                    missing[c.file] = missing.get(c.file, 0) + 1
                elif path.stat().st_size < c.start + c.length:
                    short.add(c.file)
                volume += _numel(c.sizes)
                if c.transformed:
                    problems.append(f"{key} is stored compressed/transformed (not supported)")
            if volume != _numel(self.shapes[key]):
                problems.append(f"{key}: its chunks cover {volume} of {_numel(self.shapes[key])}")
        problems += [f"{f} is missing ({n} tensor chunks)" for f, n in sorted(missing.items())]
        problems += [f"{f} is truncated" for f in sorted(short)]
        if problems:
            raise IntegrityError(
                f"torch_dist checkpoint {self.directory} is incomplete: {'; '.join(problems[:6])}"
                f"{' ...' if len(problems) > 6 else ''}. Copy the whole iteration directory again"
            )

    def read(self, key: str, index: int | None = None) -> torch.Tensor:
        """The global tensor ``key``, or with ``index`` its slice ``[index]`` along axis 0 (one
        layer of a stacked decoder), assembled from the chunks that hold it."""
        shape = self.shapes[key]
        out_shape = shape if index is None else shape[1:]
        out: torch.Tensor | None = None
        for c in self.chunks[key]:
            if index is not None and not c.offsets[0] <= index < c.offsets[0] + c.sizes[0]:
                continue
            part = self._load_chunk(c).reshape(c.sizes)
            offsets, sizes = c.offsets, c.sizes
            if index is not None:
                part, offsets, sizes = part[index - offsets[0]], offsets[1:], sizes[1:]
            if out is None:
                out = torch.empty(out_shape, dtype=part.dtype)
            region = tuple(slice(o, o + s) for o, s in zip(offsets, sizes, strict=True))
            out[region] = part
        if out is None:
            raise IntegrityError(f"{self.directory}: no stored chunk holds {key}[{index}]")
        return out

    def _load_chunk(self, c: Chunk) -> torch.Tensor:
        path = self.directory / c.file
        with path.open("rb") as fh:
            fh.seek(c.start)
            data = fh.read(c.length)
        if len(data) != c.length:
            raise IntegrityError(f"{path} is truncated: a tensor chunk ends past the file end")
        tensor = load_weights_only(io.BytesIO(data), source=path)
        if not isinstance(tensor, torch.Tensor):
            raise IntegrityError(f"{path}: the chunk at byte {c.start} is not a tensor")
        return tensor


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ------------------------------------------------------------------------------ packft's trainer
def safe_dcp_load(state: dict[str, Any], checkpoint: Path) -> None:
    """``torch.distributed.checkpoint.load(state, checkpoint)`` that unpickles nothing unsafe."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import (
        CheckpointException,
        DefaultLoadPlanner,
        FileSystemReader,
    )
    from torch.distributed.checkpoint.metadata import StorageMeta

    path = Path(checkpoint) / METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {checkpoint} is an incomplete checkpoint")
    metadata = restricted_loads(path.read_bytes(), path)  # before dcp.load, which logs tracebacks

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            item = Path(checkpoint) / read_item.storage_index.fqn  # names the entry in errors
            obj = load_weights_only(value, source=item)
            fqn = read_item.dest_index.fqn
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element

                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    try:
        with warnings.catch_warnings():  # one process without a group is the intended case
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(state, storage_reader=SafeReader(checkpoint), planner=SafePlanner())
    except CheckpointException as exc:  # a BaseException holding each rank's error + traceback
        raise _first_failure(exc, checkpoint) from None


def _first_failure(exc: BaseException, checkpoint: Path) -> BaseException:
    """The error a rank raised inside ``dcp.load``: ours (refused pickle) and OS errors as they
    are, anything else (torch failing on corrupt bytes) as one ``IntegrityError`` line."""
    for failure in getattr(exc, "failures", {}).values():
        error = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(error, PackftError | OSError):
            return error
        if isinstance(error, Exception):
            reason = (str(error).strip().splitlines() or [""])[0][:160]
            return IntegrityError(
                f"{checkpoint}: a stored item cannot be read ({type(error).__name__}: {reason}); "
                "the checkpoint is corrupt: resume from an earlier one or start without --resume"
            )
    return IntegrityError(f"{checkpoint}: torch.distributed.checkpoint could not load it")
