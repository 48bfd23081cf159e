"""Stage 2, tokenize: conversations in, one tokenized Arrow shard per input file out.

In: :class:`~packft.ingest.records.Conversation` s (read through :mod:`packft.ingest`), a
Hugging Face tokenizer and a chat template name (MindSpeed's ``--prompt-type``). Out: a shard of
``input_ids``/``labels`` rows (``-100`` on untrained tokens) with a header (template, tokenizer
fingerprint, input sha256, options, pad/eos ids) and the run's counts in a trailing batch.

Modules: :mod:`~packft.tokenize.templates` (+ the data table
:mod:`~packft.tokenize.template_table`) render a conversation into (source, target) pieces per
turn; :mod:`~packft.tokenize.truncation` holds MindSpeed's and packft's marker-keeping cuts;
:mod:`~packft.tokenize.batch` turns one batch into ids and labels (one Rust encode call);
:mod:`~packft.tokenize.counts` names the sample counts a run keeps (``TokenCounts``);
:mod:`~packft.tokenize.encode` streams batches through it, in one process or several;
:mod:`~packft.tokenize.shards` writes and reads the shard format;
:mod:`~packft.tokenize.options` is the one definition of "same tokenize work" (the options, the
tokenizer fingerprint and the shard key that the CLI's shard cache and the Prefect task share).
"""

from packft.core.lazy import lazy_getattr

# Names are imported on first use (PEP 562): importing
# packft.tokenize.options (the shard key of a cached re-run) does not pay for pyarrow and the encoder.
_LAZY = {
    "TokenizeStats": "batch",
    "TokenCounts": "counts",
    "tokenize_file": "encode",
    "SHARD_FORMAT": "options",
    "TokenizeOptions": "options",
    "shard_key": "options",
    "tokenizer_fingerprint": "options",
    "ShardError": "shards",
    "ShardReader": "shards",
    "TokenShards": "shards",
    "read_lengths": "shards",
    "read_stats": "shards",
    "tokenizer_ids": "shards",
    "TEMPLATE_NAMES": "templates",
    "ChatTemplate": "templates",
    "get_template": "templates",
    "load_tokenizer": "templates",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "SHARD_FORMAT",
    "TEMPLATE_NAMES",
    "ChatTemplate",
    "ShardError",
    "ShardReader",
    "TokenShards",
    "TokenizeOptions",
    "TokenCounts",
    "TokenizeStats",
    "get_template",
    "load_tokenizer",
    "read_lengths",
    "read_stats",
    "shard_key",
    "tokenize_file",
    "tokenizer_fingerprint",
    "tokenizer_ids",
]
