"""One definition of "same work": the CLI's reuse and the flow's cache keys agree, field by field.

* For every :class:`PreprocessConfig` field (the table must name each one), changing it changes
  the CLI's keys (shard key, plan key) iff it changes the flow's ``tokenize``/``pack`` task keys
  (computed by the tasks' own ``cache_key_fn`` on the parameters the flow builds); for a sample
  of fields the CLI run really reuses (or rebuilds) its shard, and the output bytes change iff
  the keys say so.
* ``--pack-algorithm bfd`` -> ``ffd`` reuses the tokenized shards in the CLI and in the flow
  (Prefect records ``tokenize`` Cached, ``pack`` Completed).
* Editing one task's code changes that task's key only (task keys hash the function's source,
  not its module).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import typing
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from packft.pack.options import plan_key
from packft.preprocess import PreprocessConfig, preprocess
from packft.preprocess.steps import _shard_key
from tests.helpers.orchestration import pack_config

ROWS = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, alpaca_en_path: Path,
          llama2_tokenizer_dir: Path) -> SimpleNamespace:  # fmt: skip
    root = tmp_path_factory.mktemp("same-work")
    rows = json.loads(alpaca_en_path.read_text())
    data, other = root / "d.json", root / "e.json"
    data.write_text(json.dumps(rows[:ROWS]))
    other.write_text(json.dumps(rows[ROWS : 2 * ROWS]))
    tok_copy = root / "tok-copy"
    shutil.copytree(llama2_tokenizer_dir, tok_copy)
    (root / "out").mkdir()
    base = dict(input=str(data), tokenizer_name_or_path=str(llama2_tokenizer_dir),
                output_prefix=str(root / "out" / "o"), prompt_type="llama2", pack=True,
                seq_length=64, cache_dir=str(root / "cache"))  # fmt: skip
    return SimpleNamespace(root=root, data=data, other=other, tok_copy=tok_copy, base=base)


def alternatives(w: SimpleNamespace) -> dict[str, Any]:
    """One other value per PreprocessConfig field (None: the field has a single legal value)."""
    import hashlib

    return {
        "input": str(w.other),
        "tokenizer_name_or_path": str(w.tok_copy),  # same files elsewhere: the same tokenizer
        "output_prefix": str(w.root / "o2"),
        "handler_name": "SharegptStyleInstructionHandler",
        "prompt_type": "qwen",
        "tokenizer_type": None,
        "seq_length": 48,
        "pack": False,
        "neat_pack": True,
        "append_eod": True,
        "map_keys": {"prompt": "instruction", "query": "input", "response": "output"},
        "pack_algorithm": "ffd",
        "pack_seed": 3,
        "mix": 10,
        "overlong": "drop",
        "dtype": "optimal",
        "on_invalid": "fail",
        "repair": ["merge-consecutive"],
        "workers": 2,
        "log_interval": 7,
        "overwrite_cache": True,
        "cache_dir": str(w.root / "cache2"),
        "input_sha256": hashlib.sha256(w.data.read_bytes()).hexdigest(),
        "min_valid_fraction": 0.9,
        "max_record_bytes": 1000,
    }


def cli_keys(cfg: PreprocessConfig) -> tuple[str, str]:
    """What ``packft preprocess`` names its reusable shard and plan by."""
    shard = _shard_key(Path(cfg.input), cfg)
    return shard, plan_key([shard], cfg.pack_options())


def flow_keys(cfg: PreprocessConfig, work_dir: Path) -> tuple[str, str]:
    """The ``tokenize`` and ``pack`` task keys, from the tasks' own cache_key_fn applied to the
    parameters the flow builds (``flows.pack_dataset.*_parameters``)."""
    from flows.pack_dataset import pack_parameters, tokenize_parameters
    from packft.preprocess import InputFile
    from tasks.caching import FileRef
    from tasks.pack import pack
    from tasks.tokenize import pin_tokenizer, shard_key_of, tokenize

    pinned = InputFile.pin(Path(cfg.input))
    ref = FileRef(path=pinned.path, sha256=pinned.sha256, source=pinned.source)
    tokenizer = pin_tokenizer(cfg.tokenizer_name_or_path)
    params = tokenize_parameters(ref, tokenizer, cfg, work_dir)
    tok_key = tokenize.cache_key_fn(SimpleNamespace(task=tokenize), params)
    shard = FileRef(
        path=work_dir / "s.arrow", sha256=shard_key_of(ref, tokenizer, params["options"])
    )
    pack_key = pack.cache_key_fn(
        SimpleNamespace(task=pack), pack_parameters([shard], cfg, work_dir)
    )
    return tok_key, pack_key


def test_every_field_is_in_the_table(world: SimpleNamespace) -> None:
    assert set(alternatives(world)) == set(PreprocessConfig.model_fields)
    literal = PreprocessConfig.model_fields["tokenizer_type"].annotation
    assert len(typing.get_args(literal)) == 1  # no other value to try


@pytest.mark.parametrize("field", sorted(PreprocessConfig.model_fields))
def test_cli_and_flow_agree_on_reuse(world: SimpleNamespace, field: str, tmp_path: Path) -> None:
    other = alternatives(world)[field]
    if other is None:
        return  # tokenizer_type: one legal value (checked above)
    cases = [(world.base, {field: other})]
    if field == "pack_algorithm":  # with MindSpeed's neat-pack cut the algorithm reaches the shard
        neat = {**world.base, "neat_pack": True, "overlong": "drop"}
        cases.append((neat, {"pack_algorithm": "knapsack"}))
    for base, change in cases:
        before = PreprocessConfig(**base)
        after = PreprocessConfig(**{**base, **change})
        cli = [a != b for a, b in zip(cli_keys(before), cli_keys(after), strict=True)]
        flow = [a != b for a, b in zip(flow_keys(before, tmp_path), flow_keys(after, tmp_path),
                                       strict=True)]  # fmt: skip
        assert cli == flow, f"{change}: CLI (shard, plan) changed {cli}, flow {flow}"


EXPECTED = {  # field change -> new shard, new plan in the CLI's cache; other dataset bytes
    "pack_algorithm": (False, True, None),  # ffd may place 24 samples as bfd does: not asserted
    "workers": (False, False, False),
    "seq_length": (True, True, True),
    "append_eod": (True, True, True),
    "dtype": (False, False, True),  # a write option: same shard and plan, other files
}


@pytest.mark.parametrize("field", sorted(EXPECTED))
def test_cli_reuse_matches_the_keys_and_the_bytes(world: SimpleNamespace, field: str,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """Run ``preprocess`` before and after the change: the cache gains a shard / plan exactly
    when the keys changed, and the dataset bytes differ only when some key or write option did."""
    base = {**world.base, "cache_dir": str(tmp_path / "cache")}
    runs = {}
    for name, cfg in (("a", base), ("b", {**base, field: alternatives(world)[field]})):
        cfg = {**cfg, "output_prefix": str(tmp_path / name / "o")}
        (tmp_path / name).mkdir()
        preprocess(PreprocessConfig(**cfg))
        cache = tmp_path / "cache"
        runs[name] = (
            len(list((cache / "shards").glob("*.arrow"))),
            len(list((cache / "plans").glob("*.npz"))),
            {p.name: p.read_bytes() for p in (tmp_path / name).glob("o_packed_*")},
        )
    new_shard, new_plan, new_bytes = EXPECTED[field]
    assert runs["b"][0] == runs["a"][0] + int(new_shard)
    assert runs["b"][1] == runs["a"][1] + int(new_plan)
    before = PreprocessConfig(**base)
    after = PreprocessConfig(**{**base, field: alternatives(world)[field]})
    changed = [a != b for a, b in zip(cli_keys(before), cli_keys(after), strict=True)]
    assert changed == [new_shard, new_plan]
    assert (before.write_options() != after.write_options()) == (field in ("dtype", "seq_length"))
    if new_bytes is not None:
        assert (runs["a"][2] != runs["b"][2]) == new_bytes
    assert len(runs["a"][2]) == 6  # input_ids, attention_mask, labels: .bin and .idx


def test_bfd_to_ffd_reuses_tokenization_in_the_flow(
    prefect_api: None, fresh_inputs: list[Path], tmp_path: Path
) -> None:
    from flows.pack_dataset import pack_dataset
    from tests.integration.test_pack_flow import recorded_states

    cfg = pack_config(fresh_inputs[0].parent, tmp_path, pack_algorithm="bfd", neat_pack=False)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"tracking": False})})
    first = pack_dataset(config=cfg)
    assert first.states["tokenize"] == ["Completed"] * 3
    ffd = cfg.model_copy(
        update={"preprocess": cfg.preprocess.model_copy(update={"pack_algorithm": "ffd"})}
    )
    second = pack_dataset(config=ffd)
    recorded = recorded_states(second.flow_run_id)
    assert recorded["tokenize:Cached"] == 3 and recorded["validate:Cached"] == 3
    assert recorded["pack:Completed"] == 1 and recorded["tokenize:Completed"] == 0
    shards = list((tmp_path / "work" / "shards").glob("*.arrow"))
    assert len(shards) == 3  # the flow's shards are the CLI's: named by the shard key
    cli = PreprocessConfig(**{**ffd.preprocess.model_dump(), "input": str(fresh_inputs[0])})
    assert {s.stem for s in shards} >= {_shard_key(fresh_inputs[0], cli)[:40]}
    assert Counter(recorded)["write:Completed"] == 1


def _load_copy(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_editing_one_task_does_not_invalidate_the_others(tmp_path: Path) -> None:
    """A copy of ``tasks/pack.py`` with only ``pack``'s body edited: ``pack``'s key changes,
    ``write``'s (same module) does not."""
    from tasks import pack as original
    from tasks.caching import content_key

    text = Path(original.__file__).read_text()
    anchor = "    from packft.preprocess import plan_shards\n"
    assert text.count(anchor) == 1
    edited = tmp_path / "pack_edited.py"
    edited.write_text(text.replace(anchor, anchor + "    _edited = True  # a code change\n"))
    same = tmp_path / "pack_same.py"
    same.write_text(text)
    copy, control = _load_copy(edited, "pack_edited"), _load_copy(same, "pack_same")
    params = {"fingerprint": "f" * 64}

    def key(module: Any, task: str) -> str:
        fn = getattr(module, task).fn
        return content_key(task, fn, params)

    assert key(control, "pack") == key(original, "pack")  # same source: same key anywhere
    assert key(copy, "pack") != key(original, "pack")
    assert key(copy, "write") == key(original, "write") == key(control, "write")
    assert key(copy, "publish") == key(original, "publish")


