"""Loading pickles from disk without running code: every ``torch.load`` in packft goes through here.

Two loaders, chosen by what the file may contain:

* :func:`load_weights_only`: ``torch.load(weights_only=True)`` (torch's own allow-list: tensors,
  plain containers and scalars). packft's trainer files (``trainer_state.pt``, ``rng_rank*.pt``)
  and HF ``pytorch_model.bin`` shards hold nothing else.
* :func:`load_restricted` / :func:`restricted_loads`: for files other programs wrote, which hold
  more than tensors. Megatron-LM, MindSpeed-LLM and torch distributed checkpoints pickle
  ``argparse.Namespace`` args with torch dtypes and Megatron enums, ``collections.defaultdict``
  (MindSpeed's converter), numpy RNG states, Transformer-Engine extra state and DCP metadata
  dataclasses. The unpickler resolves an explicit allow-list of harmless names: tensor/storage
  rebuild functions, torch dtypes/``Size``/``device``/layouts, ``OrderedDict``, ``Namespace``,
  ``defaultdict`` whose default factory is a plain container or scalar type, tensors carrying
  plain attributes (Megatron marks tensor-parallel parameters that way), plain builtin types,
  ``pathlib`` paths and the data classes of ``torch.distributed.checkpoint``. Names from
  Megatron, MindSpeed, Transformer Engine and numpy are never imported or called: they load as
  inert :class:`Opaque` records. Anything else (``os.system``, ``builtins.eval``, ...) stops the
  load with :class:`UnsafeCheckpointError` naming the global, before any of it runs.

A file that is not a pickle/zip at all, or is truncated, raises :class:`CorruptCheckpointError`
naming the file, instead of torch's multi-line internals.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import io
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from packft.core.errors import IntegrityError, PackftError


class UnsafeCheckpointError(PackftError, pickle.UnpicklingError):
    """A checkpoint references a Python global that a checkpoint has no reason to contain."""


class CorruptCheckpointError(IntegrityError):
    """A checkpoint file that cannot be decoded at all (truncated, random bytes, wrong format)."""


class Opaque:
    """Inert stand-in for a Megatron/MindSpeed/numpy object: records its name, runs nothing."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Opaque({self.qualname}, args={self.args!r})"


_REBUILD_FUNCS = {
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
}
_DEFAULT_FACTORIES = (None, dict, list, set, frozenset, tuple, int, float, str, bytes, bool)
_DEFAULT_FACTORIES += (collections.OrderedDict,)
_BUILTIN_TYPES = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "bool", "str"}
_BUILTIN_TYPES |= {"bytes", "bytearray", "complex", "slice"}
_OPAQUE_PREFIXES = ("megatron", "mindspeed", "mindspeed_llm", "transformer_engine", "numpy")
# Data classes and enums of torch distributed checkpoints (their ``.metadata`` pickle).
_DCP = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": {
        "WriteItem", "WriteItemType", "TensorWriteData", "LoadItemType", "ReadItem",
    },
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "torch.serialization": {"_get_layout"},
}  # fmt: skip


def _defaultdict(factory: Any = None, *rest: Any) -> collections.defaultdict:
    """``collections.defaultdict`` as pickles rebuild it, refusing a factory that is not a type."""
    if rest or not any(factory is ok for ok in _DEFAULT_FACTORIES):
        raise UnsafeCheckpointError(
            f"refused to unpickle a collections.defaultdict whose default factory is {factory!r}: "
            "only plain container or scalar types are accepted"
        )
    return collections.defaultdict(factory)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> torch.Tensor:
    """A tensor or parameter with plain attributes (``tensor_model_parallel`` ...), nothing else."""
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafeCheckpointError(f"refused to rebuild a tensor as {new_type!r}")
    attrs = state[0] if isinstance(state, tuple) else state
    if any(str(k).startswith("__") for k in dict(attrs or {})):
        raise UnsafeCheckpointError("refused tensor state that sets dunder attributes")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


_PLAIN = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _defaultdict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("_codecs", "encode"): __import__("_codecs").encode,  # protocol-2 pickles spell bytes this way
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}


def _refuse(module: str, name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refused to unpickle the global {module}.{name}: a checkpoint only needs tensors, plain "
        "containers, argparse.Namespace and dtypes, so this file may run code when loaded. Do not "
        "load it unless you know where it came from"
    )


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the allow-list in the module docstring."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in _REBUILD_FUNCS:
            return getattr(torch._utils, name)
        if (module, name) in _PLAIN:
            return _PLAIN[(module, name)]
        if module == "builtins" and name in _BUILTIN_TYPES:
            return getattr(__import__("builtins"), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype | torch.layout):
            return getattr(torch, name)
        if name in _DCP.get(module, ()):
            return getattr(importlib.import_module(module), name)
        if module.split(".")[0] in _OPAQUE_PREFIXES or (module, name) == ("_io", "BytesIO"):
            return type(name, (Opaque,), {"qualname": f"{module}.{name}"})
        raise _refuse(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


RESTRICTED_PICKLE = types.ModuleType("packft_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]


def restricted_loads(data: bytes, source: str | Path) -> Any:
    """Unpickle plain pickle bytes (a DCP ``.metadata``) through the allow-list."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{source}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise _corrupt(source, exc) from None


def _corrupt(path: str | Path, exc: BaseException) -> CorruptCheckpointError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return CorruptCheckpointError(
        f"{path} is not a readable checkpoint file ({type(exc).__name__}: {reason}); it is "
        "truncated, corrupt or of another format: copy it again from its source"
    )


def load_restricted(path: Path, *, mmap: bool = True) -> Any:
    """``torch.load`` of a file other programs wrote, through the allow-list (memory-mapped when
    the file is a zip checkpoint, so tensors cost page cache, not heap)."""
    kwargs: dict[str, Any] = dict(map_location="cpu", pickle_module=RESTRICTED_PICKLE)
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, weights_only=False, mmap=True, **kwargs)
        return torch.load(path, weights_only=False, **kwargs)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{path}: {exc}") from None
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... on bad bytes
        raise _corrupt(path, exc) from None


def load_weights_only(
    file: Path | IO[bytes],
    *,
    source: str | Path | None = None,
    mmap: bool = False,
    extra_globals: list[Any] | None = None,
) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors: a refused global is named.

    ``source`` names ``file`` in messages when it is an open stream; ``mmap`` maps a zip file;
    ``extra_globals`` are allowed on top of torch's list (exact objects, not modules).
    """
    path = source if source is not None else file
    try:
        with torch.serialization.safe_globals(extra_globals or []):
            mapped = mmap and isinstance(file, Path) and zipfile.is_zipfile(file)
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:  # "Unsupported operand": not a pickle at all
            raise _corrupt(path, exc) from None
        module, _, name = found.group(1).rpartition(".")
        raise UnsafeCheckpointError(f"{path}: {_refuse(module, name)}") from None
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _corrupt(path, exc) from None
