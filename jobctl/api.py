"""The Python API: `Jobctl`, the one façade over a jobctl database. The CLI is
a thin layer over this class; workers written in Python use it directly:

    from jobctl import Jobctl
    jc = Jobctl("jobs.db")
    parent = jc.create("News Crawler")
    kids = jc.spawn(parent, count=3)
    jc.set_status([kids[0]], "running")

Its two sides live in their own rooms: the write side (`jobctl.write`: the
unit of work, the transaction envelope, every mutation) and the read side
(`jobctl.queries`: every query, and `feed()`, the one event feed of
`jobctl.feed`); `verify` is `jobctl.verify`'s. The store is private to them:
nothing above the façade names it (tests/test_layout.py checks).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from jobctl.store.base import Store

from jobctl.model import DatabaseUnusable
from jobctl.queries import Reads
from jobctl.store import open_store, resolve_db_path
from jobctl.write import Writes


class Jobctl(Writes, Reads):
    """A jobctl database. Thread-unsafe; open one per process or thread."""

    def __init__(
        self, db: str | os.PathLike | Store | None = None, *, busy_timeout: float | None = None, create: bool = True
    ):
        """Open the database `db` (a SQLite path or a PostgreSQL URL; see
        resolve_db_path), or use a Store already open (`jobctl.store.open_store`).
        With `create=False`, a database that does not exist yet is refused
        (DatabaseUnusable) instead of created."""
        if hasattr(db, "write") and hasattr(db, "events"):  # a Store already open (open_store, or a test's)
            self._store: Store = db  # type: ignore[assignment]
            self.path = self.name = self._store.name
            return
        self.path = resolve_db_path(db)
        if create and db is None and not os.environ.get("JOBCTL_DB"):
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            except OSError as exc:
                raise DatabaseUnusable(f"cannot create {os.path.dirname(self.path)}: {exc.strerror}") from None
        self._store = open_store(self.path, busy_timeout=busy_timeout, create=create)
        self.name = self._store.name  # for people: a URL's password is masked

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Jobctl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify(self) -> list[str]:
        """Differences between the events and the jobs table, between the kept
        child counts and a real count, between a parent's status derived last and
        what its children's real counts give, and the store's own integrity check
        (SQLite's). [] is clean."""
        from jobctl.verify import verify

        return verify(self._store)
