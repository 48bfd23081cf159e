"""Validation in `packft train`: ``--split`` (Megatron's weights and rounding, a seeded row split:
disjoint, covering, deterministic), ``--eval-interval`` / ``--eval-iters``, ``--valid-data-path``;
``valid_loss`` equals the token mean of the held-out samples run one by one through the saved
model, and reaches train_log.jsonl, the final JSON line and MLflow. Tiny random Llama on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from packft.cli import main as cli_main
from packft.core.constants import IGNORE_INDEX
from packft.dataset.indexed import open_sft_dataset
from packft.train.config import TrainConfig
from packft.train.data import SFTDataset
from packft.train.evaluate import eval_due, eval_plan
from packft.train.flags import parse_split
from packft.train.loop import train
from packft.train.split import RowSubset, split_boundaries, split_rows
from tests.helpers.sft_setup import make_sft_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory, llama2_tokenizer_dir, alpaca_en_path):
    return make_sft_setup(tmp_path_factory.mktemp("valid"), llama2_tokenizer_dir, alpaca_en_path)


def base_args(setup, save: str) -> list[str]:
    root = setup["root"]
    return ["train", "--data-path", str(root / "packed"), "--model", str(root / "model"),
            "--tokenizer-name-or-path", str(setup["tok"]), "--save", str(root / save),
            "--global-batch-size", "2", "--micro-batch-size", "1", "--lr", "1e-3"]  # fmt: skip


# ------------------------------------------------------------------ the split
def test_split_weights_parse_as_megatrons_and_bad_ones_are_refused():
    assert parse_split("98,2,0") == parse_split("98/2") == (98.0, 2.0, 0.0)
    assert parse_split("1") == (1.0, 0.0, 0.0)
    for bad, why in (("a,b", "three numbers"), ("1,2,3,4", "three"), ("90,-10", "non-negative"),
                     ("0,100,0", "training weight")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            parse_split(bad)


def test_split_boundaries_round_as_megatron_get_train_valid_test_split():
    # Megatron: index += round(w / sum * size), then the rounding excess is taken off each bound
    assert split_boundaries((98, 2, 0), 1000) == [0, 980, 1000, 1000]
    assert split_boundaries((70, 20, 10), 10) == [0, 7, 9, 10]
    assert split_boundaries((1, 1, 1), 7) == [0, 3, 5, 7]  # 2+2+2 = 6: every bound moves up one
    assert split_boundaries((1, 1, 1), 8) == [0, 2, 5, 8]  # 3+3+3 = 9: every bound moves down one


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 300),
    weights=st.tuples(st.floats(0.5, 100), st.floats(0, 100), st.floats(0, 100)),
    seed=st.integers(0, 2**31),
)
def test_split_parts_are_disjoint_cover_every_row_and_depend_only_on_the_seed(rows, weights, seed):
    parts = split_rows(rows, weights, seed)
    bounds = split_boundaries(weights, rows)
    together = np.concatenate([parts["train"], parts["valid"], parts["test"]])
    assert sorted(together.tolist()) == list(range(rows))  # every row once: disjoint, covering
    assert [p.size for p in parts.values()] == list(np.diff(bounds))
    assert all(np.all(np.diff(p) > 0) for p in parts.values())  # on-disk order kept in each
    again = split_rows(rows, weights, seed)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


def test_another_seed_holds_out_other_rows_and_the_tail_is_not_the_validation_set():
    a = split_rows(1000, (90, 10, 0), seed=1234)["valid"]
    b = split_rows(1000, (90, 10, 0), seed=1235)["valid"]
    assert a.size == b.size == 100 and not np.array_equal(a, b)
    assert not np.array_equal(a, np.arange(900, 1000))  # a seeded choice, not the packer's tail


def test_training_rows_and_held_out_rows_read_different_rows_of_the_dataset(setup):
    base = SFTDataset(setup["root"] / "packed", pack_mode="neat")
    parts = split_rows(len(base), (75, 25, 0), seed=1234)
    train_rows, valid_rows = (RowSubset(base, parts[k], {}) for k in ("train", "valid"))
    assert len(train_rows) + len(valid_rows) == len(base) and len(valid_rows) > 0

    def contents(rows: RowSubset) -> list[bytes]:
        return [rows.row(i)[0].tobytes() for i in range(len(rows))]

    read_train, read_valid = contents(train_rows), contents(valid_rows)
    assert not set(read_train) & set(read_valid)
    assert sorted(read_train + read_valid) == sorted(
        base.row(i)[0].tobytes() for i in range(len(base))
    )
    batch = valid_rows.batch([0])
    assert torch.equal(batch.input_ids[0], torch.from_numpy(base.row(int(parts["valid"][0]))[0]))
    assert train_rows.mode == "neat"  # everything else comes from the base dataset


# ------------------------------------------------------------------ the evaluation schedule
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_runs_as_many_eval_batches_and_each_row_counts_once(rows, world):
    plans = [eval_plan(rows, 2, rank, world) for rank in range(world)]
    assert len({len(p) for p in plans}) == 1  # FSDP2: every rank all-gathers as often
    counted = sorted(i for p in plans for batch, counts in p if counts for i in batch)
    assert counted == list(range(rows))


def test_evaluation_is_due_every_interval_and_after_the_last_step():
    cfg = TrainConfig(data_path="x", save="y", model="m", eval_interval=3, eval_iters=1)
    assert [s for s in range(1, 8) if eval_due(cfg, s, last=7)] == [3, 6, 7]
    off = TrainConfig(data_path="x", save="y", model="m", eval_interval=3, eval_iters=0)
    assert not any(eval_due(off, s, last=7) for s in range(1, 8))


# ------------------------------------------------------------------ errors
def test_split_and_valid_data_path_together_are_a_one_line_usage_error(setup, capsys):
    args = [*base_args(setup, "both"), "--split", "98,2,0", "--valid-data-path", "v"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--valid-data-path" in err and "--split 100,0,0" in err


def test_missing_valid_data_path_is_one_line_exit_1_before_anything_is_written(setup, capsys):
    root = setup["root"]
    args = [*base_args(setup, "novalid"), "--valid-data-path", str(root / "nope"), "--no-tracking"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope_packed_input_ids_document" in err
    assert "packed_packed_input_ids_document.idx" in err  # names what exists there
    assert not (root / "novalid").exists()


# ------------------------------------------------------------------ valid_loss end to end
def reference_loss(model_dir, prefix, rows: list[int]) -> float:
    """Token-mean CE over the samples of ``rows``, each sample alone through HF's own attention."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    data = open_sft_dataset(prefix)
    total, count = 0.0, 0
    for r in rows:
        ids, labels, seg = (np.asarray(data[k][r], np.int64)
                            for k in ("input_ids", "labels", "attention_mask"))  # fmt: skip
        for s in np.unique(seg[seg > 0]):
            at = np.flatnonzero(seg == s)
            with torch.no_grad():
                logits = model(input_ids=torch.from_numpy(ids[at])[None]).logits[0, :-1]
            target = torch.from_numpy(labels[at][1:])
            total += float(F.cross_entropy(logits.double(), target, ignore_index=IGNORE_INDEX,
                                           reduction="sum"))  # fmt: skip
            count += int((target != IGNORE_INDEX).sum())
    return total / count


