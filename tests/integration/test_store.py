"""packft.store and tasks.caching without Prefect: versions, atomic latest, pruning, diffs, keys."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from packft import store
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
    assert [p.name for p in store.list_versions(tmp_path)] == [v2.name, v3.name]
    assert store.find_version(tmp_path, "b" * 64) == v2
    assert store.find_version(tmp_path, "a" * 64) is None
    assert not list(tmp_path.glob(".latest.tmp-*"))


def test_incomplete_versions_are_invisible(tmp_path: Path) -> None:
    tmp, _final = store.new_version_dir(tmp_path, "d" * 64)
    (tmp / "half.bin").write_bytes(b"partial")
    assert store.list_versions(tmp_path) == []
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
