"""The guardian of `jobctl run` (run as a script, standard library only): it reads
from a pipe which commands are running, `+PGID JOBCTL_JOB_ID=ID` when one
starts and `-PGID ...` when it ends, and when the pipe closes with commands
still running (jobctl run died, even by SIGKILL) it kills their process groups
and, where /proc exists, every process whose environment carries their job id
(those that left the group).

    python3 -I -S guardian.py FD
"""

import os
import signal
import sys


def main(fd: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # a Ctrl-C or a SIGTERM to the whole step is jobctl's to handle
    running: dict[int, bytes] = {}
    pending = b""
    while data := os.read(fd, 4096):
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            head, _, marker = line.partition(b" ")
            if head[:1] == b"+":
                running[int(head[1:])] = marker
            else:
                running.pop(int(head[1:]), None)
    for group in running:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    if running and os.path.isdir("/proc"):
        markers = set(running.values())
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    found = markers.intersection(f.read().split(b"\0"))
                if found:
                    os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    main(int(sys.argv[1]))
