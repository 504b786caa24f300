"""[jobs] quota and its keys, the Slurm answer the Prolog reads with quota = request, and what
setup's plan makes of a quota (mkfs features, mount options, the quota step)."""

from __future__ import annotations

import pytest

from slurm_scratch.config import parse_config
from slurm_scratch.errors import ConfigError
from slurm_scratch.jobs import quota
from slurm_scratch.volume.devices import Candidate, Discovery, Disk
from slurm_scratch.volume.observe import Observed
from slurm_scratch.volume.plan import plan

G, M = 1 << 30, 1 << 20


def jobs(text: str):
    return parse_config("[jobs]\n" + text, "q.conf")


@pytest.mark.parametrize("value, parsed", [
    ("off", ("off", 0)), ("request", ("request", 0)), ("50G", ("bytes", 50 * G)), ("512M", ("bytes", 512 * M)),
    ("2T", ("bytes", 2 << 40)), ("25%", ("percent", 25.0)), ("0.5%", ("percent", 0.5)),
])
def test_quota_values(value, parsed) -> None:
    assert jobs(f"quota = {value}\n").jobs.quota == parsed


@pytest.mark.parametrize("key, value, says", [
    ("quota", "lots", "must be off, request, or a size such as 512M"),
    ("quota", "0%", "above 0 and at most 100"),
    ("quota", "101%", "above 0 and at most 100"),
    ("quota", "12Q", "a size such as 512M"),
    ("quota_default", "request", "a size such as 512M"),
    ("quota_project_ids", "5", "a range of ids"),
    ("quota_project_ids", "9-3", "ascending ids"),
    ("quota_project_ids", "0-10", "ascending ids"),
    ("quota_project_ids", "1-4294967295", "ascending ids"),
])
def test_bad_quota_values_name_file_section_and_key(key, value, says) -> None:
    with pytest.raises(ConfigError) as caught:
        jobs(f"{key} = {value}\n")
    assert f"q.conf:2: [jobs] {key} = {value!r}: " in str(caught.value) and says in str(caught.value)


def test_a_quota_closes_the_mount_point_to_users() -> None:
    assert parse_config("", "").volume.mount_mode == 0o1777 and not parse_config("", "").volume.quotas
    on = jobs("quota = 10G\n")
    assert on.volume.mount_mode == 0o755 and on.volume.quotas
    with pytest.raises(ConfigError) as caught:
        parse_config("[volume]\nmount_mode = 1777\n[jobs]\nquota = 10G\n", "q.conf")
    assert "[volume] mount_mode = 1777 with [jobs] quota" in str(caught.value)
    assert parse_config("[volume]\nmount_mode = 0711\n[jobs]\nquota = 10G\n", "q.conf").volume.mount_mode == 0o711


@pytest.mark.parametrize("answer, expected", [
    ("0", 0),
    ("500M", 500 * M),
    ("10G", 10 * G),
    ("1.50T", int(1.5 * (1 << 40))),
    ("2048", 2048 * M),
    ("N/A", None),
    ("lots", None),
    ("MinTmpDiskNode=10T", None),  # squeue gives values only; Key=Value text is never read
])
def test_min_tmp_disk_from_squeue(answer, expected) -> None:
    assert quota.parse_min_tmp_disk(answer) == expected


def test_the_mark_names_the_job() -> None:
    mark = quota.mark_value(42, "subvolume=300").decode()
    assert quota.marked_for(mark, 42) == {"job": "42", "subvolume": "300"}
    assert quota.marked_for(mark, 4) is None and quota.marked_for("", 42) is None


def _one_disk() -> Discovery:
    disk = Disk(path="/dev/nvme1n1", name="nvme1n1", devnum="259:1", model="x", serial="S1", size_bytes=10**12)
    return Discovery("aws", (Candidate(disk, None, ours=False, wipe=False),), ())


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs"])
def test_setup_plans_quota_support_only_when_a_quota_is_on(fstype) -> None:
    backend = "btrfs" if fstype == "btrfs" else "single"
    text = f"[volume]\nbackend = {backend}\nfilesystem = {fstype}\n"
    off = plan(parse_config(text, "q.conf").volume, _one_disk(), Observed(mount=None, recorded=None))
    on = plan(parse_config(text + "[jobs]\nquota = 20%\n", "q.conf").volume, _one_disk(), Observed(mount=None, recorded=None))
    off_lines, on_lines = [s.text for s in off.steps], [s.text for s in on.steps]
    assert not any("quota" in line for line in off_lines) and "chmod 1777 /scratch" in off_lines
    assert any(step.kind == "quota" for step in on.steps) and "chmod 0755 /scratch" in on_lines
    mount = next(line for line in on_lines if line.startswith("mount "))
    mkfs = next(line for line in on_lines if line.startswith("mkfs"))
    assert ("prjquota" in mount) == (fstype != "btrfs")
    assert ("quota,project" in mkfs) == (fstype == "ext4")


@pytest.mark.parametrize("answer, expected", [
    ("gres:tmpdisk:100", 100),  # Slurm 22.05
    ("gres/tmpdisk:100", 100),  # later releases
    ("gres:gpu:2,gres:tmpdisk:nvme:40", 40),  # with a type
    ("gres:gpu:2", None),
    ("N/A", None),
])
def test_gres_count_from_squeue(answer, expected) -> None:
    assert quota.parse_gres_count(answer, "tmpdisk") == expected


def test_quota_gres_key() -> None:
    assert jobs("").jobs.quota_gres == ("", 0)
    assert jobs("quota_gres = tmpdisk:1G\n").jobs.quota_gres == ("tmpdisk", G)
    for bad in ("tmpdisk", "tmpdisk:5%", ":1G", "tmp disk:1G"):
        with pytest.raises(ConfigError) as caught:
            jobs(f"quota_gres = {bad}\n")
        assert "[jobs] quota_gres" in str(caught.value)
