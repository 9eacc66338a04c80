#!/usr/bin/env bash
# CI, after the tests: jobctl as users get it. Builds the sdist and the wheel
# (`python -m build`: the wheel is built from the sdist), checks them
# (`twine check --strict`) and what they carry, installs the wheel with the web
# extra into a fresh virtualenv outside the checkout and, from outside it, runs
# create, spawn, status set, watch --exit-status and serve (/api/health, the page
# and its assets); then the GitHub Action's script (action/run.sh) installs the
# same wheel by its distribution name and watches a job with a markdown report;
# last, a few of the sdist's own tests run from the unpacked sdist.
# Only package registries are used (pip).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
server=
cleanup() {
    if [[ -n $server ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
step() { echo "smoke: $* (${SECONDS}s)"; }
die() {
    echo "smoke: FAILED: $*" >&2
    exit 1
}
case $work/ in "$root"/*) die "$work is inside the checkout $root" ;; esac
quiet() {  # run "$@" with its output shown only when it fails
    "$@" >"$work/out.log" 2>&1 || { cat "$work/out.log" >&2; die "$*"; }
}

step "build tools (build, twine) into $work/tools"
quiet "$python" -m venv "$work/tools"
# twine 6.1: the first to read Metadata-Version 2.4 (License-Expression)
quiet "$work/tools/bin/python" -m pip install --disable-pip-version-check "build>=1.2" "twine>=6.1"

step "python -m build"
quiet "$work/tools/bin/python" -m build --outdir "$work/dist" "$root"
sdists=("$work"/dist/*.tar.gz)
wheels=("$work"/dist/*.whl)
[[ ${#sdists[@]} -eq 1 && -f ${sdists[0]} && ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] ||
    die "expected one sdist and one wheel, got: $(ls "$work/dist")"
sdist=${sdists[0]} wheel=${wheels[0]}
version=$(cd "$root" && "$python" -c 'import ast, pathlib
for node in ast.parse(pathlib.Path("jobctl/__init__.py").read_text()).body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__":
        print(node.value.value)')
[[ $(basename "$wheel") == jobctl_db-"$version"-py3-none-any.whl ]] || die "wheel named $(basename "$wheel")"
echo "smoke: built $(basename "$sdist") and $(basename "$wheel")"

step "twine check --strict"
quiet "$work/tools/bin/twine" check --strict "$sdist" "$wheel"

step "what the sdist and the wheel carry"
top=jobctl_db-$version
tar -tzf "$sdist" | sed "s|^$top/||" | sort >"$work/sdist.txt"
# the tests and everything they read, as tracked by git, plus the project's files
# (safe.directory: CI's clone may belong to another user than the one running this)
git -c safe.directory="$root" -C "$root" ls-files jobctl tests fixtures bench docs action >"$work/tracked.txt"
grep -qx tests/conftest.py "$work/tracked.txt" || die "git ls-files in $root listed no tests"
printf '%s\n' README.md CHANGELOG.md LICENSE pyproject.toml action.yml PKG-INFO | cat - "$work/tracked.txt" |
    sort >"$work/want.txt"
missing=$(comm -23 "$work/want.txt" "$work/sdist.txt")
[[ -z $missing ]] || die "the sdist lacks: $missing"
! grep -E '(^|/)(__pycache__|\.venv|\.git)(/|$)' "$work/sdist.txt" || die "the sdist carries the above"
"$python" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}' | sort >"$work/wheel.txt"
for f in jobctl/fastpath.py jobctl/store/postgres.py jobctl/serve/page.html jobctl/serve/app.js \
    jobctl/serve/app.css jobctl/serve/favicon.svg "$top.dist-info/licenses/LICENSE"; do
    grep -qx "$f" "$work/wheel.txt" || die "the wheel lacks $f"
done
! grep -E '^(tests|fixtures|bench)/' "$work/wheel.txt" || die "the wheel carries the above"
unzip_meta=$("$python" -c 'import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]).decode())' \
    "$wheel" "$top.dist-info/METADATA")
for line in "Name: jobctl-db" "Version: $version" "License-Expression: MIT" "Requires-Python: >=3.11" \
    "Provides-Extra: postgres" "Provides-Extra: web"; do
    grep -qxF "$line" <<<"$unzip_meta" || die "the wheel's METADATA has no line '$line'"
done

step "a fresh virtualenv outside the checkout: pip install the wheel with the web extra"
quiet "$python" -m venv "$work/venv"
quiet "$work/venv/bin/python" -m pip install --disable-pip-version-check "$wheel[web]"
cd "$work"
unset PYTHONPATH
export JOBCTL_DB=$work/smoke.db
jobctl=$work/venv/bin/jobctl
where=$("$work/venv/bin/python" -c 'import jobctl; print(jobctl.__file__)')
[[ $where == "$work/venv/"* ]] || die "jobctl imported from $where, not the virtualenv"

step "jobctl --version"
"$jobctl" --version | tee "$work/version.txt"
grep -qx "jobctl $version" "$work/version.txt" || die "--version does not say jobctl $version"
grep -qE '^web: starlette [0-9.]+, uvicorn [0-9.]+$' "$work/version.txt" || die "--version does not show the web extra"
grep -qx "postgres: missing (pip install 'jobctl-db\[postgres\]')" "$work/version.txt" ||
    die "--version does not say the postgres extra is missing"

step "create, spawn, status set, watch --exit-status"
P=$("$jobctl" create "smoke")
"$jobctl" spawn "$P" --count 2 >/dev/null
"$jobctl" status set "$P.1" running
"$jobctl" status set "$P.1" completed -m "fine"
"$jobctl" status set "$P.2" completed
"$jobctl" watch "$P" --exit-status --timeout 60 || die "watch --exit-status of a completed job: exit $?"
F=$("$jobctl" create "smoke that fails")
"$jobctl" spawn "$F" --count 1 >/dev/null
"$jobctl" status set "$F.1" failed -m "broken"
code=0
"$jobctl" watch "$F" --exit-status --timeout 60 || code=$?
[[ $code -eq 1 ]] || die "watch --exit-status of a failed job: exit $code, not 1"

step "jobctl serve: /api/health, the page and its assets"
port=$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$jobctl" serve --port "$port" 2>"$work/serve.log" &
server=$!
"$work/venv/bin/python" - "$port" "$version" "$root/jobctl/serve" "$server" "$P" <<'EOF' || { cat "$work/serve.log" >&2; die "serve"; }
import json, os, sys, time, urllib.request
from pathlib import Path

port, version, assets, pid, job = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 30
while True:  # until the server answers (bounded)
    try:
        health = json.load(urllib.request.urlopen(base + "/api/health", timeout=5))
        break
    except OSError:
        os.kill(pid, 0)  # the server died: stop now (ProcessLookupError)
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
assert health["ok"] is True and health["version"] == version, health
page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
for name in ("app.js", "app.css", "favicon.svg"):
    assert f"/static/{name}" in page, f"the page does not load {name}"
    served = urllib.request.urlopen(f"{base}/static/{name}", timeout=5).read()
    assert served == (assets / name).read_bytes(), f"/static/{name} is not the checkout's {name}"
row = json.load(urllib.request.urlopen(f"{base}/api/jobs/{job}", timeout=5))
assert (row["name"], row["status"]) == ("smoke", "completed"), row
print(f"smoke: serve answered /api/health (version {version}), /, app.js, app.css, favicon.svg, /api/jobs/{job}")
EOF
kill "$server"
wait "$server" 2>/dev/null || true
server=

step "the GitHub Action's script: installs jobctl-db==$version by name, watches with a markdown report"
mkdir "$work/runner"
: >"$work/summary.md"
: >"$work/github_path"
: >"$work/github_output"
INPUT_JOB=$P INPUT_REPORT=markdown INPUT_VERSION=$version INPUT_PYTHON=$python \
    RUNNER_TEMP=$work/runner GITHUB_STEP_SUMMARY=$work/summary.md GITHUB_PATH=$work/github_path \
    GITHUB_OUTPUT=$work/github_output PIP_FIND_LINKS=$work/dist \
    quiet bash "$root/action/run.sh"
[[ $(cat "$work/github_path") == "$work/runner/jobctl-bin" ]] || die "GITHUB_PATH: $(cat "$work/github_path")"
[[ $(ls "$work/runner/jobctl-bin") == jobctl ]] || die "the action's PATH folder holds $(ls "$work/runner/jobctl-bin")"
[[ $(PATH=$work/runner/jobctl-bin:$PATH jobctl --version | head -1) == "jobctl $version" ]] || die "the action's jobctl"
grep -q "smoke" "$work/summary.md" || die "the step summary has no report: $(cat "$work/summary.md")"
grep -qx "exit-code=0" "$work/github_output" || die "GITHUB_OUTPUT: $(cat "$work/github_output")"

step "the sdist's own tests (the unit tier of a few files), against the installed wheel"
tar -xzf "$sdist" -C "$work"
quiet "$work/venv/bin/python" -m pip install --disable-pip-version-check "$wheel[test]"
(cd "$work/$top" && "$work/venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/test_packaging.py tests/test_model.py tests/test_progress.py) >"$work/out.log" 2>&1 ||
    { cat "$work/out.log" >&2; die "the sdist's tests"; }
echo "smoke: the sdist's tests pass"

step "passed"
