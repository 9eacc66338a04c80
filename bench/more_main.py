#!/usr/bin/env python3
"""Runs bench/more.py's benchmarks on their own (until run.py registers them),
as run.py does: default sizes, or --tiny; one `name: key=value, ...` line per
benchmark, then a table; results to bench/results/more_latest.json.

    .venv/bin/python bench/more_main.py                  # everything, default sizes (the million: a while)
    .venv/bin/python bench/more_main.py --tiny           # smoke sizes (well under 20 s)
    .venv/bin/python bench/more_main.py --only call_claim --only run_one
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import more  # noqa: E402
from run import machine  # noqa: E402


def _fmt_ms(ms):
    if ms is None:
        return ""
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms" if ms >= 1 else f"{ms:.3f} ms"


def table(results):
    rows = [("benchmark", "jobctl", "baseline", "ratio", "bar", "met", "peak RSS MB (jobctl / baseline)")]
    for name, r in results.items():
        if "error" in r:
            rows.append((name, "error", "", "", "", "", r["error"][:60]))
            continue
        ours = _fmt_ms(r.get("jobctl_median_ms")) if "jobctl_median_ms" in r else str(r.get("jobctl", ""))
        base = _fmt_ms(r.get("baseline_median_ms"))
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        rss = ""
        if "jobctl_peak_rss_mb" in r:
            rss = f"{r['jobctl_peak_rss_mb']:.0f}"
            if "baseline_peak_rss_mb" in r:
                rss += f" / {r['baseline_peak_rss_mb']:.0f}"
        met = {True: "yes", False: "NO", None: "n/a"}[r.get("met")]
        rows.append((name, ours, base, ratio, r.get("bar", ""), met, rss))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(more.BENCHMARKS_MORE), help="run only these")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke run")
    for name, (default, tiny) in more.SIZES.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {default:,} (--tiny: {tiny:,})"
        )
    parser.add_argument("--keep-going", action="store_true", help="report a failing benchmark and go on")
    parser.add_argument("--out", default=str(HERE / "results" / "more_latest.json"))
    args = parser.parse_args(argv)
    # Measure what users run: bytecode cached (as run.py does).
    import os

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import compileall

    import jobctl

    compileall.compile_dir(str(Path(jobctl.__file__).parent), quiet=1)
    results = {"machine": machine(), "args": vars(args), "benchmarks": {}}
    started_all = time.perf_counter()
    for name in dict.fromkeys(args.only or more.BENCHMARKS_MORE):
        with tempfile.TemporaryDirectory(prefix=f"jobctl-bench-{name}-") as tmp:
            started = time.perf_counter()
            try:
                result = more.BENCHMARKS_MORE[name](args, Path(tmp))
            except Exception as exc:  # noqa: BLE001
                if not args.keep_going:
                    raise
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["seconds"] = round(time.perf_counter() - started, 1)
        results["benchmarks"][name] = result
        print(
            f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
            flush=True,
        )
    results["seconds"] = round(time.perf_counter() - started_all, 1)
    print()
    print(table(results["benchmarks"]))
    print(f"\n{results['seconds']} s in all")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
