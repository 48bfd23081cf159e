"""Sources: every input format streams back the same rows; URLs go through a real local server."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.server
import json
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from packft.core.digest import file_sha256
from packft.ingest import sources, stream
from packft.ingest.download import (
    ChecksumMismatchError,
    DownloadError,
    HubUnavailableError,
    fetch_url,
)
from packft.ingest.limits import RecordLimits
from packft.ingest.readers import KNOWN_SUFFIXES, detect_format, iter_record_batches
from packft.ingest.sniff import ContentMismatchError
from packft.ingest.sources import MixedFormatsError, list_data_files, resolve_input
from packft.ingest.stream import BadRow, SourceError

ALPACA = [
    {"instruction": f"Say {i}", "input": "" if i % 2 else f"ctx {i}", "output": f"answer é {i}"}
    for i in range(23)
]
SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": f"hi {i}"},
            {"from": "gpt", "value": f"hello\nthere {i}"},
        ],
        "system": "be nice" if i % 3 == 0 else "",
    }
    for i in range(17)
]


def read_all(path: Path, batch_size: int = 5) -> list:
    """Rows of a file, checking that batches are consecutive and numbered from 0."""
    rows: list = []
    for batch in iter_record_batches(path, batch_size):
        assert batch.source == str(path)
        assert batch.start_row == len(rows)
        assert 0 < len(batch.rows) <= batch_size
        rows.extend(batch.rows)
    return rows


def write_jsonl(path: Path, records: list, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.parquet", "parquet"),
        ("a.arrow", "arrow"),
        ("a.csv", "csv"),
        ("a.CSV.gz", "csv"),
        ("a.json", "json"),
        ("a.jsonl", "jsonl"),
        ("a.jsonl.zst", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.txt", "txt"),
        ("a.txt.bz2", "txt"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


@pytest.mark.parametrize("name", ["a.xlsx", "a.parquet.gz", "README", "a.json.rar"])
def test_detect_format_rejects_unknown(name: str) -> None:
    with pytest.raises(SourceError, match="supported"):
        detect_format(name)


@pytest.mark.parametrize("records", [ALPACA, SHAREGPT], ids=["alpaca", "sharegpt"])
def test_parquet_and_arrow_round_trip(tmp_path: Path, records: list) -> None:
    table = pa.Table.from_pylist(records)
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=7)
    with (
        pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as writer,
    ):
        for batch in table.to_batches(max_chunksize=4):
            writer.write_batch(batch)
    with (
        pa.OSFile(str(tmp_path / "stream.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table, max_chunksize=6)
    for name in ("d.parquet", "file.arrow", "stream.arrow"):
        assert read_all(tmp_path / name) == records, name


def test_sharegpt_nesting_survives_as_python_objects(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(SHAREGPT), tmp_path / "s.parquet")
    row = read_all(tmp_path / "s.parquet")[0]
    assert isinstance(row["conversations"], list)
    assert isinstance(row["conversations"][0], dict)
    assert row["conversations"][1]["value"] == "hello\nthere 0"


@pytest.mark.parametrize("opener", [open, gzip.open, bz2.open], ids=["plain", "gz", "bz2"])
def test_jsonl_round_trip_and_compression(tmp_path: Path, opener) -> None:
    suffix = {open: "", gzip.open: ".gz", bz2.open: ".bz2"}[opener]
    path = write_jsonl(tmp_path / f"d.jsonl{suffix}", SHAREGPT, opener)
    assert read_all(path) == SHAREGPT


def test_json_list_and_json_lines_in_dot_json(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps(ALPACA, indent=2), encoding="utf-8")
    lines = write_jsonl(tmp_path / "lines.json", ALPACA)
    assert read_all(tmp_path / "list.json") == ALPACA
    assert read_all(lines) == ALPACA
    (tmp_path / "empty.json").write_text(" [ ] \n")
    assert read_all(tmp_path / "empty.json") == []


def test_json_list_elements_across_chunk_boundaries(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stream, "CHAR_CHUNK", 7)  # every element spans many reads
    records = [*ALPACA, {"n": 12345678901234, "big": "x" * 5000}, 3.25, [1, [2]], None]
    (tmp_path / "l.json").write_text(json.dumps(records), encoding="utf-8")
    assert read_all(tmp_path / "l.json", batch_size=4) == records


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[{"a": 1}, {"a": 2]', "element 1"),
        ('[{"a": 1} {"a": 2}]', "expected ',' or ']' after element 0"),
        ('[{"a": 1}] trailing', "after the closing"),
    ],
)
def test_json_list_syntax_error_fails_the_file(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(SourceError, match=match):
        read_all(tmp_path / "bad.json")


def test_json_list_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    record = {"instruction": "i" * 200, "input": "", "output": "o" * 1800}
    with open(path, "w") as handle:
        handle.write("[" + ",\n".join([json.dumps(record)] * 12_000) + "]")
    size = path.stat().st_size  # ~24 MB: ~100 MB as Python objects if loaded whole
    tracemalloc.start()
    rows = 0
    for batch in iter_record_batches(path, batch_size=256):
        rows += len(batch.rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rows == 12_000
    assert peak < size / 3, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


def test_jsonl_keeps_timestamp_like_strings_as_text(tmp_path: Path) -> None:
    records = [{"instruction": "2021-01-01", "input": "", "output": "2020-02-02 10:00:00"}] * 3
    assert read_all(write_jsonl(tmp_path / "t.jsonl", records)) == records


def test_jsonl_broken_line_becomes_badrow_with_its_row(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    good = [json.dumps(r) for r in ALPACA[:4]]
    path.write_text("\n".join([good[0], good[1], "", '{"instruction": "tr', good[2], good[3]]))
    rows = read_all(path, batch_size=2)
    assert rows[:2] == ALPACA[:2] and rows[3:] == ALPACA[2:4]
    assert isinstance(rows[2], BadRow) and "invalid JSON" in rows[2].error


def test_jsonl_type_change_after_first_block_falls_back_in_place(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(stream, "BLOCK_BYTES", 256)  # Arrow infers the schema from the first rows
    records = [{"a": i, "b": "x" * 20} for i in range(40)] + [{"a": "text now", "b": [1, 2]}]
    records += [{"a": i} for i in range(5)]
    assert read_all(write_jsonl(tmp_path / "m.jsonl", records), batch_size=3) == records


def test_csv_reads_text_columns_with_quoted_newlines(tmp_path: Path) -> None:
    records = [{"instruction": "Add", "input": "1,2", "output": "3"}]
    records += [{"instruction": "Poem", "input": "", "output": 'line one\nline "two"'}]
    records += [{"instruction": "007", "input": "", "output": "42"}]  # digits stay text
    pcsv.write_csv(pa.Table.from_pylist(records), tmp_path / "d.csv")
    assert read_all(tmp_path / "d.csv", batch_size=2) == records
    with gzip.open(tmp_path / "d.csv.gz", "wb") as handle:
        handle.write((tmp_path / "d.csv").read_bytes())
    assert read_all(tmp_path / "d.csv.gz") == records


def test_csv_bad_utf8_cell_survives_as_surrogates(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_bytes(b"instruction,output\nok,fine\nbad \xff byte,x\n")
    rows = read_all(tmp_path / "bad.csv")
    assert rows[0] == {"instruction": "ok", "output": "fine"}
    assert rows[1]["instruction"] == "bad \udcff byte"


def test_txt_one_record_per_line(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_bytes("first\r\n\nthird é\nlast".encode())
    assert read_all(tmp_path / "t.txt", batch_size=3) == [
        {"text": "first"},
        {"text": ""},
        {"text": "third é"},
        {"text": "last"},
    ]


# ---------------------------------------------------------------------------- local inputs


def test_directory_one_format_sorted_recursive(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "b.jsonl", ALPACA)
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "a.jsonl", ALPACA)
    write_jsonl(tmp_path / "a.jsonl", ALPACA)
    (tmp_path / "README.md").write_text("docs")
    (tmp_path / ".hidden.csv").write_text("x")
    (tmp_path / "dataset_info.json").write_text("{}")
    files = resolve_input(str(tmp_path), tmp_path / "cache")
    assert files == [tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "sub" / "a.jsonl"]


def test_directory_mixing_formats_names_the_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ALPACA)
    pq.write_table(pa.Table.from_pylist(ALPACA), tmp_path / "b.parquet")
    with pytest.raises(MixedFormatsError, match=r"a\.jsonl.*b\.parquet"):
        resolve_input(str(tmp_path), tmp_path / "cache")


def test_directory_with_unknown_or_no_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no data files"):
        list_data_files(tmp_path)
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    with pytest.raises(SourceError, match=r"unknown type.*x\.xlsx"):
        list_data_files(tmp_path)


def test_save_to_disk_folder_reads_its_arrow_shards(tmp_path: Path) -> None:
    # The layout datasets.Dataset.save_to_disk writes: IPC *stream* shards + state.json.
    table = pa.Table.from_pylist(SHAREGPT)
    names = ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    for name, part in zip(names, (table.slice(0, 9), table.slice(9)), strict=True):
        with (
            pa.OSFile(str(tmp_path / name), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(part)
    (tmp_path / "dataset_info.json").write_text("{}")
    state = {"_data_files": [{"filename": n} for n in names], "_split": "train"}
    (tmp_path / "state.json").write_text(json.dumps(state))
    files = resolve_input(str(tmp_path), tmp_path / "cache")
    assert files == [tmp_path / n for n in names]
    assert read_all(files[0]) + read_all(files[1]) == SHAREGPT


def test_dataset_dict_root_asks_for_a_split(tmp_path: Path) -> None:
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with pytest.raises(SourceError, match=r"DatasetDict.*--input .*train"):
        list_data_files(tmp_path)


def test_missing_path_and_local_checksum(tmp_path: Path) -> None:
    (tmp_path / "there.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match=r"no such file.*there\.jsonl"):
        resolve_input(str(tmp_path / "gone.jsonl"), tmp_path / "cache")
    digest = hashlib.sha256(b"{}\n").hexdigest()
    assert resolve_input(str(tmp_path / "there.jsonl"), tmp_path, sha256=digest)
    assert file_sha256(tmp_path / "there.jsonl") == digest
    with pytest.raises(SourceError, match="sha256"):
        resolve_input(str(tmp_path / "there.jsonl"), tmp_path, sha256="0" * 64)


def test_hub_offline_fails_fast_with_local_path_hint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match=r"offline.*--input DIR") as info:
        resolve_input("hf://datasets/tatsu-lab/alpaca@main", tmp_path)
    assert time.monotonic() - start < 5
    assert "hf download tatsu-lab/alpaca --repo-type dataset --revision main" in str(info.value)


def test_hub_spec_must_be_well_formed(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="hf://datasets/OWNER/NAME"):
        resolve_input("hf://models/gpt2", tmp_path)


# ---------------------------------------------------------------------------- URLs

PAYLOAD = b"".join(json.dumps(r).encode() + b"\n" for r in ALPACA * 40)  # ~65 KB


class FileServer:
    """A real HTTP server on 127.0.0.1 with Range support and scripted failures."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.script: list[str] = []  # "ok", "drop", "503", "nolength", "nolength-cut"
        self.requests: list[dict[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(
                    {"path": self.path, "range": self.headers.get("Range"), "if_range": None}
                )
                server.requests[-1]["if_range"] = self.headers.get("If-Range")
                action = server.script.pop(0) if server.script else "ok"
                path = self.path.split("?")[0]
                if action == "503":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in server.files:
                    self.send_error(404, "Not Found")
                    return
                data, etag = server.files[path], server.etags[path]
                if action in ("nolength", "nolength-cut"):  # body ends when the connection does
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(data if action == "nolength" else data[: len(data) // 2])
                    self.close_connection = True
                    return
                start = 0
                requested = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if requested and (if_range is None or if_range == etag):
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", etag)
                if path.startswith("/download"):
                    self.send_header("Content-Disposition", 'attachment; filename="x.jsonl"')
                self.end_headers()
                body = data[start:]
                if action == "drop":
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def put(self, path: str, data: bytes) -> str:
        key = path.split("?")[0]
        self.files[key] = data
        self.etags[key] = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_url_download_is_content_addressed_and_reused(server: FileServer, tmp_path: Path) -> None:
    url = server.put("/data/train.jsonl", PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    [path] = resolve_input(url, tmp_path)
    assert path == tmp_path / "blobs" / f"{digest}.jsonl"
    assert path.read_bytes() == PAYLOAD
    assert json.loads((tmp_path / "urls.json").read_text())[url]["sha256"] == digest
    assert len(read_all(path, batch_size=1000)) == len(ALPACA) * 40
    assert resolve_input(url, tmp_path) == [path]
    assert len(server.requests) == 1  # the second run used the cache index


def test_url_resumes_with_range_after_a_dropped_connection(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.put("/d.jsonl", PAYLOAD)
    server.script = ["drop"]
    [path] = resolve_input(url, tmp_path, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert path.read_bytes() == PAYLOAD
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == f"bytes={len(PAYLOAD) // 3}-"
    assert server.requests[1]["if_range"] == server.etags["/d.jsonl"]
    assert not list((tmp_path / "partial").glob("*.part"))


def test_partial_file_is_resumed_by_the_next_run(server: FileServer, tmp_path: Path) -> None:
    url = server.put("/d.jsonl", PAYLOAD)
    server.script = ["drop"]
    with pytest.raises(DownloadError, match="re-run resumes"):
        fetch_url(url, tmp_path, retries=0, known_suffixes=KNOWN_SUFFIXES)
    assert [p.stat().st_size for p in (tmp_path / "partial").glob("*.part")] == [len(PAYLOAD) // 3]
    path = fetch_url(url, tmp_path, known_suffixes=KNOWN_SUFFIXES)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == f"bytes={len(PAYLOAD) // 3}-"


def test_changed_remote_file_restarts_instead_of_splicing(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.put("/d.jsonl", PAYLOAD)
    server.script = ["drop"]
    with pytest.raises(DownloadError):
        fetch_url(url, tmp_path, retries=0, known_suffixes=KNOWN_SUFFIXES)
    changed = PAYLOAD.replace(b"Say", b"SAY")
    server.put("/d.jsonl", changed)  # new ETag: If-Range no longer matches, server sends 200
    assert fetch_url(url, tmp_path, known_suffixes=KNOWN_SUFFIXES).read_bytes() == changed


def test_checksum_mismatch_leaves_nothing_in_the_cache(server: FileServer, tmp_path: Path) -> None:
    url = server.put("/d.jsonl", PAYLOAD)
    with pytest.raises(ChecksumMismatchError, match="sha256 mismatch.*deleted"):
        resolve_input(url, tmp_path, sha256="ab" * 32)
    leftovers = [f for f in cache_files(tmp_path) if not f.endswith(".lock")]
    assert leftovers == []


def test_transient_503_is_retried_with_backoff(server: FileServer, tmp_path: Path) -> None:
    url = server.put("/d.csv", b"instruction,output\na,b\n")
    server.script = ["503", "503"]
    start = time.monotonic()
    path = fetch_url(url, tmp_path, backoff=0.05, known_suffixes=KNOWN_SUFFIXES)
    assert time.monotonic() - start >= 0.05 + 0.1  # two sleeps, doubling
    assert path.read_bytes() == b"instruction,output\na,b\n"
    assert len(server.requests) == 3


def test_persistent_503_gives_up(server: FileServer, tmp_path: Path) -> None:
    url = server.put("/d.csv", b"x\n")
    server.script = ["503"] * 10
    with pytest.raises(DownloadError, match="giving up after 3 failed attempts.*HTTP 503"):
        fetch_url(url, tmp_path, retries=2, backoff=0.01, known_suffixes=KNOWN_SUFFIXES)
    assert len(server.requests) == 3


def test_404_fails_at_once_with_a_clear_message(server: FileServer, tmp_path: Path) -> None:
    url = server.put("/d.jsonl", PAYLOAD).replace("/d.jsonl", "/missing.jsonl")
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"missing\.jsonl: HTTP 404.*check the URL"):
        resolve_input(url, tmp_path)
    assert time.monotonic() - start < 2
    assert len(server.requests) == 1


def test_format_from_content_disposition_or_clear_error(server: FileServer, tmp_path: Path) -> None:
    url = server.put("/download?id=3", PAYLOAD)
    assert resolve_input(url, tmp_path)[0].name.endswith(".jsonl")
    bare = server.put("/blob", PAYLOAD)
    with pytest.raises(DownloadError, match="cannot tell the file format"):
        resolve_input(bare, tmp_path)


def test_directory_with_several_splits_is_refused(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ALPACA)
    write_jsonl(tmp_path / "test.jsonl", ALPACA)
    with pytest.raises(SourceError, match="several dataset splits.*test, train"):
        resolve_input(str(tmp_path), tmp_path / "cache")
    assert resolve_input(str(tmp_path / "train.jsonl"), tmp_path / "cache")


def fake_hub_snapshot(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A huggingface_hub cache entry as snapshot_download leaves it (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / "hub" / f"datasets--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    return snapshot


def test_hub_snapshot_in_cache_is_used_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    jsonl = b"".join(json.dumps(r).encode() + b"\n" for r in ALPACA)
    snapshot = fake_hub_snapshot(
        tmp_path,
        "me/demo",
        {
            "README.md": b"# card",
            "data/train-00000-of-00002.jsonl": jsonl,
            "data/train-00001-of-00002.jsonl": jsonl,
            "data/test-00000-of-00001.jsonl": jsonl,
        },
    )
    with pytest.raises(SourceError, match="several dataset splits"):
        resolve_input("hf://datasets/me/demo@main", tmp_path)
    files = resolve_input("hf://datasets/me/demo@main/data/train-*", tmp_path)
    assert files == [snapshot / "data" / f"train-0000{i}-of-00002.jsonl" for i in (0, 1)]
    one = resolve_input("hf://datasets/me/demo/data/test-00000-of-00001.jsonl", tmp_path)
    assert read_all(one[0]) == ALPACA
    with pytest.raises(SourceError, match="no 'nope' in the snapshot"):
        resolve_input("hf://datasets/me/demo/nope", tmp_path)


# ---------------------------------------------------------------------------- hostile input


def test_hub_paths_that_climb_out_of_the_snapshot_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    jsonl = b"".join(json.dumps(r).encode() + b"\n" for r in ALPACA)
    snapshot = fake_hub_snapshot(tmp_path, "me/demo", {"data/train.jsonl": jsonl})
    outside = tmp_path / "hub" / "secret.jsonl"  # inside the cache, outside the snapshot
    outside.write_bytes(jsonl)
    climb = os.path.relpath(outside, snapshot)  # ../../../secret.jsonl
    for spec in (
        f"hf://datasets/me/demo/{climb}",
        f"hf://datasets/me/demo@main/data/../{climb}",
        "hf://datasets/me/demo/data/../../x/*.jsonl",
        f"hf://datasets/me/demo/{outside}",  # absolute: hf://datasets/me/demo//tmp/...
        "hf://datasets/../../secret.jsonl",
        "hf://datasets/me/demo@../../x/data",
    ):
        with pytest.raises(sources.InputSpecError) as info:
            resolve_input(spec, tmp_path)
        assert info.value.exit_code == 2, spec
    # the same file named inside the snapshot still works
    assert resolve_input("hf://datasets/me/demo/data/train.jsonl", tmp_path) == [
        snapshot / "data" / "train.jsonl"
    ]


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("d.json", gzip.compress(b'[{"a": 1}]'), r"gzip-compressed data.*rename it to d\.json\.gz"),
        (
            "d.jsonl",
            b"\x28\xb5\x2f\xfd" + bytes(40),
            r"zstd-compressed.*rename it to d\.jsonl\.zst",
        ),
        (
            "d.json.gz",
            b'[{"a": 1}]',
            r"not gz-compressed \(it starts like JSON text\): rename it to d\.json$",
        ),
        (
            "d.jsonl.gz",
            bz2.compress(b"{}\n"),
            r"bzip2-compressed data, not gz-compressed: rename it to d\.jsonl\.bz2",
        ),
        (
            "d.csv",
            b"PAR1" + bytes(100) + b"PAR1",
            r"a parquet file, not CSV text: rename it to d\.parquet",
        ),
        ("d.json", b"\xff\xfe[\x00{\x00}\x00]\x00", r"UTF-16 text"),
        ("d.txt", bytes(range(256)) * 40, r"binary data, not UTF-8 text \(NUL byte at offset 0\)"),
        ("d.jsonl", b"\x01\x02\x03\x04\x05abc" * 50, r"binary data.*control bytes"),
        (
            "d.parquet",
            b'[{"a": 1}]',
            r"not a parquet file \(it starts like JSON text\): rename it to d\.json",
        ),
        ("d.parquet", b"", r"is empty \(0 bytes\), not a parquet file"),
        ("d.parquet", b"PAR1" + bytes(100), r"parquet file without its footer \(truncated"),
        ("d.arrow", gzip.compress(b"x"), r"gzip-compressed data, not a arrow file"),
    ],
)
def test_content_that_contradicts_the_name_is_one_clear_error(
    tmp_path: Path, name: str, data: bytes, match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ContentMismatchError, match=match) as info:
        resolve_input(str(path), tmp_path / "cache")  # before any other work
    assert "\n" not in str(info.value)
    with pytest.raises(ContentMismatchError):  # library readers check too
        read_all(path)


def test_random_bytes_are_refused_whatever_the_text_suffix(tmp_path: Path) -> None:
    noise = random.Random(7).randbytes(200_000)
    for suffix in (".json", ".jsonl", ".csv", ".txt", ".json.gz", ".jsonl.zst", ".parquet"):
        path = tmp_path / f"noise{suffix}"
        path.write_bytes(noise)
        with pytest.raises(ContentMismatchError, match="noise"):
            resolve_input(str(path), tmp_path / "cache")


def test_empty_text_file_reads_as_no_records(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    assert read_all(tmp_path / "e.jsonl") == []  # the quality gate turns this into an error


def reasons(rows: list) -> list:
    return [row.reason if isinstance(row, BadRow) else "ok" for row in rows]


DEEP = 200_000


def deep_record(depth: int = DEEP) -> str:
    return '{"instruction": ' + "[" * depth + "]" * depth + ', "output": "x"}'


def test_jsonl_oversized_and_deep_records_are_rejected_rows(tmp_path: Path) -> None:
    good = json.dumps(ALPACA[0])
    big = json.dumps({"instruction": "é" * 700, "output": "x"})  # 1,400+ bytes, 700+ chars
    lines = [good, deep_record(), good, "x" * 5000, big, json.dumps({"a": [[[[1]]]]}), good]
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    limits = RecordLimits(max_bytes=1000, max_depth=3)
    rows = [r for b in iter_record_batches(path, 2, limits) for r in b.rows]
    assert reasons(rows) == ["ok", "too_large", "ok", "too_large", "too_large", "too_deep", "ok"]
    assert "at least 5,000 bytes, over --max-record-bytes 1,000" in rows[3].error
    assert len(rows[3].text) <= 200 and rows[0] == ALPACA[0]
    assert f"{len(big.encode()):,} bytes" in rows[4].error  # bytes, not characters
    # default limits (16 MiB, depth 100): only the 200k-deep record is refused, without a crash
    rows = read_all(path, batch_size=3)  # "xxx..." is then simply not JSON
    assert reasons(rows) == ["ok", "too_deep", "ok", "invalid_json", "ok", "ok", "ok"]


def test_json_list_oversized_and_deep_elements_are_skipped_in_place(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(stream, "CHAR_CHUNK", 64)  # every skip crosses many reads
    tricky = '"a \\" [ { \\\\' + "b" * 3000 + '"'  # escaped quote, brackets inside the string
    elements = [
        json.dumps(ALPACA[0]),
        deep_record(),
        '{"instruction": ' + tricky + ', "output": "x"}',
        json.dumps(ALPACA[1]),
        tricky,
        json.dumps({"a": [[[[1]]]]}),
        json.dumps(ALPACA[2]),
    ]
    path = tmp_path / "h.json"
    path.write_text("[" + ",\n ".join(elements) + "]", encoding="utf-8")
    limits = RecordLimits(max_bytes=1000, max_depth=3)
    rows = [r for b in iter_record_batches(path, 2, limits) for r in b.rows]
    assert reasons(rows) == ["ok", "too_large", "too_large", "ok", "too_large", "too_deep", "ok"]
    assert rows[3] == ALPACA[1] and rows[6] == ALPACA[2]
    rows = read_all(path)  # default limits: the deep one only
    assert reasons(rows) == ["ok", "too_deep", "ok", "ok", "ok", "ok", "ok"]


def test_json_list_syntax_error_inside_a_long_element_still_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    rest = ", ".join([json.dumps({"a": "y" * 100})] * 40)  # the window holds more than the limit
    path.write_text('[{"a": "' + "x" * 500 + '", "b": 1 2}, ' + rest + "]")
    with pytest.raises(SourceError, match="element 0"):
        list(iter_record_batches(path, 8, RecordLimits(max_bytes=1000)))


def test_value_skipper_finds_the_end_across_pieces() -> None:
    from packft.ingest.limits import ValueSkipper

    text = '{"k": ["]", "\\"}", {"x": "\\\\"}], "e": "\\u005d"}  , next'
    end = text.index("  ,")
    for size in (1, 2, 3, 5, len(text)):
        skipper, offset, found = ValueSkipper(), 0, None
        while found is None:
            piece = text[offset : offset + size]
            found = skipper.feed(piece)
            if found is None:
                offset += size
        assert offset + found == end, size
    for scalar, stop in (("123.5e3, 4", 7), ('"a,b\\"c" ]', 8), ("true]", 4)):
        assert ValueSkipper().feed(scalar) == stop


def test_columnar_rows_over_the_limits_are_rejected(tmp_path: Path) -> None:
    table = pa.table(
        {
            "instruction": ["short", "y" * 5000, "short"],
            "output": ["a", "b", "c"],
            "nested": [[["p"]], [["q"]], [["r" * 3000]]],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    pcsv.write_csv(table.drop_columns(["nested"]), tmp_path / "t.csv")
    limits = RecordLimits(max_bytes=2000)
    parquet = [r for b in iter_record_batches(tmp_path / "t.parquet", 2, limits) for r in b.rows]
    assert reasons(parquet) == ["ok", "too_large", "too_large"]  # nested strings are counted
    assert "5,0" in parquet[1].error and parquet[0]["nested"] == [["p"]]
    csv_rows = [r for b in iter_record_batches(tmp_path / "t.csv", 2, limits) for r in b.rows]
    assert reasons(csv_rows) == ["ok", "too_large", "ok"]
    shallow = RecordLimits(max_depth=2)  # row -> list -> list: 3 levels
    assert reasons(read_all_limited(tmp_path / "t.parquet", shallow)) == ["too_deep"] * 3


def read_all_limited(path: Path, limits) -> list:
    return [r for b in iter_record_batches(path, 8, limits) for r in b.rows]


def test_download_without_content_length_is_kept_but_unverified(
    server: FileServer, tmp_path: Path, caplog
) -> None:
    url = server.put("/n.jsonl", PAYLOAD)
    server.script = ["nolength-cut"]  # half the file, then the connection closes
    with caplog.at_level("WARNING", logger="packft.ingest.download"):
        path = fetch_url(url, tmp_path, known_suffixes=KNOWN_SUFFIXES)
    assert path.stat().st_size == len(PAYLOAD) // 2  # indistinguishable from a complete body
    entry = json.loads((tmp_path / "urls.json").read_text())[url]
    assert entry["unverified"] is True
    [warning] = [r.getMessage() for r in caplog.records]
    assert "without Content-Length" in warning and "UNVERIFIED" in warning
    assert "\n" not in warning and entry["sha256"] in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="packft.ingest.download"):
        assert fetch_url(url, tmp_path, known_suffixes=KNOWN_SUFFIXES) == path  # reuse
    assert len(caplog.records) == 1  # ... warns again
    # the expected checksum turns the silent truncation into an error, and nothing is kept
    server.script = ["nolength-cut"]
    with pytest.raises(ChecksumMismatchError):
        fetch_url(url, tmp_path / "c2", sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                  known_suffixes=KNOWN_SUFFIXES)  # fmt: skip
    server.script = ["nolength"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="packft.ingest.download"):
        good = fetch_url(url, tmp_path / "c3", sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                         known_suffixes=KNOWN_SUFFIXES)  # fmt: skip
    assert good.read_bytes() == PAYLOAD and not caplog.records
    assert "unverified" not in json.loads((tmp_path / "c3" / "urls.json").read_text())[url]


def test_download_cut_short_with_content_length_is_an_error(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.put("/c.jsonl", PAYLOAD)
    server.script = ["drop"]  # a third of the body, then the connection closes
    with pytest.raises(DownloadError, match=rf"giving up.*expected {len(PAYLOAD)}"):
        fetch_url(url, tmp_path, retries=0, known_suffixes=KNOWN_SUFFIXES)
    assert not (tmp_path / "urls.json").exists() and not list((tmp_path / "blobs").glob("*"))


def test_arrow_json_prescan_counts_per_line_across_blocks(tmp_path: Path, monkeypatch) -> None:
    from packft.ingest.json_text import fits_arrow_json

    monkeypatch.setattr(stream, "BLOCK_BYTES", 16)  # lines straddle many blocks
    path = tmp_path / "p.jsonl"
    lines = ['{"a": [1, [2]], "b": "' + "x" * 40 + '"}', '{"c": [[[0]]]}']  # 3 and 4 opens
    path.write_text("\n".join(lines) + "\n")
    assert fits_arrow_json(path, RecordLimits(max_depth=4, max_bytes=64))  # 64 bytes
    assert not fits_arrow_json(path, RecordLimits(max_depth=3, max_bytes=64))
    assert not fits_arrow_json(path, RecordLimits(max_depth=4, max_bytes=63))
    path.write_text(lines[1] + "\n" + lines[0])  # the last line has no newline
    assert fits_arrow_json(path, RecordLimits(max_depth=4, max_bytes=64))
    assert not fits_arrow_json(path, RecordLimits(max_depth=4, max_bytes=63))
    path.write_text(lines[0] + "\n" + '{"d": [[[[[')  # 6 opens in the unterminated tail
    assert not fits_arrow_json(path, RecordLimits(max_depth=4, max_bytes=64))
