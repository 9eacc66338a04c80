"""Database URLs: which strings name a PostgreSQL database, and how a URL is
shown to people (its credentials masked). Imported by the store package and
its PostgreSQL backend alike (no loop between them)."""

from __future__ import annotations

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
