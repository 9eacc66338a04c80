#!/bin/sh
# bench/more.py's baseline for `jobctl run JOB -- true`: what a script does
# without `jobctl run`, the two status calls around the command.
#     sh bench/run_wrapper.sh JOBCTL DB JOB
"$1" --db "$2" status set "$3" running || exit
if /bin/true; then status=completed; else status=failed; fi
exec "$1" --db "$2" status set "$3" "$status"