def test_task_key_is_the_same_in_a_worker_process() -> None:
    """A task shipped to a Dask worker is rebuilt by value (its code says ``<dynamic-code>``);
    its source digest there must equal this process's, or every Dask run misses the cache."""
    import base64
    import subprocess
    import sys

    import cloudpickle

    from tasks.caching import source_digest
    from tasks.tokenize import tokenize

    blob = base64.b64encode(cloudpickle.dumps(tokenize)).decode()
    code = (
        "import base64, cloudpickle\n"
        f"task = cloudpickle.loads(base64.b64decode('{blob}'))\n"
        "assert task.fn.__code__.co_filename == '<dynamic-code>', task.fn.__code__.co_filename\n"
        "from tasks.caching import source_digest\n"
        "print(source_digest(task.fn))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == source_digest(tokenize.fn)


def test_each_input_is_hashed_once_per_cli_run(world: SimpleNamespace, tmp_path: Path) -> None:
    """The input's bytes are hashed once (``InputFile.pin``); tokenize, the shard key and the
    sidecar take that digest (before: three hashes per run)."""
    import sys
    import traceback

    hashed: list[str] = []
    active, target = [True], world.data.resolve()

    def hook(event: str, args: tuple) -> None:
        name = str(args[0]) if event == "open" and args else ""
        if active[0] and name.endswith(world.data.name) and Path(name).resolve() == target:
            hashed.extend(f.name for f in traceback.extract_stack() if f.name == "file_sha256")

    sys.addaudithook(hook)  # cannot be removed: made inert below
    try:
        preprocess(PreprocessConfig(**{**world.base, "cache_dir": str(tmp_path / "c"),
                                       "output_prefix": str(tmp_path / "o")}))  # fmt: skip
    finally:
        active[0] = False
    assert hashed == ["file_sha256"]
