"""Stage 4, dataset: tokenized shards and a plan in, a verified Megatron/MindSpeed SFT set out.

In: :class:`~packft.tokenize.shards.TokenShards` and a :class:`~packft.pack.plan.PackPlan`.
Out: ``{prefix}_packed_{input_ids,attention_mask,labels}_document.{bin,idx}`` (Megatron's
indexed format, MindSpeed's names), the plan and the sidecar ``{prefix}.packft.json`` (config,
hashes, stats, each file's size/sha256/fingerprint), committed together; and everything that
reads such a set back.

Modules: :mod:`~packft.dataset.rows` builds the rows and writes the set through
:mod:`~packft.dataset.indexed` (the ``.bin/.idx`` format) inside one journaled stage of
:mod:`~packft.dataset.integrity` (which also verifies a set before use);
:mod:`~packft.dataset.stats` sums the counts for the sidecar and the CLI table;
:mod:`~packft.dataset.inspect` is ``packft inspect``; :mod:`~packft.dataset.store` keeps
versioned set directories with an atomic ``latest`` (cross-process lock:
:mod:`~packft.dataset.store_lock`) behind :mod:`~packft.dataset.publish_gate`.
"""

from packft.dataset.indexed import SFT_KEYS, IndexedDataset, open_sft_dataset, sft_prefix
from packft.dataset.integrity import (
    VerifiedDataset,
    check_seal,
    open_verified,
    plan_path,
    seal,
    sidecar_path,
    unseal,
)
from packft.dataset.publish_gate import GateVerdict, PublishGate, PublishRefused
from packft.dataset.rows import write_sft_dataset
from packft.dataset.stats import DatasetStats, RowStats
from packft.dataset.store import PublishResult, current_version, diff_versions, publish

__all__ = [
    "SFT_KEYS",
    "GateVerdict",
    "IndexedDataset",
    "PublishGate",
    "PublishRefused",
    "DatasetStats",
    "PublishResult",
    "RowStats",
    "VerifiedDataset",
    "check_seal",
    "current_version",
    "diff_versions",
    "open_sft_dataset",
    "open_verified",
    "plan_path",
    "publish",
    "seal",
    "sft_prefix",
    "sidecar_path",
    "unseal",
    "write_sft_dataset",
]
