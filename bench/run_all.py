#!/usr/bin/python3
"""Run every bench/bench_*.py in turn (sorted by name), each printing its own lines, then a summary.

Each benchmark measures its baseline in the same run and prints its figures with a target and
PASS or MISS. Exit status: 1 if a benchmark failed to run (non-zero exit), else 0 — a MISS is a
finding to look into, reported in the summary, not a crash. Usage: bench/run_all.py (`make bench`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    passed = missed = 0
    crashed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            words = line.split()
            passed += words[-1:] == ["PASS"]
            missed += words[-1:] == ["MISS"]
        if process.wait() != 0:
            crashed.append(f"{script.name} (exit {process.returncode})")
        print(f"== {script.name} done in {time.monotonic() - started:.0f} s", flush=True)
    print(f"run_all: {len(scripts)} benchmarks, {passed} figures PASS, {missed} MISS" + (f"; failed to run: {', '.join(crashed)}" if crashed else ""))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
