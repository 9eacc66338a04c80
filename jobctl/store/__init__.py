"""Opening a store: a `postgresql://` (or `postgres://`) URL is a PostgreSQL
database, anything else a SQLite file. The backend modules are imported only
when used, so the SQLite hot path never pays for a PostgreSQL driver."""

from __future__ import annotations

import os

from jobctl.model import UsageError
from jobctl.store.urls import URL_SCHEMES, is_url, masked

__all__ = ["URL_SCHEMES", "display_name", "is_url", "masked", "open_store", "resolve_db_path"]

TYPE_CHECKING = False

if TYPE_CHECKING:
    from jobctl.store.base import Store


def open_store(db: str, *, busy_timeout: float | None = None, create: bool = True) -> Store:
    """The store at `db` (a PostgreSQL URL or a SQLite path), created and migrated as needed."""
    if is_url(db):
        from jobctl.store.postgres import PostgresStore

        return PostgresStore.open(db, create=create)
    from jobctl.store.sqlite import SqliteStore

    return SqliteStore.open(db, busy_timeout=busy_timeout, create=create)


def default_db_path() -> str:
    """$XDG_DATA_HOME/jobctl/jobctl.db, i.e. ~/.local/share/jobctl/jobctl.db by default."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "jobctl", "jobctl.db")


def resolve_db_path(db: str | os.PathLike | None = None) -> str:
    """--db, else $JOBCTL_DB (unless empty), else the default location: a
    SQLite path or a PostgreSQL URL."""
    if db is not None:
        if not os.fspath(db):
            raise UsageError("--db must not be empty")
        return os.fspath(db)
    return os.environ.get("JOBCTL_DB") or default_db_path()


def display_name(db: str) -> str:
    """The database as shown to people: the path, or the URL with its password masked."""
    return masked(db)
