"""The raw-sqlite3 twin of bench/api_writer.py (see bench/baselines.py)."""

import runpy
import sys

sys.argv = [sys.argv[0], "writer", sys.argv[1], *sys.argv[2:]]
runpy.run_path(str(__import__("pathlib").Path(__file__).with_name("baselines.py")), run_name="__main__")
