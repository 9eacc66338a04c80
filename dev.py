#!/usr/bin/env python3
"""Set-up and entry points for people and CI, needing only Python >= 3.11.

    python3 dev.py demo [demo options]   # the live demo
    python3 dev.py test [pytest options] # the whole test suite
    python3 dev.py test --fast [options] # the unit tier only: pytest -m "not slow"
    python3 dev.py lint                  # ruff (lint + format check) over jobctl/ tests/ bench/, mypy over jobctl/
    python3 dev.py bench [options]       # the benchmarks
    python3 dev.py jobctl ARGS...        # jobctl from the project's virtualenv

The first call makes .venv/ and installs the project with its test and lint
extras; later calls reinstall only when pyproject.toml has changed. The tests
start a throwaway PostgreSQL server of their own when Debian's `postgresql`
package is installed (see tests/throwaway_pg.py); without it, the PostgreSQL
half is skipped with one line saying so (in CI it fails instead).
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".jobctl-installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"jobctl needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pyproject = ROOT / "pyproject.toml"
    if not STAMP.exists() or STAMP.stat().st_mtime < pyproject.stat().st_mtime:
        print("dev.py: installing jobctl and its test and lint dependencies into .venv", file=sys.stderr)
        subprocess.run([str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        # compat: a plain path entry instead of an import hook that costs
                        # ~15 ms at every start of every jobctl process
                        "-e", f"{ROOT}[test,lint]", "--config-settings", "editable_mode=compat"], check=True)
        STAMP.touch()


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"demo", "test", "lint", "bench", "jobctl"}:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    what, args = sys.argv[1], sys.argv[2:]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if what == "demo":
        cmd = [str(BIN / "jobctl"), "demo", *args]
    elif what == "test":
        if "--fast" in args:  # the unit tier: everything not marked slow (no subprocess-heavy cases)
            args = ["-m", "not slow", *(a for a in args if a != "--fast")]
        cmd = [str(BIN / "python"), "-m", "pytest", *args]
    elif what == "lint":
        dirs = ["jobctl", "tests", "bench"]
        for check in (["ruff", "check", *dirs], ["ruff", "format", "--check", *dirs], ["mypy"]):
            code = subprocess.run([str(BIN / check[0]), *check[1:]], cwd=ROOT, env=env).returncode
            if code:
                print(f"dev.py: lint failed: {' '.join(check)}", file=sys.stderr)
                return code
        return 0
    elif what == "bench":
        cmd = [str(BIN / "python"), str(ROOT / "bench" / "run.py"), *args]
    else:
        cmd = [str(BIN / "jobctl"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
