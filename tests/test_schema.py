"""The two backends' schemas are written separately (sqlite-utils migrations in
jobctl/store/sqlite.py, a list of statements in jobctl/store/postgres.py): this
compares what each ends with, so that a column added to one and forgotten in
the other fails here rather than in a user's database."""

from jobctl import Jobctl

# Each backend's own bookkeeping, not jobctl's data: sqlite-utils' record of
# the migrations run (PostgreSQL keeps the schema version in `meta`).
OWN = {"sqlite": {"_sqlite_migrations"}, "postgres": {"meta"}}
# Columns one dialect needs for what the other has built in: PostgreSQL's jobs
# carry their insertion order (`seq`), which SQLite's rowid gives.
DIALECT_COLUMNS = {"postgres": {("jobs", "seq")}}


def sqlite_schema(store) -> dict[str, set[str]]:
    tables = [r["name"] for r in store._query("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {
        t: {c["name"] for c in store._query(f"PRAGMA table_info({t})")}
        for t in tables
        if not t.startswith("sqlite_") and t not in OWN["sqlite"]
    }


def postgres_schema(store) -> dict[str, set[str]]:
    rows = store._query(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s",
        (store.schema,),
    )
    out: dict[str, set[str]] = {}
    for r in rows:
        if (
            r["table_name"] not in OWN["postgres"]
            and (r["table_name"], r["column_name"]) not in DIALECT_COLUMNS["postgres"]
        ):
            out.setdefault(r["table_name"], set()).add(r["column_name"])
    return out


def test_both_backends_end_with_the_same_tables_and_columns(tmp_path, pg_url):
    with Jobctl(tmp_path / "jobs.db") as lite, Jobctl(pg_url) as pg:
        on_sqlite, on_postgres = sqlite_schema(lite._store), postgres_schema(pg._store)
    assert {"jobs", "events", "logs"} <= set(on_sqlite)  # (the comparison below compares something)
    differ = {
        t: (
            sorted(on_sqlite.get(t, set()) - on_postgres.get(t, set())),
            sorted(on_postgres.get(t, set()) - on_sqlite.get(t, set())),
        )
        for t in set(on_sqlite) | set(on_postgres)
        if on_sqlite.get(t) != on_postgres.get(t)
    }
    assert differ == {}, "table: (only on SQLite, only on PostgreSQL)"
