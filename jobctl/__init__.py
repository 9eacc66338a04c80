"""jobctl: a file-backed job database for shell scripts and CI pipelines that
fan work out into child jobs, with live progress.

    from jobctl import Jobctl
"""

from jobctl.api import Jobctl
from jobctl.model import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    STATUSES,
    Conflict,
    DatabaseUnusable,
    JobctlError,
    NotFound,
    UsageError,
)

# The version, said only here: pyproject.toml reads it (setuptools' `attr`), and
# `jobctl --version` prints it without asking importlib.metadata (~40 ms a start).
__version__ = "0.1.0"
# What `pip install` calls jobctl (pyproject.toml's name): `jobctl` on the
# package index is another project's. The command and the import stay `jobctl`.
DISTRIBUTION = "jobctl-db"
__all__ = [
    "Jobctl",
    "JobctlError",
    "UsageError",
    "NotFound",
    "Conflict",
    "DatabaseUnusable",
    "STATUSES",
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "__version__",
    "DISTRIBUTION",
]
