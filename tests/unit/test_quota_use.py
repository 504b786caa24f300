"""Quota use and the kept area in the metrics and in `status` (jobs/quota_use.py): the kernel's
figures as read (btrfs qgroup counters in sysfs, an ext4/xfs struct if_dqblk), the child's answer,
the aggregates the metrics file carries (no job ids) and the status section's lines."""

from __future__ import annotations

import struct

import pytest

from slurm_scratch.health import status
from slurm_scratch.jobs import quota_btrfs, quota_project, quota_use
from slurm_scratch.jobs.quota_use import DirQuota

MIB = 1 << 20


def test_btrfs_figures_come_from_the_qgroup_counters_in_sysfs(tmp_path) -> None:
    group = tmp_path / "0f0e-uuid" / "qgroups" / "1_257"
    group.mkdir(parents=True)
    (group / "max_referenced").write_text("67108864\n")
    (group / "referenced").write_text("33570816\n")
    assert quota_btrfs.usage("0f0e-uuid", 257, sysfs=str(tmp_path)) == (64 * MIB, 33570816)
    assert quota_btrfs.usage("0f0e-uuid", 258, sysfs=str(tmp_path)) is None  # the qgroup is gone
    (group / "referenced").write_text("")
    assert quota_btrfs.usage("0f0e-uuid", 257, sysfs=str(tmp_path)) is None


def test_project_figures_come_from_if_dqblk() -> None:
    """struct if_dqblk as quotactl Q_GETQUOTA fills it: limits in 1 KiB blocks, use in bytes."""
    raw = struct.pack(quota_project.DQBLK, 65536, 60000, 5 * MIB + 7, 0, 0, 12, 0, 0, 0x3F)
    assert quota_project.from_dqblk(raw) == (64 * MIB, 5 * MIB + 7)
    assert struct.calcsize(quota_project.DQBLK) == 72
    assert quota_project.Q_GETQUOTA << 8 | quota_project.PRJQUOTA == 0x80000702  # QCMD(Q_GETQUOTA, PRJQUOTA)


def test_the_childs_answer_carries_any_path() -> None:
    dirs = [DirQuota(path="/scratch/a b/job_1", job_id=1, limit_bytes=64 * MIB, used_bytes=3),
            DirQuota(path="/scratch/\udcffodd\n/job_22", job_id=22, limit_bytes=0, used_bytes=0)]
    assert quota_use.decode(quota_use.encode(2, dirs)) == quota_use.Use(dirs=tuple(dirs), kept=2)
    assert quota_use.decode(quota_use.encode(0, [])) == quota_use.Use(dirs=(), kept=0)


def test_totals_are_bounded_aggregates() -> None:
    dirs = (DirQuota(path="/s/job_1", job_id=1, limit_bytes=100 * MIB, used_bytes=90 * MIB),  # at 90%: counted
            DirQuota(path="/s/job_2", job_id=2, limit_bytes=100 * MIB, used_bytes=89 * MIB),
            DirQuota(path="/s/job_3", job_id=3, limit_bytes=0, used_bytes=5 * MIB))  # no limit: never near it
    assert quota_use.totals(dirs) == (3, 200 * MIB, 184 * MIB, 1)
    assert quota_use.totals(()) == (0, 0, 0, 0)


def test_the_metrics_file_shows_kept_dirs_and_quota_aggregates_without_job_ids() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from test_metrics import sample_figures  # the metrics tests' figures (tests/unit is on sys.path)

    from slurm_scratch.health import metrics

    text = metrics.render(sample_figures(kept_dirs=2, quota=(3, 200 * MIB, 184 * MIB, 1))).decode()
    found = {family.name: family for family in text_string_to_metric_families(text)}
    values = {name: found[name].samples[0].value for name in
              ("slurm_scratch_kept_dirs", "slurm_scratch_quota_jobs", "slurm_scratch_quota_limit_bytes",
               "slurm_scratch_quota_used_bytes", "slurm_scratch_quota_jobs_over_90_percent")}
    assert values == {"slurm_scratch_kept_dirs": 2, "slurm_scratch_quota_jobs": 3, "slurm_scratch_quota_limit_bytes": 200 * MIB,
                      "slurm_scratch_quota_used_bytes": 184 * MIB, "slurm_scratch_quota_jobs_over_90_percent": 1}
    assert all(found[name].type == "gauge" and not found[name].samples[0].labels for name in values)
    unmeasured = metrics.render(sample_figures()).decode()
    assert "slurm_scratch_kept_dirs" not in unmeasured and "slurm_scratch_quota_" not in unmeasured


def test_status_lists_each_job_directorys_quota() -> None:
    render = next(lines for key, _, lines in status.SECTIONS if key == "quota")
    section = {"error": "", "dirs": [
        {"path": "/scratch/job_301", "job_id": 301, "limit_bytes": 64 * MIB, "used_bytes": 32 * MIB},
        {"path": "/scratch/job_302", "job_id": 302, "limit_bytes": 0, "used_bytes": 1024}]}
    assert render(section, 0.0) == [
        "quota:      2 job directories with a quota, 32.0 MiB used of 64.0 MiB",
        "  /scratch/job_301  job 301  limit 64.0 MiB  used 32.0 MiB (50%)",
        "  /scratch/job_302  job 302  limit none  used 1.0 KiB"]
    assert render({"error": "volume not mounted", "dirs": []}, 0.0) == ["quota:      (volume not mounted)"]
    assert render({"error": "", "dirs": []}, 0.0) == ["quota:      0 job directories with a quota, 0 B used of 0 B"]
