"""The ``pack`` (plan rows), ``write`` (new dataset version) and ``publish`` (move latest) tasks.

``pack`` wraps :func:`packft.preprocess.plan` (lengths of all shards -> one global plan) and keeps
the plan at ``work_dir/plans/<digest>.npz``. ``write`` wraps :func:`packft.preprocess.write`
into a fresh version directory (see :mod:`packft.dataset.store`), then adds the per-sample digests
used for nightly diffs (``preprocess.write`` itself gathers every shard's rejects into
``{name}.rejects.jsonl``). Both are cached on content: shards are named by the
digest of what produced them, so "same shard names + same options" means "same bytes".
``publish`` is never cached: behind the publish gate (:mod:`packft.dataset.publish_gate`) it
atomically moves ``latest`` and prunes old versions, or raises ``PublishRefused`` leaving ``latest``
alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task

from packft import __version__
from packft.core import atomic_write_bytes, atomic_writer
from packft.dataset import PublishGate, check_seal, seal, store, unseal
from tasks.caching import FileRef, content_cache, digest_json
from tasks.serializer import SERIALIZER

PACK_FIELDS = ("pack", "seq_length", "pack_algorithm", "pack_seed", "mix", "overlong", "neat_pack")
"""PreprocessConfig fields that change the plan."""
WRITE_FIELDS = (*PACK_FIELDS, "dtype", "prompt_type", "tokenizer_name_or_path", "append_eod")
"""PreprocessConfig fields that change the written files (besides shards and plan)."""


def settings_of(cfg: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in fields}


def shard_ref(result: dict[str, Any]) -> FileRef:
    """A tokenize result as a cache-friendly reference (its directory name is its content key)."""
    path = Path(result["shard"])
    return FileRef(path=path, sha256=path.parent.name, source=result.get("file", ""))


def plan_file(work_dir: Path, shards: list[FileRef], settings: dict[str, Any]) -> Path:
    name = digest_json({"shards": [s.sha256 for s in shards], "settings": settings})[:40]
    return Path(work_dir) / "plans" / f"{name}.npz"


def dataset_fingerprint(inputs: list[FileRef], tokenizer: FileRef, settings: dict[str, Any]) -> str:
    """Identity of a dataset version: inputs' digests (in order), tokenizer, options, version."""
    return digest_json(
        {
            "inputs": [f.sha256 for f in inputs],
            "tokenizer": tokenizer.sha256,
            "settings": settings,
            "packft": __version__,
        }
    )


def _plan_intact(p: dict[str, Any]) -> bool:
    return check_seal(plan_file(p["work_dir"], p["shards"], p["settings"])) is None


@task(
    name="pack",
    cache_key_fn=content_cache(
        exclude=("work_dir", "cfg"),
        outputs=lambda p: [plan_file(p["work_dir"], p["shards"], p["settings"])],
        intact=_plan_intact,
    ),
    persist_result=True,
    result_serializer=SERIALIZER,
)
def pack(
    shards: list[FileRef], settings: dict[str, Any], cfg: Any, work_dir: Path
) -> dict[str, Any]:
    """Plan the rows of all samples of all shards at once; returns the plan file and counts."""
    from packft.pack import PackPlan, lower_bound_rows
    from packft.preprocess import plan

    local = cfg.model_copy(update={"cache_dir": str(Path(work_dir) / "preprocess")})
    out = plan_file(work_dir, shards, settings)
    unseal(out)
    with open(plan(local, [s.path for s in shards]), "rb") as src, atomic_writer(out) as dst:
        shutil.copyfileobj(src, dst)
    seal(out)
    the_plan = PackPlan.load(out)
    return {
        "plan": str(out),
        "samples": int(the_plan.num_samples),
        "rows": the_plan.num_rows,
        "lower_bound_rows": lower_bound_rows(int(the_plan.lengths.sum()), the_plan.capacity),
        "dropped": len(the_plan.dropped),
        "truncated": int(the_plan.truncated),
        "split": int(the_plan.split),
    }


def _version_outputs(p: dict[str, Any]) -> list[Path]:
    found = store.find_version(p["output_root"], p["fingerprint"])
    return [found if found is not None else Path(p["output_root"]) / "versions" / "(missing)"]


@task(
    name="write",
    cache_key_fn=content_cache(exclude=("cfg", "inputs"), outputs=_version_outputs),
    persist_result=True,
    result_serializer=SERIALIZER,
)
def write(
    plan: FileRef,
    shards: list[FileRef],
    settings: dict[str, Any],
    cfg: Any,
    inputs: list[FileRef],
    output_root: Path,
    fingerprint: str,
) -> dict[str, Any]:
    """Write the dataset into a new complete version directory; returns its paths and stats."""
    from packft.preprocess import write as write_dataset

    name = Path(cfg.output_prefix).name
    tmp, final = store.new_version_dir(output_root, fingerprint)
    try:
        local = cfg.model_copy(update={"output_prefix": str(tmp / name)})
        stats = write_dataset(local, [s.path for s in shards], plan.path, [f.path for f in inputs])
        _record_final_prefix(tmp / f"{name}.packft.json", final / name)
        digests = store.shard_sample_digests([s.path for s in shards])
        info = {"name": name, "efficiency": stats.get("efficiency"), "rows": stats.get("rows")}
        version = store.finalize_version(tmp, final, fingerprint, digests, info)
    except BaseException:
        store.abandon_version(tmp, final)
        raise
    return {"version": str(version), "prefix": str(version / name), "stats": stats}


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
) -> dict[str, Any]:
    """Move ``latest`` to ``version`` if ``gate`` lets it (or ``force``), diff, prune old ones."""
    try:
        result = store.publish(output_root, Path(version), keep_previous, gate=gate, force=force,
                               override=FORCE_PUBLISH_HINT)  # fmt: skip
    finally:
        store.release_version(Path(version))
    return {**result.to_dict(), "latest": str(Path(output_root) / store.LATEST)}
