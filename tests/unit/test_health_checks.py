"""The checks' logic on given inputs (mount records, statvfs numbers, lvs output, an md sysfs tree),
and the timed child process every filesystem probe runs in."""

from __future__ import annotations

import os
import time

import pytest

from slurm_scratch import config
from slurm_scratch.health import checks, recorded
from slurm_scratch.health.findings import bad, ok, problems_of
from slurm_scratch.mounts import Mount
from slurm_scratch.volume import lvm
from slurm_scratch.volume.state import VolumeRecord


def _config(text: str = "") -> config.Config:
    return config.parse_config("[volume]\nbackend = single\n" + text, "test.conf")


def mount(source: str = "/dev/loop7", fstype: str = "ext4", options: tuple = ("rw", "noatime"), major_minor: str = "7:7") -> Mount:
    return Mount(mount_point="/scratch", source=source, fstype=fstype, options=options, major_minor=major_minor)


def test_not_mounted() -> None:
    finding = checks.check_mount(_config(), None, None)
    assert (finding.healthy, finding.text) == (False, "/scratch not mounted")


def test_filesystem_type_from_config_or_record() -> None:
    assert checks.check_mount(_config(), mount(), None).healthy
    assert checks.check_mount(_config(), mount(fstype="xfs"), None).text == "/scratch is xfs, expected ext4"
    assert checks.check_mount(_config(), mount(fstype="xfs"), VolumeRecord(filesystem="xfs")).healthy


def test_device_from_record() -> None:
    record = VolumeRecord(backend="single", device="/dev/loop7", filesystem="ext4")
    assert checks.check_mount(_config(), mount(), record).healthy
    wrong = checks.check_mount(_config(), mount(source="/dev/loop3", major_minor="7:3"), record)
    assert (wrong.healthy, wrong.text) == (False, "/scratch mounted from /dev/loop3, expected /dev/loop7")


def test_device_implied_by_config_without_record() -> None:
    lvm = config.parse_config("[volume]\nbackend = lvm\n", "test.conf")
    finding = checks.check_mount(lvm, mount(source="/dev/loop3"), None)
    assert finding.text == "/scratch mounted from /dev/loop3, expected /dev/vg.01/lv_ephemeral"
    assert recorded.expected_volume(_config(), None) == ("single", None, None)


def test_read_only() -> None:
    assert checks.check_writable(_config(), mount(options=("ro", "noatime"))).text == "/scratch read-only"
    assert checks.check_writable(_config(), mount()).healthy


def test_space_and_inodes() -> None:
    findings = checks.space_findings(_config(), "1000 20 500 400")  # 2% blocks free, 80% inodes free
    assert [(f.healthy, f.text) for f in findings] == [
        (False, "/scratch 98% full (min free 3%)"),
        (True, "/scratch inodes 20% used (min free 3%)"),
    ]
    findings = checks.space_findings(_config("[health]\nmin_free_inodes_percent = 90\n"), "1000 500 500 400")
    assert [f.healthy for f in findings] == [True, False]
    assert len(checks.space_findings(_config(), "1000 500 0 0")) == 1  # btrfs: no inode limit


def test_ranking_names_the_most_specific_problem() -> None:
    findings = [
        bad("errors", "/scratch has 1 ext4 errors"),
        bad("probe", "/scratch probe failed: write: No space left on device"),
        bad("statvfs", "/scratch 100% full (min free 3%)"),
        ok("mount", "fine"),
    ]
    assert problems_of(findings)[0].text == "/scratch 100% full (min free 3%)"
    findings.append(bad("hung", "probe timed out after 10 s"))
    assert problems_of(findings)[0].text == "probe timed out after 10 s"
    findings.append(bad("writable", "/scratch read-only"))
    assert problems_of(findings)[0].text == "/scratch read-only"
    assert problems_of([ok("mount", "fine")]) == []


LV = "vg.01/lv_ephemeral"


