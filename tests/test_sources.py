"""Sources: every input format streams back the same rows; URLs go through a real local server."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.server
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from packft import readers, sources
from packft.download import ChecksumMismatchError, DownloadError, HubUnavailableError, fetch_url
from packft.sources import (
    BadRow,
    MixedFormatsError,
    SourceError,
    detect_format,
    file_sha256,
    iter_record_batches,
    list_data_files,
    resolve_input,
)

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
    monkeypatch.setattr(readers, "_CHAR_CHUNK", 7)  # every element spans many reads
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
    monkeypatch.setattr(readers, "_BLOCK", 256)  # Arrow infers the schema from the first rows
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
        self.script: list[str] = []  # per-request behaviour: "ok", "drop", "503"
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
        fetch_url(url, tmp_path, retries=0, known_suffixes=sources.KNOWN_SUFFIXES)
    assert [p.stat().st_size for p in (tmp_path / "partial").glob("*.part")] == [len(PAYLOAD) // 3]
    path = fetch_url(url, tmp_path, known_suffixes=sources.KNOWN_SUFFIXES)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == f"bytes={len(PAYLOAD) // 3}-"


def test_changed_remote_file_restarts_instead_of_splicing(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.put("/d.jsonl", PAYLOAD)
    server.script = ["drop"]
    with pytest.raises(DownloadError):
        fetch_url(url, tmp_path, retries=0, known_suffixes=sources.KNOWN_SUFFIXES)
    changed = PAYLOAD.replace(b"Say", b"SAY")
    server.put("/d.jsonl", changed)  # new ETag: If-Range no longer matches, server sends 200
    assert fetch_url(url, tmp_path, known_suffixes=sources.KNOWN_SUFFIXES).read_bytes() == changed


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
    path = fetch_url(url, tmp_path, backoff=0.05, known_suffixes=sources.KNOWN_SUFFIXES)
    assert time.monotonic() - start >= 0.05 + 0.1  # two sleeps, doubling
    assert path.read_bytes() == b"instruction,output\na,b\n"
    assert len(server.requests) == 3


def test_persistent_503_gives_up(server: FileServer, tmp_path: Path) -> None:
    url = server.put("/d.csv", b"x\n")
    server.script = ["503"] * 10
    with pytest.raises(DownloadError, match="giving up after 3 failed attempts.*HTTP 503"):
        fetch_url(url, tmp_path, retries=2, backoff=0.01, known_suffixes=sources.KNOWN_SUFFIXES)
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
