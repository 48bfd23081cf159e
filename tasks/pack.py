"""The ``pack`` (plan rows), ``write`` (new dataset version) and ``publish`` (move latest) tasks.

``pack`` wraps :func:`packft.preprocess.plan_shards` (lengths of all shards -> one global plan)
with ``PreprocessConfig.pack_options()`` and keeps the plan at ``work_dir/plans/{plan_key[:40]}.npz``
(the CLI's name for it; the task key sees the same :func:`packft.pack.options.plan_key`). ``write`` wraps :func:`packft.preprocess.write`
into a fresh version directory (see :mod:`packft.dataset.store`), then adds the per-sample digests
used for nightly diffs (``preprocess.write`` itself gathers every shard's rejects into
``{name}.rejects.jsonl``). Both are cached on content: shards are named by their shard key, plans by the plan key
(shard keys + pack options), versions by :func:`dataset_fingerprint` (plan key + write options),
so "same key" means "same bytes".
``publish`` is never cached: behind the publish gate (:mod:`packft.dataset.publish_gate`) it
atomically moves ``latest`` and prunes old versions, or raises ``PublishRefused`` leaving ``latest``
alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from packft.core import atomic_write_bytes
from packft.dataset import PublishGate, check_seal, store
from packft.dataset.options import WriteOptions, dataset_key
from packft.pack.options import PackOptions, plan_key
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.results import PlanResult, TokenizeResult, WriteResult
from tasks.caching import FileRef, content_cache
from tasks.results import PublishedVersion
from tasks.serializer import SERIALIZER


def shard_ref(result: TokenizeResult) -> FileRef:
    """A tokenize result as a cache-friendly reference (``sha256`` is its shard key)."""
    return FileRef(path=result.shard, sha256=result.shard_key, source=result.file)


def plan_key_of(shards: list[FileRef], options: PackOptions) -> str:
    """THE plan key (:func:`packft.pack.options.plan_key`): what the CLI names its plan by."""
    return plan_key([s.sha256 for s in shards], options)


def plan_file(work_dir: Path, shards: list[FileRef], options: PackOptions) -> Path:
    """``work_dir/plans/{plan_key[:40]}.npz``, the CLI's layout under its ``--cache-dir``."""
    from packft.preprocess.steps import KEY_CHARS

    return Path(work_dir) / "plans" / f"{plan_key_of(shards, options)[:KEY_CHARS]}.npz"


def dataset_fingerprint(plan_key: str, options: WriteOptions) -> str:
    """Identity of a dataset version (:func:`packft.dataset.options.dataset_key`): the plan key
    (which covers shards, hence inputs, tokenizer and tokenize options, and the pack options)
    and the write options."""
    return dataset_key(plan_key, options)


def cache_view(params: dict[str, Any]) -> dict[str, Any]:
    """What the ``pack`` task's key sees: the plan key, nothing else."""
    return {"plan": plan_key_of(params["shards"], params["options"])}


def _plan_intact(p: dict[str, Any]) -> bool:
    return check_seal(plan_file(p["work_dir"], p["shards"], p["options"])) is None


@task(
    name="pack",
    cache_key_fn=content_cache(
        exclude=("work_dir",),
        view=cache_view,
        outputs=lambda p: [plan_file(p["work_dir"], p["shards"], p["options"])],
        intact=_plan_intact,
    ),
    persist_result=True,
    result_serializer=SERIALIZER,
)
def pack(shards: list[FileRef], options: PackOptions, work_dir: Path) -> PlanResult:
    """Plan the rows of all samples of all shards at once (``packft.preprocess.plan_shards``,
    with ``PreprocessConfig.pack_options()``); returns the plan file and counts."""
    from packft.preprocess import plan_shards

    result, _ = plan_shards([s.path for s in shards], [s.sha256 for s in shards], options,
                            Path(work_dir) / "plans")  # fmt: skip
    return result


def _version_outputs(p: dict[str, Any]) -> list[Path]:
    found = store.find_version(p["output_root"], p["fingerprint"])
    return [found if found is not None else Path(p["output_root"]) / "versions" / "(missing)"]


@task(
    name="write",
    cache_key_fn=content_cache(
        exclude=("cfg", "inputs", "plan", "shards", "tokenizer"), outputs=_version_outputs
    ),  # fmt: skip
    persist_result=True,
    result_serializer=SERIALIZER,
)
def write(
    plan: FileRef,
    shards: list[FileRef],
    cfg: PreprocessConfig,
    inputs: list[FileRef],
    tokenizer: FileRef,
    output_root: Path,
    fingerprint: str,
) -> WriteResult:
    """Write the dataset into a new complete version directory; returns its paths and stats.

    The key is ``fingerprint`` (:func:`dataset_fingerprint` of the plan key and
    ``cfg.write_options()``) and the output root: ``plan``, ``shards``, ``inputs`` and ``cfg``
    are what that fingerprint already names.
    """
    from packft.preprocess import InputFile, TokenizerPin
    from packft.preprocess import write as write_dataset

    name = Path(cfg.output_prefix).name
    tmp, final = store.new_version_dir(output_root, fingerprint)
    try:
        local = cfg.model_copy(update={"output_prefix": str(tmp / name)})
        pinned = [InputFile(path=f.path, sha256=f.sha256, source=f.source, size=f.size)
                  for f in inputs]  # fmt: skip
        tok = TokenizerPin(path_or_id=tokenizer.source or str(tokenizer.path),
                           sha256=tokenizer.sha256)  # fmt: skip
        stats = write_dataset(local, [s.path for s in shards], plan.path, pinned, tokenizer=tok)
        _record_final_prefix(tmp / f"{name}.packft.json", final / name)
        digests = store.shard_sample_digests([s.path for s in shards])
        info = {"name": name, "efficiency": stats.efficiency, "rows": stats.rows}
        version = store.finalize_version(tmp, final, fingerprint, digests, info)
    except BaseException:
        store.abandon_version(tmp, final)
        raise
    return WriteResult(version=version, prefix=version / name, stats=stats)


def _record_final_prefix(sidecar: Path, prefix: Path) -> None:
    """The sidecar was written under the temporary build dir; record where the dataset lives."""
    import json

    data = json.loads(sidecar.read_text())
    data.setdefault("config", {})["output_prefix"] = str(prefix)
    atomic_write_bytes(sidecar, (json.dumps(data, indent=1) + "\n").encode())


FORCE_PUBLISH_HINT = (
    "run.force_publish=true (python -m flows.pack_dataset ... --force-publish, or the flow "
    'parameter overrides={"run": {"force_publish": true}})'
)


@task(name="publish", persist_result=False)
def publish(
    output_root: Path, version: str, keep_previous: int, gate: PublishGate, force: bool = False
) -> PublishedVersion:
    """Move ``latest`` to ``version`` if ``gate`` lets it (or ``force``), diff, prune old ones."""
    try:
        result = store.publish(output_root, Path(version), keep_previous, gate=gate, force=force,
                               override=FORCE_PUBLISH_HINT)  # fmt: skip
    finally:
        store.release_version(Path(version))
    return PublishedVersion(**result.model_dump(), latest=str(Path(output_root) / store.LATEST))