@pytest.mark.parametrize(
    "output, members, healthy, text",
    [
        ("-wi-ao---- 4 0", ["a", "b", "c", "d"], True, "LV vg.01/lv_ephemeral active, 4 disks"),
        ("-wi-ao---p 4 1", None, False, "LV vg.01/lv_ephemeral partial (a disk is missing)"),
        ("-wi------- 4 0", None, False, "LV vg.01/lv_ephemeral not active"),
        # `lvs --readonly` (LVM 2.03.16, bookworm) cannot tell the state: not a finding by itself
        ("-wi-XX---- 2 0", ["a", "b"], True, "LV vg.01/lv_ephemeral active, 2 disks"),
        ("-wi-XX---p 2 1", ["a", "b"], False, "LV vg.01/lv_ephemeral partial (a disk is missing)"),
        ("-wi-ao---- 3 0", ["a", "b", "c", "d"], False, "LV vg.01/lv_ephemeral has 3 disks, 4 recorded"),
        ("", None, False, "LV vg.01/lv_ephemeral not found"),
    ],
)
def test_lvs(output, members, healthy, text) -> None:
    """What `lvs --readonly -o lv_attr,pv_count,vg_missing_pv_count VG/LV` prints, through volume/lvm.py's parser."""
    if output:
        attr, pv_count, missing = output.split()
        output = f"  LVM2_LV_ATTR={attr} LVM2_PV_COUNT={pv_count} LVM2_VG_MISSING_PV_COUNT={missing}\n"
    rows = lvm.parse_report(output)
    (finding,) = checks.lv_findings(rows[0] if rows else None, LV, members)
    assert (finding.healthy, finding.text) == (healthy, text)


def _md(tmp_path, state: str, degraded: str | None, disks: int, raid_disks: int):
    md = tmp_path / "md127" / "md"
    md.mkdir(parents=True)
    (md / "array_state").write_text(state + "\n")
    (md / "raid_disks").write_text(f"{raid_disks}\n")
    if degraded is not None:
        (md / "degraded").write_text(degraded + "\n")
    for index in range(disks):
        (md / f"dev-nvme{index}n1").mkdir()
    return str(tmp_path / "md127")


@pytest.mark.parametrize(
    "state, degraded, disks, raid_disks, members, healthy, text",
    [
        ("clean", None, 4, 4, 4, True, "md array md127 clean, 4 disks"),
        ("active", "0", 2, 2, None, True, "md array md127 active, 2 disks"),
        ("inactive", None, 3, 4, 4, False, "md array md127 inactive"),
        ("clean", "1", 3, 4, 4, False, "md array md127 degraded (1 disks missing)"),
        ("clean", None, 3, 4, 4, False, "md array md127 has 3 disks, 4 recorded"),
        ("clean", None, 3, 4, None, False, "md array md127 has 3 of 4 disks"),
    ],
)
def test_md(tmp_path, state, degraded, disks, raid_disks, members, healthy, text) -> None:
    sysfs = _md(tmp_path, state, degraded, disks, raid_disks)
    recorded = [f"/dev/nvme{index}n1" for index in range(members)] if members else None
    (finding,) = checks.check_md(sysfs, "md127", recorded)
    assert (finding.healthy, finding.text) == (healthy, text)


def test_md_missing(tmp_path) -> None:
    (finding,) = checks.check_md(str(tmp_path / "md9"), "md9", None)
    assert finding.text == "md array md9 not found"


def _btrfs(tmp_path, fsid: str, disks: list[str]) -> str:
    devices = tmp_path / "fs" / "btrfs" / fsid / "devices"
    devices.mkdir(parents=True)
    for disk in disks:
        (devices / disk).symlink_to("/nonexistent")
    return str(tmp_path)


def test_btrfs_members(tmp_path) -> None:
    sysfs = _btrfs(tmp_path, "1234-abcd", ["loop3", "loop4"])
    btrfs = mount(source="/dev/loop3", fstype="btrfs")
    (finding,) = checks.check_btrfs(_config(), btrfs, "1234-abcd", ["/dev/loop3", "/dev/loop4"], sysfs)
    assert finding.healthy and finding.text == "btrfs on 2 disks"
    (finding,) = checks.check_btrfs(_config(), btrfs, "", ["/dev/loop3", "/dev/loop4", "/dev/loop5"], sysfs)
    assert finding.text == "btrfs on /scratch has 2 disks, 3 recorded"
    (finding,) = checks.check_btrfs(_config(), mount(fstype="btrfs", options=("rw", "degraded")), "1234-abcd", None, sysfs)
    assert finding.text == "btrfs on /scratch mounted degraded"
