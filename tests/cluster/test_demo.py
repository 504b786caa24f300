"""`make demo`, the README's main-job command, tells its whole story and cleans up after itself."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.cluster]


def _loops_backed_by(prefix: str) -> list[str]:
    found = []
    for name in os.listdir("/sys/block"):
        try:
            backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(prefix):
            found.append(name)
    return found


def test_demo_tells_the_story_and_leaves_nothing_behind() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    had_dev_log = os.path.exists("/dev/log")  # then the tool logs to that syslog, not the demo's file
    demo = subprocess.run([sys.executable, str(REPO / "demo" / "demo.py")], capture_output=True, text=True,
                          timeout=300, cwd="/", stdin=subprocess.DEVNULL)
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    assert "backend:    btrfs (2 disk(s))" in out  # the striped volume, built by setup at boot
    assert "SCRATCH=/scratch/job_1 TMPDIR=/scratch/job_1" in out  # the job saw its directory
    assert "wrote 256M and 20000 files" in out
    assert "/scratch/job_1 is gone and the trash is empty" in out
    assert "n2 drain scratch: /scratch not mounted" in out
    assert "ran on n1 in /scratch/job_2" in out
    assert "n2 idle" in out.split("resumes the node it drained", 1)[1]
    kept = out.split("A job that fails (exit 3) keeps its directory", 1)[1]  # issue 11: kept for its user only
    assert "sstest1: cat /scratch/.kept/sstest1/job_3/debug.log -> step 7 diverged" in kept
    assert "sstest2: cat /scratch/.kept/sstest1/job_3/debug.log -> cat: /scratch/.kept/sstest1/job_3/debug.log: Permission denied" in kept
    assert "kept:       1 in /scratch/.kept" in kept
    quota = out.split("Per-job quotas", 1)[1]  # the job past its --tmp stops there, its neighbour does not
    assert "Disk quota exceeded" in quota and "n1: wrote 150 MiB into /scratch/job_" in quota
    assert "n1 is IDLE" in quota
    if not had_dev_log:  # the demo collected the tool's syslog lines and narrated them
        assert "mkfs.btrfs" in out and "-d raid0" in out
        assert "epilog retired /scratch/job_1" in out
        assert "resumed n2" in out
        logs = Path(out.split("Logs: ", 1)[1].split("/ ", 1)[0])
        assert "reaper deleted" in (logs / "slurm-scratch.log").read_text()
    assert os.path.exists("/dev/log") == had_dev_log
    assert not _loops_backed_by("/var/tmp/slurm-scratch-cluster-")
