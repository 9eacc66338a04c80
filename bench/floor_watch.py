"""The floor for watch latency: a bare loop polling PRAGMA data_version every
10 ms on one connection, printing the newest event id when it changes."""

import sqlite3
import sys
import time

conn = sqlite3.connect(sys.argv[1], isolation_level=None)
version = conn.execute("PRAGMA data_version").fetchone()[0]
print("ready", flush=True)
while True:
    time.sleep(0.01)
    v = conn.execute("PRAGMA data_version").fetchone()[0]
    if v != version:
        version = v
        print(conn.execute("SELECT max(id) FROM events").fetchone()[0], flush=True)
