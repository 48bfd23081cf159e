"""Stage 1, ingest: whatever ``--input`` names in, normalised conversations and counted rejects out.

In: a file, a directory, an ``http(s)://`` URL or ``hf://datasets/OWNER/NAME`` in Alpaca,
ShareGPT or OpenAI-messages layout, as parquet, arrow, csv, json, jsonl or txt (text possibly
compressed). Out: :class:`~packft.ingest.records.Conversation` s, one per valid record, and a
:class:`~packft.ingest.rejects.RejectLog` line per invalid one (row number, reason, preview);
the quality gate then refuses input with too few valid records.

Modules, in the order a record passes them: :mod:`~packft.ingest.sources` (resolve the input,
:mod:`~packft.ingest.download` for URLs and the Hub), :mod:`~packft.ingest.sniff` (the bytes
match the name), :mod:`~packft.ingest.readers` / :mod:`~packft.ingest.json_text` (stream
:class:`~packft.ingest.stream.RecordBatch` es within :mod:`~packft.ingest.limits`),
:mod:`~packft.ingest.formats` (validate and normalise with :mod:`~packft.ingest.keymap` and
:mod:`~packft.ingest.repairs` into :mod:`~packft.ingest.records`, rejects to
:mod:`~packft.ingest.rejects`), :mod:`~packft.ingest.quality` (the gate).
"""

from packft.ingest.download import DownloadError
from packft.ingest.formats import iter_conversations, validate_file
from packft.ingest.keymap import HANDLER_FORMATS, get_key_map
from packft.ingest.limits import DEFAULT_MAX_RECORD_BYTES, RecordLimits
from packft.ingest.quality import InputCounts, QualityGateError, check_quality
from packft.ingest.readers import FORMATS, detect_format, iter_record_batches
from packft.ingest.records import Conversation, Message
from packft.ingest.rejects import InvalidRecordError, RejectLog, ValidationSummary
from packft.ingest.repairs import REPAIRS, parse_repairs
from packft.ingest.sources import resolve_input
from packft.ingest.stream import BadRow, RecordBatch, SourceError

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "FORMATS",
    "HANDLER_FORMATS",
    "REPAIRS",
    "BadRow",
    "Conversation",
    "DownloadError",
    "InputCounts",
    "InvalidRecordError",
    "Message",
    "QualityGateError",
    "RecordBatch",
    "RecordLimits",
    "RejectLog",
    "SourceError",
    "ValidationSummary",
    "check_quality",
    "detect_format",
    "get_key_map",
    "iter_conversations",
    "iter_record_batches",
    "parse_repairs",
    "resolve_input",
    "validate_file",
]
