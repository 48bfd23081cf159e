"""The ground floor every stage stands on; it imports nothing else from packft.

In: nothing. Out: the error types and one-line messages of the CLI (:mod:`~packft.core.errors`),
crash-safe writes (:mod:`~packft.core.atomic`: temp file + fsync + rename, journaled multi-file
stages), file digests (:mod:`~packft.core.digest`), fault-injection points for tests
(:mod:`~packft.core.faults`), the pydantic <-> argparse/YAML bridge (:mod:`~packft.core.config`)
and shared constants (:mod:`~packft.core.constants`).
"""

from packft.core.atomic import Stage, atomic_write_bytes, atomic_writer, fsync_dir, sweep
from packft.core.config import add_model_arguments, load_config, model_from_args, read_yaml
from packft.core.constants import IGNORE_INDEX
from packft.core.digest import file_sha256
from packft.core.errors import ConfigError, IntegrityError, PackftError, UsageError, one_line
from packft.core.faults import inject

__all__ = [
    "IGNORE_INDEX",
    "ConfigError",
    "IntegrityError",
    "PackftError",
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
