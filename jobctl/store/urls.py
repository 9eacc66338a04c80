"""Database URLs: which strings name a PostgreSQL database, and how a URL is
shown to people (its credentials masked). Imported by the store package and
its PostgreSQL backend alike (no loop between them)."""

from __future__ import annotations

URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(db: str) -> bool:
    return db.startswith(URL_SCHEMES)


SECRET_PARAMS = ("password", "sslpassword")  # the query parameters of a libpq URL that are credentials


def url_parts(db: str) -> tuple[str, str | None, str, str | None]:
    """A libpq URL as libpq reads it: (scheme, user info or None, host list and path,
    query or None). The user info ends at an @ before any / (a ? in a password is
    allowed), the query at the first ? after it. Textual: a malformed URL splits too."""
    scheme, _, rest = db.partition("://")
    slash = rest.find("/")
    at = rest.find("@", 0, slash if slash >= 0 else len(rest))
    userinfo = rest[:at] if at >= 0 else None
    body, q, query = rest[at + 1 :].partition("?")
    return scheme, userinfo, body, query if q else None


def join_url(scheme: str, userinfo: str | None, body: str, query: str | None) -> str:
    return f"{scheme}://" + ("" if userinfo is None else userinfo + "@") + body + ("" if query is None else "?" + query)


def masked(db: str) -> str:
    """`db` for people: every credential a libpq URL can carry (the password of
    `user:password@`, `?password=`, `?sslpassword=`) replaced by ***."""
    if not is_url(db):
        return db
    from urllib.parse import unquote

    scheme, userinfo, body, query = url_parts(db)
    if userinfo is not None and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    elif userinfo is None and ":" in body.rpartition("@")[0]:  # not libpq's user info, but surely meant as one
        body = body.partition(":")[0] + ":***@" + body.rpartition("@")[2]
    if query is not None:
        pairs = [p.partition("=") for p in query.split("&")]
        query = "&".join(k + eq + ("***" if unquote(k).strip().lower() in SECRET_PARAMS else v) for k, eq, v in pairs)
    return join_url(scheme, userinfo, body, query)


def masked_in(text: str, db: str) -> str:
    """`text` (a driver's message, which may quote the URL or a part of it) with `db`'s credentials masked."""
    if not is_url(db):
        return text
    from urllib.parse import unquote

    text = text.replace(db, masked(db))
    scheme, userinfo, body, query = url_parts(db)
    secrets = [userinfo.partition(":")[2]] if userinfo and ":" in userinfo else []
    for k, _, v in (p.partition("=") for p in (query or "").split("&")):
        if unquote(k).strip().lower() in SECRET_PARAMS:
            secrets.append(v)
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if len(form) >= 3:  # a shorter one would mask ordinary words
                text = text.replace(form, "***")
    return text
