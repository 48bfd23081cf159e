"""Prefect tasks: thin wrappers, each calling one packft function (see ``flows/`` for the DAGs).

Importing this package first sets the Prefect/MLflow environment defaults (``tasks._env``).
"""

from tasks import _env  # noqa: F401  (must run before prefect is imported)
