"""The kept area's rules that need no volume: when a job failed (the Epilog's exit-code
variables), the duration and reclaim-threshold keys, expiry and reclaim order."""

from __future__ import annotations

import pytest

from slurm_scratch import config
from slurm_scratch.errors import ConfigError
from slurm_scratch.jobs import kept
from slurm_scratch.jobs.retire import job_failed


@pytest.mark.parametrize("environ, failed, failing, malformed", [
    ({}, False, [], []),
    ({"SLURM_JOB_EXIT_CODE": "0", "SLURM_JOB_EXIT_CODE2": "0:0", "SLURM_JOB_DERIVED_EC": "0"}, False, [], []),
    ({"SLURM_JOB_EXIT_CODE": "256", "SLURM_JOB_EXIT_CODE2": "1:0", "SLURM_JOB_DERIVED_EC": "256"}, True,
     ["SLURM_JOB_EXIT_CODE=256", "SLURM_JOB_EXIT_CODE2=1:0", "SLURM_JOB_DERIVED_EC=256"], []),
    ({"SLURM_JOB_EXIT_CODE2": "0:9"}, True, ["SLURM_JOB_EXIT_CODE2=0:9"], []),
    ({"SLURM_JOB_DERIVED_EC": "2"}, True, ["SLURM_JOB_DERIVED_EC=2"], []),
    ({"SLURM_JOB_EXIT_CODE": "0", "SLURM_JOB_EXIT_CODE2": "0"}, True, [], ["SLURM_JOB_EXIT_CODE2='0'"]),
    ({"SLURM_JOB_EXIT_CODE": ""}, True, [], ["SLURM_JOB_EXIT_CODE=''"]),
    ({"SLURM_JOB_EXIT_CODE": "-1"}, True, [], ["SLURM_JOB_EXIT_CODE='-1'"]),
    ({"SLURM_JOB_EXIT_CODE": " 0"}, True, [], ["SLURM_JOB_EXIT_CODE=' 0'"]),
    ({"SLURM_JOB_EXIT_CODE": "٣"}, True, [], ["SLURM_JOB_EXIT_CODE='٣'"]),  # a digit, but not ASCII
    ({"SLURM_JOB_EXIT_CODE2": "1:2:3"}, True, [], ["SLURM_JOB_EXIT_CODE2='1:2:3'"]),
    ({"SLURM_JOB_DERIVED_EC": "9" * 5000}, True, [], ["SLURM_JOB_DERIVED_EC='" + "9" * 32 + "'... (5000 characters)"]),
])
def test_job_failed(environ, failed, failing, malformed) -> None:
    assert job_failed(environ) == (failed, failing, malformed)


@pytest.mark.parametrize("value, seconds", [("0", 0), ("0s", 0), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1.5h", 5400), ("2H", 7200)])
def test_durations(value, seconds) -> None:
    assert config.duration(366 * 86400)(value) == seconds


@pytest.mark.parametrize("value", ["", "24", "h", "-1h", "1w", "nanh", "infd", "367d", "1 h", "0x"])
def test_bad_durations(value) -> None:
    with pytest.raises(ValueError, match="duration|between|whitespace"):
        config.duration(366 * 86400)(value)


def test_keep_failed_is_read_and_reclaim_must_lie_above_the_drain_thresholds() -> None:
    loaded = config.parse_config("[jobs]\nkeep_failed = 24h\nkeep_reclaim_free_percent = 12\n", "/etc/x.conf")
    assert (loaded.jobs.keep_failed, loaded.jobs.keep_reclaim_free_percent) == (86400, 12)
    assert config.parse_config("", "").jobs.keep_failed == 0
    with pytest.raises(ConfigError) as raised:
        config.parse_config("[jobs]\nkeep_failed = 1d\nkeep_reclaim_free_percent = 5\n[health]\nmin_free_inodes_percent = 5\n", "/etc/x.conf")
    (problem,) = raised.value.problems
    assert problem.startswith("/etc/x.conf:3: [jobs] keep_reclaim_free_percent = 5: must be above [health] min_free_percent and min_free_inodes_percent (5)")
    with pytest.raises(ConfigError, match=r"\[jobs\] keep_failed = '24': must be 0 or a duration"):
        config.parse_config("[jobs]\nkeep_failed = 24\n", "/etc/x.conf")
    with pytest.raises(ConfigError, match=r"/etc/x.conf:2: \[jobs\] keep_failed = 3600 s needs \[health\] housekeeping_seconds above 0"):
        config.parse_config("[jobs]\nkeep_failed = 1h\n[health]\nhousekeeping_seconds = 0\n", "/etc/x.conf")
    # Off, the threshold is not checked: a site that drains at 15% free need not touch it.
    assert config.parse_config("[health]\nmin_free_percent = 15\n", "/etc/x.conf").jobs.keep_failed == 0


@pytest.mark.parametrize("pattern", [".kept/%u/job_%j", "/scratch/.kept/job_%j", ".slurm-scratch-trash/job_%j"])
def test_job_directories_never_lie_in_the_tools_own_directories(pattern) -> None:
    with pytest.raises(ConfigError, match=r"\[jobs\] dir = '/scratch/\.[a-z-]+/.*': must not lie in \.(kept|slurm-scratch-trash), the tool's own directory"):
        config.parse_config(f"[jobs]\ndir = {pattern}\n", "/etc/x.conf")
    assert config.parse_config("[jobs]\ndir = kept/%u/job_%j\n", "").jobs.dir == "/scratch/kept/%u/job_%j"


def entry(name: str, kept_at: float | None, uid: int | None = 4201) -> kept.Kept:
    return kept.Kept(user="alice", name=name, path=f"/scratch/.kept/alice/{name}", uid=uid, kept_at=kept_at, job_id=None)


def test_due_and_reclaim_order() -> None:
    conf = config.parse_config("[jobs]\nkeep_failed = 1h\n", "")
    old, new, unrecorded, mounted, roots = entry("job_1", 1000.0), entry("job_2", 4000.0), entry("job_3", None), entry("job_4", None, None), entry("notes", None, 0)
    entries = [new, unrecorded, old, mounted, roots]
    assert kept.due(conf, entries, now=4599.0) == [unrecorded, mounted]
    assert kept.due(conf, entries, now=4600.0) == [unrecorded, old, mounted]
    assert kept.due(conf, entries, now=7600.0) == [new, unrecorded, old, mounted]
    assert kept.reclaim_order(entries) == [old, new]
    off = config.parse_config("", "")
    assert kept.due(off, [new], now=4000.0) == [new]  # turned off: what was kept goes


def test_the_epilogs_keeping_imports_nothing_heavy() -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    code = ("import sys; from slurm_scratch import cli; from slurm_scratch.jobs import jobdir, retire, kept; "
            "retire.job_failed({'SLURM_JOB_EXIT_CODE': 'x'}); kept.report_time(0); print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {str(repo)!r}); {code}"],
                                capture_output=True, text=True, check=True, timeout=60).stdout.split())
    heavy = {"argparse", "re", "dataclasses", "typing", "logging", "subprocess", "json", "signal", "ctypes", "psutil", "prometheus_client"}
    assert loaded & heavy == set()
