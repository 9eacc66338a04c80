"""Opening a store: a `postgresql://` (or `postgres://`) URL is a PostgreSQL
database, anything else a SQLite file. The backend modules are imported only
when used, so the SQLite hot path never pays for a PostgreSQL driver."""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from jobctl.store.base import Store

URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(db: str) -> bool:
    return db.startswith(URL_SCHEMES)


def masked(db: str) -> str:
    """`db` for people: a URL's password replaced by ***."""
    if not is_url(db):
        return db
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def open_store(db: str, *, busy_timeout: float | None = None, create: bool = True) -> Store:
    """The store at `db` (a PostgreSQL URL or a SQLite path), created and migrated as needed."""
    if is_url(db):
        from jobctl.store.postgres import PostgresStore

        return PostgresStore.open(db, create=create)
    from jobctl.store.sqlite import SqliteStore

    return SqliteStore.open(db, busy_timeout=busy_timeout, create=create)
