"""The environment bookkeeping behind the local Dask/Ray runners (fast; no cluster started).

The real clusters are checked in test_dask_runner.py and test_ray_runner.py; this pins the rules
those rely on: every key a block added, changed or removed is put back, and nothing else is
touched.
"""

from __future__ import annotations

import os

import pytest

from flows.runners import changed_since, environ_restored, restore_environ


def absent(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``name`` unset now and again after the test (a bare delenv of a missing key records nothing)."""
    monkeypatch.setenv(name, "")
    monkeypatch.delenv(name)


def test_environ_restored_undoes_added_changed_and_removed_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PACKFT_T_CHANGED", "mine")
    monkeypatch.setenv("PACKFT_T_REMOVED", "kept")
    absent(monkeypatch, "PACKFT_T_ADDED")
    before = dict(os.environ)
    with environ_restored():
        os.environ["PACKFT_T_ADDED"] = "1"  # e.g. a nanny's OMP_NUM_THREADS
        os.environ["PACKFT_T_CHANGED"] = "theirs"
        del os.environ["PACKFT_T_REMOVED"]
    assert dict(os.environ) == before


def test_environ_restored_also_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    absent(monkeypatch, "PACKFT_T_ADDED")
    with pytest.raises(RuntimeError), environ_restored():
        os.environ["PACKFT_T_ADDED"] = "1"
        raise RuntimeError("cluster failed to start")
    assert "PACKFT_T_ADDED" not in os.environ


def test_restore_environ_touches_only_the_given_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKFT_T_NANNY", "4")
    absent(monkeypatch, "PACKFT_T_OTHER")
    before = dict(os.environ)
    os.environ["PACKFT_T_NANNY"] = "1"
    os.environ["PACKFT_T_OTHER"] = "set by someone else meanwhile"
    changed = changed_since(before)
    assert changed == {"PACKFT_T_NANNY": "1", "PACKFT_T_OTHER": "set by someone else meanwhile"}
    restore_environ(before, {"PACKFT_T_NANNY"})
    assert os.environ["PACKFT_T_NANNY"] == "4"
    assert os.environ["PACKFT_T_OTHER"] == "set by someone else meanwhile"
