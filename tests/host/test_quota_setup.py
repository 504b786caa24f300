"""`slurm-scratch setup` with [jobs] quota on, for real on loop devices: btrfs gets simple quotas
(and refuses full qgroups, with which a nested subvolume escapes), the mount point is root's 0755;
ext4 is made with -O quota,project and mounted with prjquota, and on a kernel that cannot do
project quotas (this one) setup says so clearly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from lab.kernel import is_mounted, sh, umount

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
STATE_FILE = Path("/var/lib/slurm-scratch/volume.json")


@pytest.fixture
def node(tmp_path, loops):
    STATE_FILE.unlink(missing_ok=True)
    disk = loops.device(512)
    mount_point = tmp_path / "scratch"
    conf = tmp_path / "slurm-scratch.conf"

    def setup(fstype: str, quota: str, *args: str) -> subprocess.CompletedProcess:
        backend = "btrfs" if fstype == "btrfs" else "single"
        conf.write_text(f"[volume]\nmount_point = {mount_point}\ndevices = {disk}\nbackend = {backend}\nfilesystem = {fstype}\n"
                        f"command_timeout = 120\n[jobs]\nquota = {quota}\n")
        conf.chmod(0o644)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "SLURM_SCRATCH_CONF": str(conf), "LC_ALL": "C"}
        return subprocess.run([sys.executable, "-m", "slurm_scratch", "setup", *args], env=env, capture_output=True, text=True, timeout=300)

    setup.mount_point = mount_point
    yield setup
    while is_mounted(str(mount_point)):
        umount(str(mount_point))
    STATE_FILE.unlink(missing_ok=True)


def btrfs_quota_mode(mount_point: Path) -> str:
    uuid = json.loads(STATE_FILE.read_text())["fs_uuid"]
    path = Path(f"/sys/fs/btrfs/{uuid}/qgroups/mode")
    return path.read_text().strip() if path.exists() else ""


def test_btrfs_setup_enables_simple_quotas_and_closes_the_mount_point(node) -> None:
    built = node("btrfs", "10%")
    assert built.returncode == 0, built.stderr
    assert "enabled btrfs simple quotas" in built.stderr
    assert btrfs_quota_mode(node.mount_point) == "squota"
    st = os.lstat(node.mount_point)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)  # no one writes outside a job directory
    again = node("btrfs", "10%")
    assert again.returncode == 0 and "already enabled" in again.stderr


def test_an_adopted_btrfs_with_full_qgroups_is_refused_with_a_clear_message(node) -> None:
    assert node("btrfs", "off").returncode == 0
    assert stat.S_IMODE(os.lstat(node.mount_point).st_mode) == 0o1777  # quota off: as before
    sh("btrfs", "quota", "enable", str(node.mount_point))
    refused = node("btrfs", "64M")
    assert refused.returncode == 1
    assert "full qgroups are enabled" in refused.stderr and "escapes its quota" in refused.stderr


def test_ext4_is_made_for_project_quotas_and_a_kernel_without_them_is_named(node) -> None:
    dry = node("ext4", "64M", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "sparse_super2,^resize_inode,quota,project" in dry.stdout and "noatime,nodiratime,prjquota" in dry.stdout
    built = node("ext4", "64M")  # this kernel has no quota formats: ext4 with quota,project does not mount
    assert built.returncode == 1
    assert "[jobs] quota needs project quotas" in built.stderr and "set [jobs] quota = off" in built.stderr
