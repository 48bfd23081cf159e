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
versioned set directories with an atomic ``latest`` (names and layout:
:mod:`~packft.dataset.store_layout`; history, pruning and cleanup:
:mod:`~packft.dataset.store_retention`; cross-process lock: :mod:`~packft.dataset.store_lock`)
behind :mod:`~packft.dataset.publish_gate`.
"""

from packft.core.lazy import lazy_getattr

# Names are imported on first use (PEP 562): checking a set on
# disk (packft.dataset.integrity, .stats) does not pay for the writer, the store and pyarrow.
_LAZY = {
    "SFT_KEYS": "indexed",
    "IndexedDataset": "indexed",
    "open_sft_dataset": "indexed",
    "sft_prefix": "indexed",
    "VerifiedDataset": "integrity",
    "check_seal": "integrity",
    "open_verified": "integrity",
    "plan_path": "integrity",
    "seal": "integrity",
    "sidecar_path": "integrity",
    "unseal": "integrity",
    "GateVerdict": "publish_gate",
    "PublishGate": "publish_gate",
    "PublishRefused": "publish_gate",
    "DatasetStats": "stats",
    "RowStats": "stats",
    "write_sft_dataset": "rows",
    "PublishResult": "store",
    "current_version": "store",
    "diff_versions": "store",
    "publish": "store",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


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
