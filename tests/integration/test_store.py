"""packft.dataset.store and tasks.caching, no Prefect: versions, atomic latest, pruning, diffs, keys."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from packft.dataset import store, store_layout, store_retention
from packft.dataset.publish_gate import PublishGate, PublishRefused
from tasks.caching import FileRef, content_key, digest_json, tree_sha256


def make_version(root: Path, fingerprint: str, samples: list[int], efficiency: float) -> Path:
    tmp, final = store.new_version_dir(root, fingerprint)
    (tmp / "data.bin").write_bytes(b"x")
    pairs = [(np.array([s], np.int32), np.array([s], np.int32)) for s in samples]
    info = {"efficiency": efficiency}
    return store.finalize_version(tmp, final, fingerprint, store.sample_digests(pairs), info)


def test_publish_swaps_latest_and_prunes(tmp_path: Path) -> None:
    v1 = make_version(tmp_path, "a" * 64, [1, 2, 3], 0.9)
    first = store.publish(tmp_path, v1, keep_previous=1)
    assert first.changed and first.previous is None
    assert os.readlink(tmp_path / "latest") == f"versions/{v1.name}"  # relative: root can move
    assert store.publish(tmp_path, v1, keep_previous=1).changed is False

    v2 = make_version(tmp_path, "b" * 64, [2, 3, 4, 5], 0.95)
    diff = store.diff_versions(store.current_version(tmp_path), v2)
    assert diff == {
        "samples_after": 4,
        "efficiency_after": 0.95,
        "samples_before": 3,
        "samples_added": 2,
        "samples_removed": 1,
        "efficiency_before": 0.9,
    }
    second = store.publish(tmp_path, v2, keep_previous=1)
    assert second.changed and second.previous == v1.name and second.pruned == []
    assert (tmp_path / "latest").resolve() == v2.resolve()

    v3 = make_version(tmp_path, "c" * 64, [9], 0.5)
    third = store.publish(tmp_path, v3, keep_previous=1)
    assert third.pruned == [v1.name]
    assert [p.name for p in store_layout.list_versions(tmp_path)] == [v2.name, v3.name]
    assert store.find_version(tmp_path, "b" * 64) == v2
    assert store.find_version(tmp_path, "a" * 64) is None
    assert not list(tmp_path.glob(".latest.tmp-*"))


def test_incomplete_versions_are_invisible(tmp_path: Path) -> None:
    tmp, _final = store.new_version_dir(tmp_path, "d" * 64)
    (tmp / "half.bin").write_bytes(b"partial")
    assert store_layout.list_versions(tmp_path) == []
    with pytest.raises(ValueError, match="not a complete version"):
        store.publish(tmp_path, tmp, keep_previous=0)
    assert store.current_version(tmp_path) is None


def test_keys_follow_content_not_paths(tmp_path: Path) -> None:
    a = FileRef(path=tmp_path / "a.json", sha256="1" * 64, source="a")
    b = FileRef(path=tmp_path / "elsewhere" / "b.json", sha256="1" * 64, source="b")
    c = FileRef(path=tmp_path / "a.json", sha256="2" * 64, source="a")

    def body() -> None:
        """stand-in task body"""

    key = content_key("tokenize", body, {"source": a, "opts": {"seq": 512}})
    assert key == content_key("tokenize", body, {"source": b, "opts": {"seq": 512}})
    assert key != content_key("tokenize", body, {"source": c, "opts": {"seq": 512}})
    assert key != content_key("tokenize", body, {"source": a, "opts": {"seq": 1024}})
    assert digest_json({"x": 1, "y": [1, 2]}) == digest_json({"y": [1, 2], "x": 1})


def test_tree_sha256_sees_every_file(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "config.json").write_text("{}")
    before = tree_sha256(tok)
    os.utime(tok / "config.json", (0, 0))  # mtime is not content
    assert tree_sha256(tok) == before
    (tok / "config.json").write_text('{"eos": 2}')
    assert tree_sha256(tok) != before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tree_sha256(tmp_path / "missing")


def test_names_sort_by_allocation_even_when_the_clock_stalls_or_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([1_700_000_000 * 10**9, 1_700_000_000 * 10**9, 1_600_000_000 * 10**9])
    monkeypatch.setattr(store_layout.time, "time_ns", lambda: next(clock))
    names = [store.new_version_dir(tmp_path, fp * 64)[1].name for fp in "fea"]  # hash order: a<e<f
    assert names == sorted(names) and len(set(names)) == 3
    assert names[0] == "20231114-221320.000000-ffffffffff"
    assert [store_layout.stamp_of(n) - 1_700_000_000 * 10**6 for n in names] == [0, 1, 2]
    assert store_layout.stamp_of("20261128-021500-3f9c0a1b2d") is not None  # old names still sort


def test_gate_refuses_removals_keeps_version_unpublished_and_force_publishes(
    tmp_path: Path,
) -> None:
    gate = PublishGate(max_removed_fraction=0.2, max_efficiency_drop=0.05)
    good = make_version(tmp_path, "a" * 64, list(range(100)), 0.95)
    first = store.publish(tmp_path, good, 2, gate=gate).gate  # no baseline: passes
    assert first["passed"] and first["efficiency_drop"] is None
    ok = make_version(tmp_path, "b" * 64, list(range(20, 130)), 0.93)  # 20% removed: allowed
    assert store.publish(tmp_path, ok, 2, gate=gate).gate["passed"] is True
    bad = make_version(tmp_path, "c" * 64, list(range(20, 107)), 0.94)  # 23 of 110 removed (20.9%)
    with pytest.raises(PublishRefused) as refused:
        store.publish(tmp_path, bad, 2, gate=gate, override="--force-publish")
    message = str(refused.value)
    assert "removes 23 of 110 samples (20.9%" in message and str(bad) in message
    assert "--force-publish" in message and "\n" not in message
    assert store.current_version(tmp_path) == ok.resolve() and bad.is_dir()
    assert refused.value.diff["samples_removed"] == 23
    assert pickle.loads(pickle.dumps(refused.value)).verdict == refused.value.verdict

    forced = store.publish(tmp_path, bad, 2, gate=gate, force=True)
    assert forced.changed and forced.gate["forced"] and not forced.gate["passed"]
    assert store.current_version(tmp_path) == bad.resolve()


def test_gate_refuses_an_efficiency_drop(tmp_path: Path) -> None:
    gate = PublishGate()
    store.publish(tmp_path, make_version(tmp_path, "a" * 64, [1, 2, 3], 0.98), 2, gate=gate)
    same_samples = make_version(tmp_path, "b" * 64, [1, 2, 3], 0.77)
    with pytest.raises(PublishRefused, match=r"efficiency falls from 0.9800 to 0.7700"):
        store.publish(tmp_path, same_samples, 2, gate=gate)
    small_drop = make_version(tmp_path, "c" * 64, [1, 2, 3], 0.94)
    assert store.publish(tmp_path, small_drop, 2, gate=gate).changed
    with pytest.raises(ValueError, match="max_efficiency_drop"):
        PublishGate(max_efficiency_drop=1.5)


def test_prune_keeps_rollback_targets_and_refused_versions_on_each_side(tmp_path: Path) -> None:
    gate = PublishGate()
    olds = [make_version(tmp_path, f"{i}" * 64, [1, 2, 3], 0.9) for i in range(3)]
    for version in olds:
        store.publish(tmp_path, version, 1, gate=gate)
    refused = []
    for i in range(3):  # three nights of garbage: each refused, each kept for inspection...
        version = make_version(tmp_path, f"{'abc'[i]}" * 64, [9], 0.9)
        with pytest.raises(PublishRefused):
            store.publish(tmp_path, version, 1, gate=gate)
        refused.append(version)
    assert all(v.is_dir() for v in refused)
    fixed = make_version(tmp_path, "d" * 64, [1, 2, 3, 4], 0.9)  # ...until a good one publishes
    result = store.publish(tmp_path, fixed, 1, gate=gate)
    kept = [olds[2].name, refused[-1].name, fixed.name]  # previous latest, newest refused, live
    assert [p.name for p in store_layout.list_versions(tmp_path)] == kept
    assert set(result.pruned) == {olds[1].name, refused[0].name, refused[1].name}
    history = store_retention.read_history(tmp_path)
    assert [e["version"] for e in history] == [*(v.name for v in olds), fixed.name]

    rollback = store.publish(tmp_path, olds[2], 1)  # no gate: an operator's explicit choice
    assert rollback.changed and rollback.pruned == [] and fixed.is_dir()
