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

from packft.tokenize.batch import TokenizeStats
from packft.tokenize.counts import TokenCounts
from packft.tokenize.encode import tokenize_file
from packft.tokenize.options import (
    SHARD_FORMAT,
    TokenizeOptions,
    shard_key,
    tokenizer_fingerprint,
)
from packft.tokenize.shards import (
    ShardError,
    ShardReader,
    TokenShards,
    read_lengths,
    read_stats,
    tokenizer_ids,
)
from packft.tokenize.templates import TEMPLATE_NAMES, ChatTemplate, get_template, load_tokenizer

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
