"""Kills, full disks, read-only directories and corrupt caches around `packft preprocess`.

Faulty runs are separate processes on 200 Alpaca records with the Llama-2 tokenizer (seq 512,
neat-pack), driven by `PACKFT_FAULT` (packft.core.faults): SIGKILL at a named point is a power cut
as far as the process is concerned. Two tests start `python -m packft preprocess` itself; the others
ask a fork server (:class:`Runner`: one interpreter that imported packft once and warmed the
packing kernels) to fork a child that runs `packft.cli.main(argv)`, what `python -m packft` runs,
so each faulty run costs ~0.3 s instead of ~1.5-4 s of interpreter start and imports on this
2-core machine. Checks run in this process with the library (`open_verified`, `packft inspect`,
`packft.train.data.SFTDataset`, `preprocess`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from packft.cli import main
from packft.core.errors import IntegrityError
from packft.core.journal import JOURNAL_SUFFIX
from packft.core.writers import LOCK_RE, TEMP_RE
from packft.dataset.integrity import open_verified
from packft.preprocess.config import PreprocessConfig
from packft.preprocess.steps import plan, preprocess, tokenize_input, write
from packft.train.data import SFTDataset

REPO = Path(__file__).resolve().parents[2]
LLAMA2 = REPO / "tests" / "assets" / "llama2-tokenizer"
ALPACA = REPO / "tests" / "assets" / "alpaca" / "llamafactory_alpaca_en_demo.json"
OLD_SEED, NEW_SEED = 1, 2


def cli_args(data: Path | str, prefix: Path, cache: Path, seed: int) -> list[str]:
    return ["preprocess", "--input", str(data), "--tokenizer-name-or-path", str(LLAMA2),
            "--output-prefix", str(prefix), "--prompt-type", "llama2", "--pack", "--neat-pack",
            "--seq-length", "512", "--pack-seed", str(seed), "--cache-dir", str(cache)]  # fmt: skip


def config(data: Path | str, prefix: Path, cache: Path, seed: int) -> PreprocessConfig:
    return PreprocessConfig(input=str(data), tokenizer_name_or_path=str(LLAMA2),
                            output_prefix=str(prefix), prompt_type="llama2", pack=True,
                            neat_pack=True, seq_length=512, pack_seed=seed,
                            cache_dir=str(cache))  # fmt: skip


def _env(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PACKFT_FAULT", "PACKFT_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if fault:
        env["PACKFT_FAULT"] = fault
    return env


def run_packft(argv: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    """`python -m packft ARGV` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "packft", *argv], env=_env(fault),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


