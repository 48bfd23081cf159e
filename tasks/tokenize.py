"""The ``tokenize`` task: one input file -> one Arrow shard of input_ids/labels (per-file cache).

Wraps :func:`packft.preprocess.tokenize_input` (the CLI's step). The shard directory and the cache
key are both derived from content: the input's SHA-256, the tokenizer directory's digest (every
file), and the :data:`TOKENIZE_FIELDS` of the config (format, key map, template, seq_length,
overlong, append_eod, on_invalid, repair, neat_pack, pack_algorithm; not ``workers`` or any
destination), plus the packft version
(and, in the key, the task's source). So changing one of N input files
re-tokenizes exactly that file, and renaming or touching a file re-tokenizes nothing.

The flow fans this task out over the files with ``.map`` (threads, or a Dask/Ray cluster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from packft import __version__
from packft.core.atomic import atomic_write_bytes
from tasks.caching import FileRef, content_cache, digest_json, tree_sha256


class TokenizerRef(FileRef):
    """A tokenizer pinned by the digest of all its files (or its hub id when not local)."""


def pin_tokenizer(path_or_id: str) -> TokenizerRef:
    """Digest a local tokenizer directory; a hub id is keyed by its name (and revision, if any)."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return TokenizerRef(path=path.resolve(), sha256=tree_sha256(path), source=str(path_or_id))
    return TokenizerRef(path=path, sha256=f"hub:{path_or_id}", source=str(path_or_id))


TOKENIZE_FIELDS = (
    "handler_name",
    "map_keys",
    "prompt_type",
    "tokenizer_type",
    "seq_length",
    "overlong",
    "append_eod",
    "on_invalid",
    "repair",  # --repair keeps records that would be rejected: other samples
    "neat_pack",  # with knapsack + drop, MindSpeed's per-pair neat-pack cut changes the shard
    "pack_algorithm",
    "max_record_bytes",  # records over it are rejected (too_large) instead of tokenized
)
"""PreprocessConfig fields that change a shard's bytes (``workers`` and destinations do not)."""


def tokenize_settings(cfg: Any) -> dict[str, Any]:
    """The cache-relevant part of a :class:`packft.preprocess.PreprocessConfig`."""
    return {name: getattr(cfg, name) for name in TOKENIZE_FIELDS}


def shard_dir(
    work_dir: Path, source: FileRef, tokenizer: FileRef, settings: dict[str, Any]
) -> Path:
    """``work_dir/shards/<digest>/``: the digest covers everything that changes the bytes."""
    name = digest_json(
        {
            "input": source.sha256,
            "tokenizer": tokenizer.sha256,
            "settings": settings,
            "packft": __version__,
        }
    )[:40]
    return Path(work_dir) / "shards" / name


def _outputs(p: dict[str, Any]) -> list[Path]:
    return [shard_dir(p["work_dir"], p["source"], p["tokenizer"], p["settings"]) / "DONE"]


def _intact(p: dict[str, Any]) -> bool:
    """The shard named by ``DONE`` still matches its checksum record (else re-tokenize)."""
    from packft.dataset import check_seal
    from packft.preprocess import rejects_path_for

    done = _outputs(p)[0]
    shard = done.parent / done.read_text().strip()
    return check_seal(shard, [rejects_path_for(shard)]) is None


@task(
    name="tokenize",
    cache_key_fn=content_cache(exclude=("work_dir", "cfg"), outputs=_outputs, intact=_intact),
    persist_result=True,
)
def tokenize(
    source: FileRef,
    tokenizer: TokenizerRef,
    settings: dict[str, Any],
    cfg: Any,
    work_dir: Path,
) -> dict[str, Any]:
    """Tokenize one file into its shard (``packft.preprocess.tokenize_input``); return counts.

    ``settings`` must equal ``tokenize_settings(cfg)``: it is what the cache sees, while ``cfg``
    (which also holds destinations and worker counts) is excluded from the key.
    """
    from packft.preprocess import rejects_path_for, tokenize_input
    from packft.tokenize import read_stats

    if settings != tokenize_settings(cfg):
        raise ValueError("tokenize: settings do not match cfg; build both from one config")
    out_dir = shard_dir(work_dir, source, tokenizer, settings)
    shard = tokenize_input(source.path, cfg, out_dir)  # reuses a complete shard already there
    atomic_write_bytes(out_dir / "DONE", shard.name.encode())
    stats = read_stats(shard)
    return {
        "file": source.source or str(source.path),
        "sha256": source.sha256,
        "shard": str(shard),
        "rejects": str(rejects_path_for(shard)),
        **{k: stats.get(k) for k in STAT_KEYS},
    }


STAT_KEYS = (
    "samples_in",
    "valid",
    "rejected",
    "repaired",
    "truncated",
    "truncated_marker_lost",
    "dropped",
    "written",
    "tokens",
    "supervised_tokens",
    "max_length",
)
