"""`jobctl serve`: the database, SQLite or PostgreSQL, served read-only to
browsers and programs (a JSON API, a live Server-Sent Events stream and one
HTML page). An optional extra: `pip install 'jobctl-db[web]'` (Starlette and
uvicorn), imported only when the server runs.

- `jobctl.serve.app`: `main()`, the command's body (checks its options, runs uvicorn).
- `jobctl.serve.web`: the Starlette routes, the stream and the guard.
- `jobctl.serve.stream`: events into stream messages, replay from a cursor, and
  the one database watcher (no web framework).
- `page.html`, `app.js`, `app.css`: the page, served as package data.
"""
