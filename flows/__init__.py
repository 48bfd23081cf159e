"""Prefect flows: ``pack-dataset``, ``finetune``, ``pipeline`` and the ``demo`` driver.

Importing this package first sets the Prefect/MLflow environment defaults (``tasks._env``), so
run flows as modules (``python -m flows.pack_dataset ...``) or through the deployments.
"""

from tasks import _env  # noqa: F401  (must run before prefect is imported)
