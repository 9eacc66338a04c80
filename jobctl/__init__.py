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

__version__ = "0.1.0"
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
]
