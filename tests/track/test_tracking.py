"""packft.track.tracking against a real MLflow SQLite store (one DB per module, ~3-5 s)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from packft.track import tracking
from packft.track.plots import length_histogram
from packft.track.tracking import (
    InputDataset,
    NullTracker,
    Tracker,
    flatten_params,
    make_tracker,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def test_null_tracker_does_not_import_mlflow() -> None:
    code = (
        "import sys; from packft.track.tracking import make_tracker, NullTracker\n"
        "t = make_tracker(None, 'x', enabled=False)\n"
        "t.log({'a': 1.0}, 0); t.log_params({'a': {'b': 1}}); t.child('c').close(); t.close()\n"
        "assert isinstance(t, NullTracker)\n"
        "print('mlflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_flatten_params_nests_and_truncates() -> None:
    flat = dict(flatten_params({"a": {"b": 1, "c": [1, 2]}, "p": Path("/x"), "long": "y" * 7000}))
    assert flat["a.b"] == "1"
    assert flat["a.c"] == "[1, 2]"
    assert flat["p"] == "/x"
    assert len(flat["long"]) == tracking.MAX_PARAM_VALUE and flat["long"].endswith("...")


def test_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PACKFT_DATA_DIR", str(tmp_path / "data"))
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    assert (tmp_path / "data").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking.resolve_tracking_uri() == "http://127.0.0.1:9"
    assert tracking.resolve_tracking_uri("sqlite:///a.db") == "sqlite:///a.db"
    command = tracking.ui_command("sqlite:///a.db")
    assert (
        command.split()[0].endswith("mlflow") and "ui --backend-store-uri sqlite:///a.db" in command
    )


TRACKER_NAMES = {"tracker", "stage", "child", "parent", "run", "inner"}  # how callers name one


def test_tracker_protocol_has_five_methods_and_packft_uses_no_other() -> None:
    """The protocol stays small, and no caller reaches past it (e.g. to an MLflow-only method)."""
    import ast

    methods = {n for n, v in vars(Tracker).items() if callable(v) and not n.startswith("_")}
    assert methods == {"log", "log_params", "log_artifact", "child", "close"}
    assert methods <= set(dir(NullTracker))
    repo = Path(__file__).resolve().parents[2]
    reached = set()
    for top in ("packft", "flows", "tasks"):
        for path in (repo / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                receiver = getattr(getattr(node, "value", None), "id", None)
                if isinstance(node, ast.Attribute) and receiver in TRACKER_NAMES:
                    reached.add((str(path.relative_to(repo)), node.attr))
    outside = {(f, a) for f, a in reached if a.startswith("log") or a in {"set_tags", "child"}}
    assert {a for _, a in outside} <= methods, sorted(outside)


def test_mlflow_run_round_trip(store: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    parent = make_tracker(store, "unit-tracking", "parent", tags={"prefect.flow_run_id": "abc"})
    assert isinstance(parent, Tracker)
    parent.log_params({"pack": {"seq_length": 512, "algorithm": "bfd"}, "inputs": ["a", "b"]})
    parent.log_params({"pack": {"seq_length": 512}})  # same value again: no MLflow error
    parent.log_params({"packft.version": "v1", "packft.unset": None}, tags=True)
    for step in range(3):
        parent.log({"loss": 1.0 / (step + 1), "note": "skip-me"}, step=step)
    parent.log_artifact("stats/pack.json", {"rows": 7})
    parent.log_artifact("plots/lengths.png", length_histogram(np.array([10, 20, 600]), 512))
    parent.log_artifact(
        "a.json", InputDataset(str(tmp_path / "a.json"), "f" * 64, tags={"rows": 3})
    )

    children: list[str] = []

    def in_thread() -> None:  # a Prefect pool thread has no active MLflow run
        with parent.child("tokenize", tags={"stage": "tokenize"}) as child:
            child.log({"samples": 3}, step=0)
            children.append(child.run_id)

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    parent.close()
    parent.close()  # idempotent

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(parent.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["pack.seq_length"] == "512"
    assert run.data.params["pack.algorithm"] == "bfd"
    assert run.data.tags["prefect.flow_run_id"] == "abc"
    assert run.data.tags["packft.version"] == "v1" and "packft.unset" not in run.data.tags
    assert "packft.version" not in run.data.params
    assert [m.value for m in client.get_metric_history(parent.run_id, "loss")] == [1.0, 0.5, 1 / 3]
    assert "note" not in run.data.metrics
    names = {a.path for a in client.list_artifacts(parent.run_id, "stats")}
    names |= {a.path for a in client.list_artifacts(parent.run_id, "plots")}
    assert names == {"stats/pack.json", "plots/lengths.png"}
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "a.json" and inp.dataset.digest == "f" * 36
    assert {t.key: t.value for t in inp.tags}["sha256"] == "f" * 64
    child_run = client.get_run(children[0])
    assert child_run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child_run.data.metrics["samples"] == 3.0
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.artifact_location.startswith("file://")
    assert store.removeprefix("sqlite:///").rsplit("/", 1)[0] in exp.artifact_location


def test_failed_context_marks_run_failed(store: str) -> None:
    from mlflow import MlflowClient

    with pytest.raises(RuntimeError), make_tracker(store, "unit-tracking", "boom") as t:
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=store).get_run(t.run_id).info.status == "FAILED"


def test_empty_experiment_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="experiment name"):
        make_tracker("sqlite:///unused.db", "")
    assert isinstance(make_tracker(None, "", enabled=False), NullTracker)


def test_nest_runs_under_adopts_parent_experiment_and_uri(store: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    stage = make_tracker(store, "unit-nesting", "train-stage")
    with tracking.nest_runs_under(stage):
        inner = make_tracker(None, "library-default-experiment", "trainer")  # as packft.train does
    outside = make_tracker(store, "library-default-experiment", "alone")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    inner.log_artifact("model", tmp_path / "model")
    for run in (inner, outside, stage):
        run.close()
    client = MlflowClient(tracking_uri=store)
    got = client.get_run(inner.run_id)
    assert got.data.tags["mlflow.parentRunId"] == stage.run_id
    assert got.info.experiment_id == stage.experiment_id
    assert [a.path for a in client.list_artifacts(inner.run_id, "model")] == ["model/config.json"]
    assert "mlflow.parentRunId" not in client.get_run(outside.run_id).data.tags


# --- the link: tracking never blocks or stops the caller ------------------------------------


def test_link_sends_in_order_on_its_own_thread() -> None:
    from packft.track.tracking_link import Link

    link, seen = Link("sqlite:///unused.db"), []
    for i in range(50):
        link.send(lambda i=i: seen.append((i, threading.current_thread().name)))
    link.close()
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"packft-tracking"}
    link.send(lambda: seen.append((50, "again")))  # a send after close starts a new sender
    link.close()
    assert seen[-1] == (50, "again") and link.lost is None
    slow = threading.Event()  # a server that takes its time: the caller does not wait for it
    started = time.monotonic()
    for _ in range(100):
        link.send(slow.wait, 0.05)
    assert time.monotonic() - started < 0.5  # 100 calls queued; sending them takes >= 5 s
    link.close()


def test_link_failure_warns_once_and_drops_later_calls(caplog: pytest.LogCaptureFixture) -> None:
    from packft.track.tracking_link import Link, recently_lost

    link, seen = Link("http://127.0.0.1:9/lost-once", hint="; data in x.jsonl"), []

    def fail() -> None:
        raise ConnectionError("HTTPConnectionPool: Max retries ([Errno 111] Connection refused)")

    with caplog.at_level("WARNING", logger="packft.track.tracking"):
        link.send(fail)
        link.close()
        for i in range(3):
            link.send(seen.append, i)  # dropped at once, no error
        assert link.call(lambda: "made") is None
        link.close()
    assert seen == []
    (record,) = caplog.records
    assert record.getMessage() == (
        "packft: MLflow tracking at http://127.0.0.1:9/lost-once failed ([Errno 111] Connection "
        "refused); the run continues untracked; data in x.jsonl"
    )
    assert recently_lost("http://127.0.0.1:9/lost-once") == "[Errno 111] Connection refused"


def test_required_link_raises_at_the_next_call(caplog: pytest.LogCaptureFixture) -> None:
    from packft.track.tracking_link import Link, TrackingUnavailable

    link = Link("http://127.0.0.1:9/required", required=True)
    link.send(lambda: 1 / 0)
    with pytest.raises(TrackingUnavailable, match="--tracking-required"):
        link.close()
    with pytest.raises(TrackingUnavailable, match=r"failed \(division by zero\)"):
        link.send(print)
    assert not caplog.records  # the error is the message; no warning besides it


def test_close_gives_up_on_a_server_that_never_answers() -> None:
    from packft.track.tracking_link import Link

    link, release = Link("http://127.0.0.1:9/hung"), threading.Event()
    link.send(release.wait, 30)
    started = time.monotonic()
    link.close(idle_s=0.5)
    assert time.monotonic() - started < 5
    assert link.lost is not None and link.lost.startswith("no answer for")
    release.set()


def test_required_unreachable_store_raises_at_once() -> None:
    from packft.track.tracking import make_tracker
    from packft.track.tracking_link import TrackingUnavailable

    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="unreachable: .*Connection refused"):
        make_tracker("http://127.0.0.1:1/required-now", "x", required=True)
    assert time.monotonic() - started < 10


def test_readme_lists_every_metric_name() -> None:
    from packft.track import metric_names

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Tracking") :]
    for name in metric_names.all_names():
        assert f"| `{name}` |" in section, name
    assert set(metric_names.HEADLINE) <= set(metric_names.all_names())


def test_track_import_refuses_a_wrong_dir_or_unreachable_store(tmp_path: Path, capsys) -> None:
    from packft.cli import main

    assert main(["track-import", str(tmp_path), "--tracking-uri", "sqlite:///unused.db"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "train_log.jsonl not found" in line
    assert not Path("unused.db").exists()
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    assert main(["track-import", str(tmp_path), "--tracking-uri", "http://127.0.0.1:1/im"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unreachable" in line and "tracking is required" in line
