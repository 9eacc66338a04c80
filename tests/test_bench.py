"""The benchmark harness at tiny sizes, so it cannot rot (the figures live in the README)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # subprocesses throughout: `dev.py test --fast` skips them


def test_bench_harness_runs_at_tiny_sizes(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["cpus"] >= 1
    benchmarks = report["benchmarks"]
    assert {"watch_latency", "watch_throughput", "watch_idle"} <= set(benchmarks)
    latency = benchmarks["watch_latency"]
    assert 0 < latency["jobctl_p50"] <= latency["jobctl_p99"]
    assert latency["ratio_p99"] > 0
    assert benchmarks["watch_throughput"]["events"] == 2 * 200 + 1
