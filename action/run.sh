#!/usr/bin/env bash
# The shell of the jobctl GitHub Action (action.yml): installs the jobctl-db
# distribution into a virtualenv of its own (its `jobctl` on the job's PATH for
# the later steps too), then runs `jobctl COMMAND JOB [ARGS...]` and exits with
# its code.
#
# Inputs, as environment variables (action.yml passes each one explicitly):
#   INPUT_COMMAND  watch (the default), report, wait, progress, status get, ...: a command
#                  taking the job (its words split at white space)
#   INPUT_JOB      the job's id (required)
#   INPUT_REPORT   watch: --report FORMAT when it ends (markdown goes to the step
#                  summary); report: --format FORMAT
#   INPUT_ARGS     more arguments, split at white space (no quoting)
#   INPUT_DB       the database, as JOBCTL_DB (empty: the JOBCTL_DB already set)
#   INPUT_VERSION  the jobctl-db version to install (empty: the newest)
#   INPUT_EXTRAS   extras, comma-separated: postgres, web (empty: postgres for a
#                  postgresql:// database, else none)
#   INPUT_PYTHON   the interpreter the virtualenv is made from (3.11 or newer)
#   INPUT_INSTALL  false: use the jobctl already on PATH
# and GitHub's RUNNER_TEMP, GITHUB_PATH, GITHUB_OUTPUT and GITHUB_STEP_SUMMARY,
# each optional: tests/test_packaging.py runs this script locally.
set -euo pipefail

fail() {
    echo "jobctl action: $*" >&2
    exit 2
}

command=${INPUT_COMMAND:-watch}
job=${INPUT_JOB:-}
report=${INPUT_REPORT:-}
[[ -n $job ]] || fail "the input 'job' is required"
[[ -z ${INPUT_DB:-} ]] || export JOBCTL_DB=$INPUT_DB

read -ra words <<<"$command"
cmd=(jobctl "${words[@]}" "$job")
[[ $command != watch ]] || cmd+=(--exit-status)
if [[ -n $report ]]; then
    case $command in
        watch) cmd+=(--report "$report") ;;
        report) cmd+=(--format "$report") ;;
        *) fail "the input 'report' goes with the commands watch and report, not $command" ;;
    esac
fi
read -ra args <<<"${INPUT_ARGS:-}"
cmd+=("${args[@]}")

if [[ ${INPUT_INSTALL:-true} != false ]]; then
    python=${INPUT_PYTHON:-python3}
    extras=${INPUT_EXTRAS:-}
    version=${INPUT_VERSION:-}
    [[ -n $extras || ! ${JOBCTL_DB:-} =~ ^postgres(ql)?:// ]] || extras=postgres
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        fail "jobctl needs Python 3.11 or newer, $python is $("$python" -V 2>&1) (actions/setup-python can provide one)"
    home=${RUNNER_TEMP:-$(mktemp -d)}
    venv=$home/jobctl-venv
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    echo "jobctl action: installing jobctl-db${extras:+[$extras]}${version:+==$version} into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "jobctl-db${extras:+[$extras]}${version:+==$version}"
    # only `jobctl` goes on PATH, not the virtualenv's python and pip
    mkdir -p "$home/jobctl-bin"
    ln -sf "$venv/bin/jobctl" "$home/jobctl-bin/jobctl"
    PATH=$home/jobctl-bin:$PATH
    [[ -z ${GITHUB_PATH:-} ]] || echo "$home/jobctl-bin" >>"$GITHUB_PATH"
fi

echo "jobctl action: ${cmd[*]}" >&2
code=0
"${cmd[@]}" || code=$?
[[ -z ${GITHUB_OUTPUT:-} ]] || echo "exit-code=$code" >>"$GITHUB_OUTPUT"
exit "$code"
