"""`jobctl run`: run a command as a tracked job.

Three forms share one piece of code, `Execution` (one command as one job):

- `run JOB -- CMD...` runs CMD as the pending job JOB; `run --parent P -- CMD...`
  creates a child of P first;
- `run --parent P --each -- CMD {}` reads inputs from stdin, spawns one child per
  line in one transaction and runs up to --jobs of them at once, showing the
  parent as `watch` does;
- `run --claim P -- CMD` is a worker: it claims P's pending children one by
  one (on SQLite or, across machines, PostgreSQL) and runs CMD for each.

An Execution sets the job running with the command line as the message, runs
CMD directly (no shell) in a process group of its own with the job's identity
in its environment, copies its output through line by line and stores it as
log lines (batched, capped), sends heartbeats, notices a cancel from elsewhere
through the store's wake-ups, enforces --timeout, and ends the job with the
outcome (status, exit code, duration) in one transaction.

Three rooms: `process` (the command's process tree: start, output, stop,
outcome; no database), `attempt` (one job's attempts and retries, recorded),
`pool` (the fan-out: --each and --claim).
"""

from jobctl.run.attempt import Execution, Options, backoff, check_command, empty_output_file, run_one
from jobctl.run.pool import Pool, run_claim, run_each
from jobctl.run.process import Outcome, StopReason

__all__ = [
    "Execution",
    "Options",
    "Outcome",
    "Pool",
    "StopReason",
    "backoff",
    "check_command",
    "empty_output_file",
    "run_claim",
    "run_each",
    "run_one",
]