SERVER = r"""
import json, os, sys
import numpy as np
import packft.cli, packft.dataset.inspect, packft.preprocess.cli, packft.tokenize
from transformers import AutoTokenizer  # imported, not used: no tokenizer threads before fork
from packft.pack import plan_packing
plan_packing(np.array([3, 4, 5]), 8, "bfd", seed=1)  # load the numba kernels once
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        if request["fault"]:
            os.environ["PACKFT_FAULT"] = request["fault"]
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        code = packft.cli.main(request["argv"])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Runner:
    """A fork server: ``run(argv, fault)`` forks a child that runs ``packft.cli.main(argv)``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], env=_env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert self.proc.stdout.readline().strip() == "ready"
        self.count = 0

    def run(self, argv: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
        self.count += 1
        log = self.workdir / f"run-{self.count}.log"
        request = {"argv": argv, "fault": fault, "log": str(log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        code = int(self.proc.stdout.readline())
        return subprocess.CompletedProcess(argv, code, "", log.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Iterator[Runner]:
    server = Runner(tmp_path_factory.mktemp("runs"))
    yield server
    server.close()


def set_files(prefix: Path) -> dict[str, bytes]:
    """The bytes of a set's files (the sidecar differs per write: generation id, paths)."""
    names = [f"{prefix.name}_packed_{k}_document.{e}"
             for k in ("input_ids", "attention_mask", "labels") for e in ("bin", "idx")]  # fmt: skip
    names += [f"{prefix.name}.packft.plan.npz", f"{prefix.name}.rejects.jsonl"]
    return {n: (prefix.parent / n).read_bytes() for n in names if (prefix.parent / n).exists()}


def without_rejects(files: dict[str, bytes]) -> dict[str, bytes]:
    """The rejects file names its source path; the rest is comparable across inputs' paths."""
    return {name: data for name, data in files.items() if not name.endswith(".rejects.jsonl")}


def leftovers(*directories: Path) -> list[str]:
    """Temporaries, writer locks and journals: what a finished run must not leave behind."""
    found = []
    for directory in directories:
        for path in directory.rglob(".*"):
            name = path.name
            if TEMP_RE.match(name) or LOCK_RE.match(name) or name.endswith(JOURNAL_SUFFIX):
                found.append(str(path))
    return found


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("packft preprocess: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


class World:
    """Input, shared shard cache, and the two known-good sets (seeds 1 and 2)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "a200.json"
        records = json.loads(ALPACA.read_text())[:200]
        for at in (50, 120, 199):  # three invalid records: the rejects file is part of the set
            records[at] = {"instruction": f"no answer {at}"}
        self.data.write_text(json.dumps(records))
        self.cache = root / "cache"
        self.old = root / "old" / "ds"
        self.new = root / "new" / "ds"
        for prefix, seed in ((self.old, OLD_SEED), (self.new, NEW_SEED)):
            prefix.parent.mkdir()
            preprocess(config(self.data, prefix, self.cache, seed))
        self.old_files, self.new_files = set_files(self.old), set_files(self.new)

    def copy_old(self, directory: Path) -> Path:
        """A fresh directory holding the old complete set (prefix ``directory/ds``)."""
        directory.mkdir(parents=True)
        for path in self.old.parent.iterdir():
            if path.name.startswith("ds"):
                shutil.copy2(path, directory / path.name)
        return directory / "ds"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("faults"))


def test_the_two_known_good_sets_differ_only_in_content(world: World) -> None:
    assert world.old_files.keys() == world.new_files.keys()
    differ = [n for n in world.old_files if world.old_files[n] != world.new_files[n]]
    same_size = all(len(world.old_files[n]) == len(world.new_files[n]) for n in world.old_files)
    assert same_size and "ds_packed_labels_document.bin" in differ  # only content tells them apart


# --- SIGKILL at every commit point ----------------------------------------------------------------

BEFORE_JOURNAL = ["dataset.write@3", "dataset.staged"]
AFTER_JOURNAL = ["dataset.journal", "dataset.unmarked", "dataset.renamed@1", "dataset.renamed@5",
                 "dataset.renamed@8", "dataset.marker", "dataset.committed"]  # fmt: skip


@pytest.mark.parametrize("point", BEFORE_JOURNAL + AFTER_JOURNAL)
def test_sigkill_at_a_commit_point_leaves_old_or_new_complete_set(
    world: World, runner: Runner, tmp_path: Path, point: str, capsys
) -> None:
    prefix = world.copy_old(tmp_path / "out")
    killed = runner.run(cli_args(world.data, prefix, world.cache, NEW_SEED), f"{point}=kill")
    assert killed.returncode == -9, killed.stderr
    decided = (prefix.parent / f".ds{JOURNAL_SUFFIX}").exists()
    assert decided == (point in AFTER_JOURNAL)
    expected = world.new_files if point in AFTER_JOURNAL else world.old_files
    # train's data loading finishes a decided commit, then reads one complete set
    dataset = SFTDataset(prefix)
    assert set_files(prefix) == expected
    rows = json.loads(Path(f"{prefix}.packft.json").read_text())["integrity"]["rows"]
    assert len(dataset) == rows and not (prefix.parent / f".ds{JOURNAL_SUFFIX}").exists()
    assert main(["inspect", str(prefix), "--verify"]) == 0
    assert json.loads(Path(f"{prefix}.packft.json").read_text())["config"]["pack_seed"] == (
        NEW_SEED if point in AFTER_JOURNAL else OLD_SEED
    )
    capsys.readouterr()
    # the next run removes what the killed one left and writes the new set
    preprocess(config(world.data, prefix, world.cache, NEW_SEED))
    assert set_files(prefix) == world.new_files
    assert leftovers(prefix.parent, world.cache) == []


def test_rollforward_killed_midway_is_finished_by_the_next_process(
    world: World, runner: Runner, tmp_path
) -> None:
    prefix = world.copy_old(tmp_path / "out")
    argv = cli_args(world.data, prefix, world.cache, NEW_SEED)
    assert runner.run(argv, "dataset.renamed@2=kill").returncode == -9
    # the next process (an inspect) starts the roll-forward and is killed in it too
    inspect = runner.run(["inspect", str(prefix)], "rollforward.renamed@3=kill")
    assert inspect.returncode == -9
    assert open_verified(prefix, full=True).sidecar["config"]["pack_seed"] == NEW_SEED
    assert set_files(prefix) == world.new_files


def test_a_decided_commit_that_cannot_be_finished_is_refused(
    world: World, runner: Runner, tmp_path
) -> None:
    prefix = world.copy_old(tmp_path / "out")
    assert runner.run(cli_args(world.data, prefix, world.cache, NEW_SEED),
                      "dataset.renamed@2=kill").returncode == -9  # fmt: skip
    staged = {m["target"]: p for p in prefix.parent.iterdir() if (m := TEMP_RE.match(p.name))}
    staged["ds_packed_labels_document.bin"].unlink()  # lost by hand: the journal needs it
    with pytest.raises(IntegrityError, match="cannot finish the commit"):
        SFTDataset(prefix)
    result = runner.run(["inspect", str(prefix)])
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot finish the commit" in result.stderr


DEAD_WRITER = """
import os, signal, sys
from pathlib import Path
from packft.core.atomic import Stage
stage = Stage(Path(sys.argv[1]))
stage.open(Path(sys.argv[1]) / "target.bin").write(b"half written")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sweep_removes_only_dead_writers_temporaries(tmp_path: Path) -> None:
    from packft.core.atomic import Stage
    from packft.core.writers import sweep

    subprocess.run([sys.executable, "-c", DEAD_WRITER, str(tmp_path)], env=_env(), check=False)
    dead = sorted(p.name for p in tmp_path.iterdir())
    assert len(dead) == 2 and all(TEMP_RE.match(n) or LOCK_RE.match(n) for n in dead)
    with Stage(tmp_path) as live:  # a concurrent live writer, here in this process
        live.open(tmp_path / "other.bin").write(b"in progress")
        mine = {p.name for p in tmp_path.iterdir()} - set(dead)
        assert sorted(p.name for p in sweep(tmp_path)) == dead  # only the dead writer's
        assert {p.name for p in tmp_path.iterdir()} == mine  # the live one is untouched
        live.seal(tmp_path / "other.bin")
        live.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.bin"]


# --- mixed sets, corrupt files ---------------------------------------------------------------------


def test_same_size_file_from_another_run_is_refused(
    world: World, runner: Runner, tmp_path: Path
) -> None:
    prefix = world.copy_old(tmp_path / "out")
    name = "ds_packed_labels_document.bin"
    shutil.copy2(world.new.parent / name, prefix.parent / name)  # same size, other --pack-seed
    with pytest.raises(IntegrityError, match=f"{name}: same size but other content"):
        SFTDataset(prefix)
    result = runner.run(["inspect", str(prefix)])
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and name in result.stderr


def test_a_flipped_byte_is_caught_by_verify(world: World, runner: Runner, tmp_path: Path) -> None:
    prefix = world.copy_old(tmp_path / "out")
    target = prefix.parent / "ds_packed_input_ids_document.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2 + 1001] ^= 0x40  # between the fingerprint's sampled blocks
    target.write_bytes(bytes(data))
    result = runner.run(["inspect", str(prefix), "--verify"])
    assert result.returncode == 1 and "sha256 differs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_out_of_vocabulary_ids_are_caught_by_verify(world: World, tmp_path: Path) -> None:
    prefix = world.copy_old(tmp_path / "out")
    sidecar = json.loads(Path(f"{prefix}.packft.json").read_text())
    sidecar["vocab_size"] = 100  # every real id of the set is now "outside the vocabulary"
    Path(f"{prefix}.packft.json").write_text(json.dumps(sidecar))
    with pytest.raises(IntegrityError, match="outside the vocabulary of 100"):
        open_verified(prefix, full=True)


def test_corrupt_cached_shard_is_rebuilt_with_a_warning(
    world: World, runner: Runner, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = world.copy_old(tmp_path / "a")
    preprocess(config(world.data, first, cache, OLD_SEED))
    [shard] = (cache / "shards").glob("*.arrow")
    clean = shard.read_bytes()
    broken = bytearray(clean)
    broken[len(broken) // 2] ^= 0xFF  # a token id in the middle becomes garbage
    shard.write_bytes(bytes(broken))
    out = tmp_path / "b"
    out.mkdir()
    result = runner.run(cli_args(world.data, out / "ds", cache, OLD_SEED))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "is not reused" in line]
    assert len(warnings) == 1 and "corrupted bytes" in warnings[0]
    assert shard.read_bytes() == clean  # rebuilt, identical to the clean run
    assert set_files(out / "ds") == world.old_files


@pytest.fixture
def http_server(world: World, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy2(world.data, served / "a200.json")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            requests.append(self.path)

    handler = functools.partial(Handler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/a200.json", requests
    finally:
        server.shutdown()
        server.server_close()


def test_corrupt_download_blob_is_fetched_again(
    world: World, runner: Runner, tmp_path: Path, http_server
) -> None:
    url, requests = http_server
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    out.mkdir()
    preprocess(config(url, out / "ds", cache, OLD_SEED))
    assert without_rejects(set_files(out / "ds")) == without_rejects(world.old_files)
    assert len(requests) == 1
    [blob] = (cache / "downloads" / "blobs").iterdir()
    assert blob.name.startswith(hashlib.sha256(world.data.read_bytes()).hexdigest())
    blob.write_bytes(blob.read_bytes().replace(b"instruction", b"instructiom", 1))  # same size
    result = runner.run(cli_args(url, out / "ds", cache, OLD_SEED))
    assert result.returncode == 0, result.stderr
    assert sum("cached download" in line and "corrupt" in line
               for line in result.stderr.splitlines()) == 1  # fmt: skip
    assert len(requests) == 2 and blob.read_bytes() == world.data.read_bytes()
    assert without_rejects(set_files(out / "ds")) == without_rejects(world.old_files)
    assert len(Path(f"{out / 'ds'}.rejects.jsonl").read_text().splitlines()) == 3
    assert len(list((cache / "shards").glob("*.arrow"))) == 1  # the corrupt input made none


def test_disk_full_during_a_download_leaves_no_partial_file(
    world: World, runner: Runner, tmp_path: Path, http_server
) -> None:
    url, _ = http_server
    out = tmp_path / "out"
    out.mkdir()
    cache = tmp_path / "cache"
    result = runner.run(cli_args(url, out / "ds", cache, OLD_SEED), "download.write=enospc")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "ENOSPC (No space left on device): " in line and line.endswith(".part")
    assert [p for p in (cache / "downloads").rglob("*") if p.suffix in (".part", ".tmp")] == []
    assert set_files(out / "ds") == {} and leftovers(out) == []  # nothing written or left


def test_corrupt_plan_file_is_refused(world: World, tmp_path: Path) -> None:
    cfg = config(world.data, world.copy_old(tmp_path / "out"), tmp_path / "cache", NEW_SEED)
    shard = tokenize_input(world.data, cfg)
    plan_file = plan(cfg, [shard])
    raw = bytearray(plan_file.read_bytes())
    raw[len(raw) // 2] ^= 1
    plan_file.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
        write(cfg, [shard], plan_file)
    assert set_files(Path(cfg.output_prefix)) == world.old_files


# --- write errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "names"),
    [
        ("dataset.write@5=enospc", errno.ENOSPC, "_document.bin"),
        ("dataset.write@40=eio", errno.EIO, "_document.bin"),
        ("dataset.write@260=erofs", errno.EROFS, "ds.packft.plan.npz"),
        ("atomic.write@2=enospc", errno.ENOSPC, ".arrow"),  # the shard, with --overwrite-cache
    ],
)
def test_write_error_removes_every_temporary_and_names_the_file(
    world: World, runner: Runner, tmp_path: Path, fault: str, code: int, names: str
) -> None:
    prefix = world.copy_old(tmp_path / "out")
    argv = cli_args(world.data, prefix, world.cache, NEW_SEED)
    if fault.startswith("atomic."):
        argv.append("--overwrite-cache")  # the shard is written again
    result = runner.run(argv, fault)
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert line.startswith(f"packft preprocess: error: {errno.errorcode[code]} (") and names in line
    assert set_files(prefix) == world.old_files  # the previous dataset, intact
    assert open_verified(prefix).sidecar["config"]["pack_seed"] == OLD_SEED
    assert leftovers(prefix.parent, world.cache) == []
    preprocess(config(world.data, prefix, world.cache, NEW_SEED))  # the next run succeeds
    assert set_files(prefix) == world.new_files


def test_error_after_the_journal_is_finished_by_the_next_process(
    world: World, runner: Runner, tmp_path: Path
) -> None:
    prefix = world.copy_old(tmp_path / "out")
    result = runner.run(
        cli_args(world.data, prefix, world.cache, NEW_SEED), "dataset.renamed@3=eio"
    )
    assert result.returncode == 1 and "EIO (Input/output error)" in one_error_line(result.stderr)
    assert (prefix.parent / f".ds{JOURNAL_SUFFIX}").exists()  # decided: temporaries kept for it
    assert open_verified(prefix).sidecar["config"]["pack_seed"] == NEW_SEED  # rolled forward
    assert set_files(prefix) == world.new_files
    preprocess(config(world.data, prefix, world.cache, NEW_SEED))
    assert leftovers(prefix.parent) == []


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path | None]:
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def _mount(point: Path, options: str) -> bool:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


def test_real_full_disk(world: World, tmp_path: Path, mount_point: Path) -> None:
    if not _mount(mount_point, "size=700k"):
        pytest.skip("mount -t tmpfs is not permitted here; the injected ENOSPC test covers it")
    prefix = mount_point / "ds"
    for path in world.old.parent.iterdir():  # the previous dataset, ~0.5 MB of a 0.7 MB disk
        if path.name.startswith("ds"):
            shutil.copy2(path, mount_point / path.name)
    used = shutil.disk_usage(mount_point).used
    result = run_packft(cli_args(world.data, prefix, world.cache, NEW_SEED))  # needs 0.5 MB more
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "ENOSPC (No space left on device): " + str(mount_point) in line
    assert set_files(prefix) == world.old_files and leftovers(mount_point) == []
    assert shutil.disk_usage(mount_point).used == used  # nothing keeps the disk full
    small = tmp_path / "a50.json"
    small.write_text(json.dumps(json.loads(world.data.read_text())[:50]))
    preprocess(config(small, prefix, tmp_path / "cache", NEW_SEED))  # fits: the next run works
    assert open_verified(prefix, full=True).sidecar["stats"]["samples_in"] == 50
    assert leftovers(mount_point) == []


def test_read_only_output_directory_fails_before_tokenizing(
    world: World, tmp_path: Path, mount_point: Path
) -> None:
    real = _mount(mount_point, "ro,size=64k")
    cache = tmp_path / "fresh-cache"
    argv = cli_args(world.data, mount_point / "ds", cache, OLD_SEED)
    result = run_packft(argv, None if real else "probe.create=erofs")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"EROFS (Read-only file system; the --output-prefix directory must be writable): " \
           f"{mount_point}" in line  # fmt: skip
    assert not cache.exists()  # nothing was fetched or tokenized


# --- many kills ------------------------------------------------------------------------------------

RANDOM_POINTS = {
    "dataset.write": 250,
    "dataset.staged": 1,
    "dataset.journal": 1,
    "dataset.unmarked": 1,
    "dataset.renamed": 8,
    "dataset.marker": 1,
    "dataset.committed": 1,
    "atomic.write": 3,
    "atomic.staged": 3,
    "atomic.committed": 3,
    "rejects.write": 3,
}  # point -> hits in one run (at least)


def seed_on_disk(prefix: Path) -> int | None:
    """The seed of the complete set at ``prefix`` (None: a decided commit is pending, any run
    writes)."""
    if (prefix.parent / f".{prefix.name}{JOURNAL_SUFFIX}").exists():
        return None
    return json.loads(Path(f"{prefix}.packft.json").read_text())["config"]["pack_seed"]


def test_twenty_random_kills_leave_nothing_behind(
    world: World, runner: Runner, tmp_path: Path
) -> None:
    rng = random.Random(20261129)
    prefix = world.copy_old(tmp_path / "out")
    cache = tmp_path / "cache"
    shutil.copytree(world.cache, cache)
    for _ in range(20):
        point = rng.choice(sorted(RANDOM_POINTS))
        nth = rng.randint(1, RANDOM_POINTS[point])
        seed = rng.choice([OLD_SEED, NEW_SEED])
        if seed == seed_on_disk(prefix):  # that run would reuse the set (packft.preprocess.reuse)
            seed = OLD_SEED + NEW_SEED - seed  # and never reach the point: the other seed writes
        argv = cli_args(world.data, prefix, cache, seed)
        if point.startswith(("rejects", "atomic")):  # shards and plans are reused from the
            argv.append("--overwrite-cache")  # cache: their writes happen only when rebuilt
        result = runner.run(argv, f"{point}@{nth}=kill")
        assert result.returncode == -9, (point, nth, result.stderr)
    preprocess(config(world.data, prefix, cache, NEW_SEED))
    assert leftovers(prefix.parent, cache) == []
    assert set_files(prefix) == world.new_files
    assert main(["inspect", str(prefix), "--verify"]) == 0
