"""Quota use and kept directories in the metrics and in `status` (issue 12): a btrfs volume on a loop
device with simple quotas on (as `setup` leaves it), jobs started and ended by the installed hooks
as slurmd runs them, the installed healthcheck writing the metrics file, Debian's node_exporter
serving it (test_metrics_exporter.Exporter), Slurm lab/fake_slurm.py's. What a job writes shows up
in status's quota section (per job directory) and in the metrics' aggregates (no job ids); a
failed job's kept directory shows in the metrics' count and leaves the quota aggregates."""

from __future__ import annotations

import json
import subprocess

import pytest
from lab.fake_slurm import FakeSlurm
from lab.jobs import NODE, scratch_volume

from slurm_scratch.volume import apply

from test_metrics_exporter import Exporter, fresh_node, value  # noqa: F401 (fresh_node: autouse, a node just booted)
from test_quota_btrfs import write_as

pytestmark = pytest.mark.root
pytest.importorskip("prometheus_client")

MIB = 1 << 20
FAILED = {"SLURM_JOB_EXIT_CODE": "256", "SLURM_JOB_EXIT_CODE2": "1:0", "SLURM_JOB_DERIVED_EC": "256"}


@pytest.fixture
def node(loops, tmp_path, installed):
    with scratch_volume(loops, "btrfs", size_mb=1024, mount_mode=0o755) as scratch:
        assert "enabled btrfs simple quotas" in apply.quotas(str(scratch.mount_point))
        slurm = FakeSlurm(tmp_path / "slurm")
        textfiles = scratch.base / "textfile"
        textfiles.mkdir()
        scratch.configure({"volume": {"backend": "single", "filesystem": "btrfs"}, "jobs": {"quota": "64M", "keep_failed": "1h"},
                           "health": {"metrics_dir": str(textfiles)},
                           "slurm": {"scontrol": str(slurm.dir / "scontrol"), "squeue": str(slurm.dir / "squeue")}})
        exporter = Exporter(textfiles)
        try:
            yield scratch, installed / "libexec" / "slurm-scratch", exporter
        finally:
            exporter.stop()


def run_hook(scratch, hooks, name: str, job_id: int, user: str = "sstest1", **overrides: str) -> None:
    context = "prolog_slurmd" if name == "prolog" else "epilog_slurmd"
    result = scratch.hook(name, scratch.job_env(job_id, user, context, **overrides), hooks_dir=hooks)
    assert result.returncode == 0, result.stderr


def healthcheck(scratch, hooks) -> None:
    """A health check once what jobs wrote is committed (btrfs counts a qgroup's bytes when its
    transaction commits: every 30 s by default)."""
    subprocess.run(["sync", "-f", str(scratch.mount_point)], check=True, timeout=60)
    result = scratch.hook("healthcheck", {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(scratch.config)}, hooks_dir=hooks)
    assert result.returncode == 0, result.stderr


def quota_figures(families: dict) -> tuple:
    return tuple(value(families, f"slurm_scratch_{name}") for name in
                 ("quota_jobs", "quota_limit_bytes", "quota_used_bytes", "quota_jobs_over_90_percent", "kept_dirs"))


def test_job_writes_show_in_status_and_the_metrics_and_a_kept_dir_in_the_count(node) -> None:
    scratch, hooks, exporter = node
    run_hook(scratch, hooks, "prolog", 501)
    run_hook(scratch, hooks, "prolog", 502, user="sstest2")
    assert write_as("sstest1", scratch.job_dir(501) / "data", 24).returncode == 0
    assert write_as("sstest2", scratch.job_dir(502, user="sstest2") / "data", 8).returncode == 0

    healthcheck(scratch, hooks)
    found = exporter.scrape()
    jobs, limit, used, near, kept = quota_figures(found)
    assert (jobs, limit, near, kept) == (2, 128 * MIB, 0, 0)
    assert 32 * MIB <= used < 34 * MIB
    assert not any(sample.labels for name in ("slurm_scratch_quota_used_bytes", "slurm_scratch_kept_dirs") for sample in found[name].samples)

    report = json.loads(scratch.cli("status", "--json").stdout)
    dirs = {entry["job_id"]: entry for entry in report["quota"]["dirs"]}
    assert set(dirs) == {501, 502} and report["quota"]["error"] == ""
    assert dirs[501]["path"] == str(scratch.job_dir(501)) and dirs[501]["limit_bytes"] == 64 * MIB
    assert 24 * MIB <= dirs[501]["used_bytes"] < 25 * MIB and 8 * MIB <= dirs[502]["used_bytes"] < 9 * MIB
    text = scratch.cli("status").stdout
    assert "quota:      2 job directories with a quota" in text, text
    assert f"  {scratch.job_dir(501)}  job 501  limit 64.0 MiB  used 24.0 MiB (38%)" in text, text

    assert write_as("sstest1", scratch.job_dir(501) / "more", 34).returncode == 0  # 58 of 64 MiB: over 90%
    healthcheck(scratch, hooks)
    assert quota_figures(exporter.scrape())[3] == 1

    run_hook(scratch, hooks, "epilog", 501, **FAILED)  # failed: kept, its subvolume and qgroup with it
    run_hook(scratch, hooks, "epilog", 502, user="sstest2")
    healthcheck(scratch, hooks)
    jobs, limit, used, near, kept = quota_figures(exporter.scrape())
    assert (jobs, limit, used, near, kept) == (0, 0, 0, 0, 1)
    report = json.loads(scratch.cli("status", "--json").stdout)
    assert report["quota"]["dirs"] == [] and [entry["job_id"] for entry in report["kept"]["dirs"]] == [501]
    assert "kept:       1 in" in scratch.cli("status").stdout
    scratch.wait_trash_empty()


def test_quota_off_and_keeping_off_add_no_figures(node) -> None:
    scratch, hooks, exporter = node
    scratch.configure({"volume": {"backend": "single", "filesystem": "btrfs"}, "health": {"metrics_dir": str(scratch.base / "textfile")},
                       "slurm": {"scontrol": str(scratch.base / "none"), "squeue": str(scratch.base / "none")}})
    run_hook(scratch, hooks, "prolog", 511)
    healthcheck(scratch, hooks)
    found = exporter.scrape()
    assert not [name for name in found if name.startswith(("slurm_scratch_quota_", "slurm_scratch_kept_"))]
    assert "quota" not in json.loads(scratch.cli("status", "--json").stdout)
    run_hook(scratch, hooks, "epilog", 511)
    scratch.wait_trash_empty()
