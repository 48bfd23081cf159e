"""The ``tokenize`` task: one input file -> one Arrow shard of input_ids/labels (per-file cache).

Wraps :func:`packft.preprocess.tokenize_to_shard` (the CLI's step) with the CLI's own options
(``PreprocessConfig.tokenize_options()``). The shard is ``work_dir/shards/{shard_key[:40]}.arrow``
and the task's cache key sees that same :func:`packft.tokenize.shard_key` (input content,
tokenizer content, the options' ``cache_key()``, packft version), plus the task function's own
source: so the CLI and the flow agree on what is reusable by construction (bfd <-> ffd reuses
the shards in both), changing one of N input files re-tokenizes exactly that file, and renaming
or touching a file re-tokenizes nothing. There are no hand-kept field lists.

The flow fans this task out over the files with ``.map`` (threads, or a Dask/Ray cluster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from packft.preprocess.results import TokenizeResult
from packft.tokenize.options import TokenizeOptions
from tasks.caching import FileRef, content_cache
from tasks.serializer import SERIALIZER, allow


@allow
class TokenizerRef(FileRef):
    """A tokenizer pinned by the digest of all its files (or its hub id when not local)."""


def pin_tokenizer(path_or_id: str) -> TokenizerRef:
    """Pin a tokenizer by :func:`packft.tokenize.tokenizer_fingerprint` (the CLI's identity)."""
    from packft.tokenize.options import tokenizer_fingerprint

    path = Path(path_or_id).expanduser()
    local = path.resolve() if path.exists() else path
    return TokenizerRef(
        path=local, sha256=tokenizer_fingerprint(path_or_id), source=str(path_or_id)
    )


def shard_key_of(source: FileRef, tokenizer: FileRef, options: TokenizeOptions) -> str:
    """THE shard key (:func:`packft.tokenize.shard_key`): what the CLI names its shard by."""
    from packft.tokenize.options import shard_key

    return shard_key(source.sha256, tokenizer.sha256, options)


def shard_path(work_dir: Path, key: str) -> Path:
    """``work_dir/shards/{key[:40]}.arrow``, the CLI's layout under its ``--cache-dir``."""
    from packft.preprocess.steps import KEY_CHARS

    return Path(work_dir) / "shards" / f"{key[:KEY_CHARS]}.arrow"


def cache_view(params: dict[str, Any]) -> dict[str, Any]:
    """What the ``tokenize`` task's key sees: the shard key, nothing else."""
    return {"shard": shard_key_of(params["source"], params["tokenizer"], params["options"])}


def _outputs(p: dict[str, Any]) -> list[Path]:
    return [shard_path(p["work_dir"], cache_view(p)["shard"])]


def _intact(p: dict[str, Any]) -> bool:
    """The shard still matches its checksum record (else re-tokenize)."""
    from packft.dataset import check_seal
    from packft.preprocess import rejects_path_for

    shard = _outputs(p)[0]
    return check_seal(shard, [rejects_path_for(shard)]) is None


@task(
    name="tokenize",
    cache_key_fn=content_cache(
        exclude=("work_dir",), view=cache_view, outputs=_outputs, intact=_intact
    ),  # fmt: skip
    persist_result=True,
    result_serializer=SERIALIZER,
)
def tokenize(
    source: FileRef,
    tokenizer: TokenizerRef,
    options: TokenizeOptions,
    work_dir: Path,
) -> TokenizeResult:
    """Tokenize one file into its shard (``packft.preprocess.tokenize_to_shard``); returns its
    :class:`TokenizeResult` (counts and the length histogram, counted while tokenizing).

    ``options`` come from ``PreprocessConfig.tokenize_options()``, the CLI's own definition of
    the work, so the shard (and the key) are the ones ``packft preprocess`` would make.
    """
    from packft.preprocess import InputFile, TokenizerPin, tokenize_to_shard

    return tokenize_to_shard(
        InputFile(path=source.path, sha256=source.sha256, source=source.source, size=source.size),
        TokenizerPin(path_or_id=tokenizer.source or str(tokenizer.path), sha256=tokenizer.sha256),
        options, Path(work_dir) / "shards",
    )  # fmt: skip
