"""The ground floor every stage stands on; it imports nothing else from packft.

In: nothing. Out: the error types and one-line messages of the CLI (:mod:`~packft.core.errors`),
crash-safe writes (:mod:`~packft.core.atomic`: temp file + fsync + rename, journaled multi-file
stages, built from :mod:`~packft.core.durable`, :mod:`~packft.core.writers` and
:mod:`~packft.core.journal`), file digests (:mod:`~packft.core.digest`), fault-injection points
for tests (:mod:`~packft.core.faults`), the pydantic <-> argparse/YAML bridge
(:mod:`~packft.core.config`), the base of every typed step result (:mod:`~packft.core.results`)
and shared constants (:mod:`~packft.core.constants`).
"""

from packft.core.lazy import lazy_getattr

# Names are imported on first use (PEP 562), so `packft --help` and the error path of the CLI
# do not pay for pydantic (packft.core.config) or the journaled writer: ~0.5 s of start-up.
_LAZY = {
    "Stage": "atomic", "atomic_write_bytes": "atomic", "atomic_writer": "atomic",
    "fsync_dir": "durable", "sweep": "writers",
    "add_model_arguments": "config", "load_config": "config", "model_from_args": "config",
    "read_yaml": "config",
    "IGNORE_INDEX": "constants",
    "Result": "results",
    "file_sha256": "digest",
    "ConfigError": "errors", "IntegrityError": "errors", "PackftError": "errors",
    "UsageError": "errors", "one_line": "errors",
    "inject": "faults",
}  # fmt: skip


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = [
    "IGNORE_INDEX",
    "ConfigError",
    "IntegrityError",
    "PackftError",
    "Result",
    "Stage",
    "UsageError",
    "add_model_arguments",
    "atomic_write_bytes",
    "atomic_writer",
    "file_sha256",
    "fsync_dir",
    "inject",
    "load_config",
    "model_from_args",
    "one_line",
    "read_yaml",
    "sweep",
]
