"""One of the concurrent writers of the `concurrent_writers` benchmark, through
jobctl's Python API: N status-change transactions over its own children.

    python bench/api_writer.py DB START N IDS
"""

import sys
import time

from jobctl import Jobctl

db, start, n, ids = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
with Jobctl(db) as jc:
    state = {i: jc.status(i) for i in ids}
    time.sleep(max(0.0, start - time.time()))
    for k in range(n):
        job = ids[k % len(ids)]
        new = "pending" if state[job] == "running" else "running"
        jc.set_status([job], new, force=True)
        state[job] = new
print(time.time())
