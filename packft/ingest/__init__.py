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

from packft.core.lazy import lazy_getattr

# Names are imported on first use (PEP 562): the CLI's argument parsing (packft.preprocess.config
# needs only packft.ingest.limits) does not pay for the readers, pyarrow and the formats.
_LAZY = {
    "DownloadError": "download",
    "iter_conversations": "formats",
    "validate_file": "formats",
    "HANDLER_FORMATS": "keymap",
    "get_key_map": "keymap",
    "DEFAULT_MAX_RECORD_BYTES": "limits",
    "RecordLimits": "limits",
    "InputCounts": "quality",
    "QualityGateError": "quality",
    "check_quality": "quality",
    "FORMATS": "readers",
    "detect_format": "readers",
    "iter_record_batches": "readers",
    "Conversation": "records",
    "Message": "records",
    "InvalidRecordError": "rejects",
    "RejectLog": "rejects",
    "ValidationSummary": "rejects",
    "REPAIRS": "repairs",
    "parse_repairs": "repairs",
    "resolve_input": "sources",
    "BadRow": "stream",
    "RecordBatch": "stream",
    "SourceError": "stream",
}


__getattr__ = lazy_getattr(__name__, _LAZY)

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