def test_valid_loss_is_the_held_out_token_mean_in_the_log_the_json_line_and_mlflow(
    setup, capsys, tmp_path
):
    from mlflow.tracking import MlflowClient

    root, uri = setup["root"], f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*base_args(setup, "split"), "--train-iters", "3", "--split", "75,25,0",
            "--eval-interval", "2", "--eval-iters", "50", "--tracking-uri", uri,
            "--experiment", "t-valid"]  # fmt: skip
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    log = [json.loads(x) for x in (root / "split" / "train_log.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["valid_loss"] for r in log if "valid_loss" in r}
    assert list(evals) == [2, 3] and summary["valid_loss"] == evals[3]
    assert evals[2] != evals[3]  # the weights moved between the evaluations

    held_out = split_rows(setup["rows"], (75, 25, 0), seed=TrainConfig.model_fields["seed"].default)
    expected = reference_loss(root / "split" / "hf", root / "packed", held_out["valid"].tolist())
    assert abs(summary["valid_loss"] - expected) / expected < 1e-5
    everything = reference_loss(root / "split" / "hf", root / "packed", list(range(setup["rows"])))
    assert abs(everything - expected) / expected > 1e-4  # the rows really are a subset

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("t-valid").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "train/valid_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == list(evals.items())
    assert run.data.metrics["train/final_valid_loss"] == evals[3]
    assert run.data.params["dataset.valid_rows"] == str(held_out["valid"].size)
    assert run.data.params["dataset.train_rows"] == str(held_out["train"].size)


def test_valid_data_path_evaluates_the_first_eval_iters_batches_of_that_dataset(setup):
    root = setup["root"]
    cfg = TrainConfig(data_path=str(root / "packed"), model=str(root / "model"),
                      save=str(root / "vpath"), tokenizer_name_or_path=str(setup["tok"]),
                      valid_data_path=str(root / "packed"), eval_iters=1, global_batch_size=2,
                      train_iters=1, lr=1e-3, tracking=False)  # fmt: skip
    summary = train(cfg)
    expected = reference_loss(root / "vpath" / "hf", root / "packed", [0, 1])  # 1 x 2 rows
    assert abs(summary["valid_loss"] - expected) / expected < 1e-5


def test_a_run_without_its_own_summary_takes_the_last_valid_loss_of_its_log():
    from packft.train.history import summarize

    steps = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "valid_loss": 2.75},
             {"step": 3, "loss": 2.0}]  # fmt: skip
    assert summarize(steps)["valid_loss"] == 2.75
    assert summarize(steps[:1])["valid_loss"] is None


def test_without_held_out_rows_nothing_is_evaluated(setup):
    root = setup["root"]
    summary = train(TrainConfig(data_path=str(root / "packed"), model=str(root / "model"),
                                save=str(root / "noeval"), global_batch_size=2, train_iters=1,
                                eval_interval=1, lr=1e-3, tracking=False))  # fmt: skip
    assert summary["valid_loss"] is None
    assert "valid_loss" not in (root / "noeval" / "train_log.jsonl").read_text()
