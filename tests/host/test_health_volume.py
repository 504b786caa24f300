"""The health check against a volume built by the project's own `setup` (single and btrfs
backends on loop devices: this kernel has no device-mapper or md), reading the record setup
leaves in /var/lib/slurm-scratch/volume.json; and `[health] repair = yes`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slurm_scratch import layout
from slurm_scratch.health import drain
from lab.fake_slurm import FakeSlurm
from lab.kernel import is_mounted, mkfs, umount

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
RECORD = Path("/var/lib/slurm-scratch/volume.json")
NODE = "n1"


class Volume:
    def __init__(self, tmp_path: Path, devices: list[str], backend: str, filesystem: str, health_conf: str = "") -> None:
        self.mount_point = str(tmp_path / "scratch")
        self.slurm = FakeSlurm(tmp_path / "slurm")
        self.config = self.slurm.tool_config(
            tmp_path / "slurm-scratch.conf",
            f"mount_point = {self.mount_point}\ndevices = {' '.join(devices)}\nbackend = {backend}\n"
            f"filesystem = {filesystem}\ncommand_timeout = 120\n", health_conf)

    def setup(self) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "SLURM_SCRATCH_CONF": str(self.config)}
        result = subprocess.run([sys.executable, "-m", "slurm_scratch", "setup"], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert RECORD.exists() and is_mounted(self.mount_point)

    def healthcheck(self) -> subprocess.CompletedProcess:
        env = {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(self.config)}
        return subprocess.run([str(REPO / "hooks" / "healthcheck")], env=env, capture_output=True, text=True, timeout=120, cwd="/")

    def reason(self) -> str:
        return self.slurm.state()[1]

    def unmount(self) -> None:
        while is_mounted(self.mount_point):
            umount(self.mount_point)


@pytest.fixture(autouse=True)
def fresh_node_state():
    """Each test starts as a node just booted: no volume record, nothing remembered."""

    def clear() -> None:
        for path in (str(RECORD), drain.STATE_FILE, drain.HOOK_FILE, layout.PROBE_STUCK, layout.VOLUME_RECORD_CACHE):
            Path(path).unlink(missing_ok=True)

    clear()
    yield
    clear()


def test_single_volume_from_setup_then_another_filesystem_mounted_in_its_place(tmp_path, loops) -> None:
    disk, stranger = loops.device(256), loops.device(256)
    volume = Volume(tmp_path, [disk], "single", "ext4")
    volume.setup()
    healthy = volume.healthcheck()
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert f"ext4 on {disk}" in healthy.stdout
    assert Path(layout.VOLUME_RECORD_CACHE).exists()  # later checks read the record without JSON
    assert volume.healthcheck().returncode == 0
    volume.unmount()
    mkfs(stranger, "ext4")
    subprocess.run(["mount", stranger, volume.mount_point], check=True)
    wrong = volume.healthcheck()
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[0] == f"{volume.mount_point} mounted from {stranger}, expected {disk}"
    assert volume.reason().startswith(f"scratch: {volume.mount_point} mounted from {stranger}")


def test_btrfs_volume_counts_its_disks(tmp_path, loops) -> None:
    disks = [loops.device(256), loops.device(256)]
    volume = Volume(tmp_path, disks, "btrfs", "btrfs")
    volume.setup()
    result = volume.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "btrfs on 2 disks" in result.stdout


def test_repair_yes_mounts_the_volume_again(tmp_path, loops) -> None:
    disk = loops.device(256)
    volume = Volume(tmp_path, [disk], "single", "ext4", health_conf="repair = yes")
    volume.setup()
    assert volume.healthcheck().returncode == 0
    volume.unmount()
    result = volume.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert is_mounted(volume.mount_point)
    assert "repairing" in result.stderr and volume.reason() == ""


def test_repair_no_only_reports(tmp_path, loops) -> None:
    disk = loops.device(256)
    volume = Volume(tmp_path, [disk], "single", "ext4")
    volume.setup()
    volume.unmount()
    result = volume.healthcheck()
    assert result.returncode == 1 and not is_mounted(volume.mount_point)
    assert volume.reason().startswith(f"scratch: {volume.mount_point} not mounted")
