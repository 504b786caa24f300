"""`slurm-scratch setup` / `status` for real, on loop devices: the single and btrfs backends (this
kernel has no device-mapper or md; LVM and mdadm run in the VM tests). Loop devices have no NVMe
model, so the configs name them explicitly. Each test gets a fresh state file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from lab.kernel import is_mounted, sh, umount
from slurm_scratch import locks

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
STATE_FILE = Path("/var/lib/slurm-scratch/volume.json")
TRASH = ".slurm-scratch-trash"


@pytest.fixture(autouse=True)
def fresh_state():
    STATE_FILE.unlink(missing_ok=True)
    yield
    STATE_FILE.unlink(missing_ok=True)


class Node:
    """A config naming loop devices and a mount point under tmp_path, and the CLI to run on it."""

    def __init__(self, tmp_path: Path, devices: list[str], **volume: str) -> None:
        self.tmp_path = tmp_path
        self.mount_point = tmp_path / "scratch"
        self.conf = tmp_path / "slurm-scratch.conf"
        self.write(devices, **volume)

    def write(self, devices: list[str], **volume: str) -> None:
        keys = {"mount_point": str(self.mount_point), "devices": " ".join(devices), "command_timeout": "120", **volume}
        self.conf.write_text("[volume]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items()))
        self.conf.chmod(0o644)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "SLURM_SCRATCH_CONF": str(self.conf), "LC_ALL": "C"}
        return subprocess.run([sys.executable, "-m", "slurm_scratch", *args], env=env, capture_output=True, text=True, timeout=timeout)

    def setup(self, *args: str) -> subprocess.CompletedProcess:
        result = self.cli("setup", *args)
        return result

    def status(self) -> dict:
        result = self.cli("status", "--json")
        return json.loads(result.stdout)

    def mounts(self) -> list[list[str]]:
        with open("/proc/self/mountinfo") as stream:
            return [line.split() for line in stream if line.split()[4] == str(self.mount_point)]

    def unmount(self) -> None:
        while is_mounted(str(self.mount_point)):
            umount(str(self.mount_point))


def blkid(device: str) -> dict[str, str]:
    result = sh("blkid", "-p", "-o", "export", device, check=False)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def mkfs_count(output: str) -> int:
    return sum(1 for line in output.splitlines() if "ran /usr/sbin/mkfs" in line or "ran /sbin/mkfs" in line)


def assert_ready(node: Node, fstype: str) -> None:
    (mount,) = node.mounts()
    assert mount[mount.index("-") + 1] == fstype
    st = os.lstat(node.mount_point)
    assert stat.S_IMODE(st.st_mode) == 0o1777
    trash = os.lstat(node.mount_point / TRASH)
    assert stat.S_ISDIR(trash.st_mode) and trash.st_uid == 0 and stat.S_IMODE(trash.st_mode) == 0o700
    assert "noatime" in mount[5].split(",")


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_single_builds_reruns_and_survives_a_reboot(tmp_path, loops, fstype) -> None:
    disk = loops.device(320)
    node = Node(tmp_path, [disk], backend="single", filesystem=fstype)

    dry = node.setup("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"mkfs.{fstype}" in dry.stdout and "mount -t" in dry.stdout
    assert blkid(disk) == {} and not is_mounted(str(node.mount_point))  # dry run changed nothing

    built = node.setup()
    assert built.returncode == 0, built.stderr
    assert mkfs_count(built.stderr) == 1
    assert_ready(node, fstype)
    assert blkid(disk)["LABEL"] == "scratch"
    if fstype == "ext4":
        header = sh("dumpe2fs", "-h", disk).stdout
        assert "Reserved block count:     0" in header
        features = next(line for line in header.splitlines() if line.startswith("Filesystem features:")).split()
        assert "sparse_super2" in features and "resize_inode" not in features
    recorded = json.loads(STATE_FILE.read_text())
    assert recorded["status"] == "ready" and recorded["backend"] == "single" and recorded["filesystem"] == fstype
    assert [m["path"] for m in recorded["members"]] == [disk]
    assert recorded["fs_uuid"] == blkid(disk)["UUID"]
    (node.mount_point / "data").write_text("kept")

    again = node.setup()
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout and "ran " not in again.stderr  # the fast path runs no tool
    assert len(node.mounts()) == 1

    node.unmount()  # "reboot": the disk keeps its filesystem, nothing is mounted
    rebooted = node.setup()
    assert rebooted.returncode == 0, rebooted.stderr
    assert mkfs_count(rebooted.stderr) == 0
    assert_ready(node, fstype)
    assert (node.mount_point / "data").read_text() == "kept"


def test_btrfs_stripes_across_disks_and_remounts_after_reboot(tmp_path, loops) -> None:
    disks = [loops.device(320) for _ in range(3)]
    node = Node(tmp_path, disks, backend="btrfs", filesystem="btrfs")
    built = node.setup()
    assert built.returncode == 0, built.stderr
    assert_ready(node, "btrfs")
    usage = sh("btrfs", "filesystem", "df", str(node.mount_point)).stdout
    assert "Data, RAID0" in usage and "Metadata, RAID1" in usage
    uuids = {blkid(disk)["UUID"] for disk in disks}
    assert len(uuids) == 1
    recorded = json.loads(STATE_FILE.read_text())
    assert recorded["backend"] == "btrfs" and len(recorded["members"]) == 3 and recorded["fs_uuid"] in uuids
    (node.mount_point / "data").write_text("kept")

    node.unmount()
    rebooted = node.setup()
    assert rebooted.returncode == 0, rebooted.stderr
    assert mkfs_count(rebooted.stderr) == 0
    assert (node.mount_point / "data").read_text() == "kept"
    assert {blkid(disk)["UUID"] for disk in disks} == uuids


def test_single_disk_btrfs_backend(tmp_path, loops) -> None:
    disk = loops.device(320)
    node = Node(tmp_path, [disk], backend="btrfs", filesystem="btrfs")
    assert node.setup().returncode == 0
    assert "Data, single" in sh("btrfs", "filesystem", "df", str(node.mount_point)).stdout


def test_foreign_filesystem_is_skipped_unless_wipe(tmp_path, loops) -> None:
    foreign = loops.filesystem("ext4", 320)
    Path(foreign.mount_point, "theirs").write_text("precious")
    umount(foreign.mount_point)
    sh("e2label", foreign.device, "theirs")
    blank = loops.device(320)
    node = Node(tmp_path, [foreign.device, blank], backend="single")

    result = node.setup()
    assert result.returncode == 0, result.stderr
    assert f"skipping {foreign.device}: carries an ext4 filesystem labelled 'theirs'" in result.stderr
    assert node.mounts()[0][node.mounts()[0].index("-") + 2] == blank
    assert blkid(foreign.device)["LABEL"] == "theirs"
    report = node.status()
    assert report["state"] == "mounted"
    (skipped,) = report["skipped"]
    assert skipped["path"] == foreign.device and "ext4" in skipped["reason"] and "wipe = yes" in skipped["reason"]
    assert [disk["path"] for disk in report["disks"]] == [blank]

    # Only the foreign disk listed: nothing usable, a clear failure that names it, nothing touched.
    node.unmount()
    STATE_FILE.unlink()
    node.write([foreign.device], backend="single")
    refused = node.setup()
    assert refused.returncode == 1
    assert foreign.device in refused.stderr and "no usable disk" in refused.stderr
    assert blkid(foreign.device)["LABEL"] == "theirs"

    node.write([foreign.device], backend="single", wipe="yes")
    wiped = node.setup()
    assert wiped.returncode == 0, wiped.stderr
    assert f"wipefs -a {foreign.device}" in wiped.stderr
    assert blkid(foreign.device)["LABEL"] == "scratch"
    assert not (node.mount_point / "theirs").exists()


def write_mbr(device: str, first_lba: int = 2048, sectors: int = 100_000) -> None:
    """A DOS partition table with one Linux partition (what fdisk would write; no fdisk needed)."""
    entry = bytes([0x00, 0, 0, 0, 0x83, 0, 0, 0]) + first_lba.to_bytes(4, "little") + sectors.to_bytes(4, "little")
    with open(device, "r+b") as disk:
        disk.seek(446)
        disk.write(entry + bytes(48) + b"\x55\xaa")


def test_partitioned_disk_is_skipped(tmp_path, loops) -> None:
    disk = loops.device(320)
    write_mbr(disk)
    node = Node(tmp_path, [disk], backend="single")
    result = node.setup()
    assert result.returncode == 1
    assert "dos partition table" in result.stderr
    assert blkid(disk).get("PTTYPE") == "dos"
    report = node.status()
    assert report["state"] != "mounted" and "dos partition table" in report["skipped"][0]["reason"]

    node.write([disk], backend="single", wipe="yes")
    wiped = node.setup()
    assert wiped.returncode == 0, wiped.stderr
    assert "PTTYPE" not in blkid(disk) and blkid(disk)["TYPE"] == "ext4"


def test_mounted_disk_and_foreign_mount_point_are_refused(tmp_path, loops) -> None:
    busy = loops.filesystem("ext4", 320)
    node = Node(tmp_path, [busy.device], backend="single")
    result = node.setup()
    assert result.returncode == 1 and f"is mounted at {busy.mount_point}" in result.stderr

    # Something else already mounted at the mount point: refuse, name it.
    blank = loops.device(320)
    node.mount_point.mkdir()
    sh("mount", "-t", "tmpfs", "tmpfs", str(node.mount_point))
    try:
        node.write([blank], backend="single")
        refused = node.setup()
        assert refused.returncode == 1
        assert "which is not the scratch volume" in refused.stderr
        assert blkid(blank) == {}
    finally:
        node.unmount()


def test_concurrent_setups_build_once_and_all_succeed(tmp_path, loops) -> None:
    disks = [loops.device(320) for _ in range(2)]
    node = Node(tmp_path, disks, backend="btrfs", filesystem="btrfs")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "SLURM_SCRATCH_CONF": str(node.conf)}
    processes = [subprocess.Popen([sys.executable, "-m", "slurm_scratch", "setup"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, [err for _, err in outputs]
    assert sum(mkfs_count(err) for _, err in outputs) == 1
    assert len(node.mounts()) == 1
    assert_ready(node, "btrfs")


def test_status_json(tmp_path, loops) -> None:
    disks = [loops.device(320) for _ in range(2)]
    node = Node(tmp_path, disks, backend="btrfs", filesystem="btrfs")
    before = node.status()
    assert before["state"] == "not mounted" and before["mounted"] is False
    assert any(line.startswith("mkfs.btrfs") for line in before["setup_would"])
    assert node.cli("status").returncode == 1

    assert node.setup().returncode == 0
    report = node.status()
    assert report["state"] == "mounted" and report["mounted"] is True
    assert report["backend"] == "btrfs" and report["filesystem"] == "btrfs"
    assert report["device"] in disks and sorted(report["members"]) == sorted(disks)
    assert [disk["path"] for disk in report["disks"]] == disks and all(disk["ours"] for disk in report["disks"])
    assert report["skipped"] == []
    assert report["size_bytes"] > 500 * 2**20 and 0 < report["free_bytes"] <= report["size_bytes"]
    assert report["recorded"]["members"][0]["path"] == disks[0]
    text = node.cli("status")
    assert text.returncode == 0 and "mounted" in text.stdout and disks[1] in text.stdout


def test_degraded_btrfs_fails_naming_the_disk_then_rebuilds_when_allowed(tmp_path, loops) -> None:
    disks = [loops.device(320) for _ in range(2)]
    node = Node(tmp_path, disks, backend="btrfs", filesystem="btrfs")
    assert node.setup().returncode == 0
    (node.mount_point / "data").write_text("old")
    node.unmount()
    old_uuid = blkid(disks[0])["UUID"]

    node.write(disks[:1], backend="btrfs", filesystem="btrfs")  # the second disk is gone
    failed = node.setup()
    assert failed.returncode == 1
    assert "degraded" in failed.stderr and f"missing disk {disks[1]}" in failed.stderr
    assert mkfs_count(failed.stderr) == 0 and blkid(disks[0])["UUID"] == old_uuid
    assert node.status()["state"] == "degraded"

    node.write(disks[:1], backend="btrfs", filesystem="btrfs", on_degraded="rebuild")
    rebuilt = node.setup()
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert blkid(disks[0])["UUID"] != old_uuid
    assert not (node.mount_point / "data").exists()
    assert [m["path"] for m in json.loads(STATE_FILE.read_text())["members"]] == disks[:1]


@pytest.mark.parametrize("backend", ["single", "btrfs"])
def test_a_crash_after_any_step_is_completed_by_the_next_run(tmp_path, loops, backend) -> None:
    from slurm_scratch.config import parse_config
    from slurm_scratch.volume.setup import make_plan
    from slurm_scratch.volume.apply import apply
    from slurm_scratch.volume.plan import Plan

    count = 2 if backend == "btrfs" else 1
    fstype = "btrfs" if backend == "btrfs" else "ext4"
    disks = [loops.device(320) for _ in range(count)]
    node = Node(tmp_path, disks, backend=backend, filesystem=fstype)
    volume = parse_config(node.conf.read_text(), str(node.conf)).volume
    full = make_plan(volume)[2]
    assert full.state == "build" and len(full.steps) >= 6
    for crash_after in range(1, len(full.steps)):
        node.unmount()
        for disk in disks:
            sh("wipefs", "-a", disk)
        STATE_FILE.unlink(missing_ok=True)
        plan = make_plan(volume)[2]
        apply(volume, Plan(**{**plan.__dict__, "steps": plan.steps[:crash_after]}))
        result = node.setup()
        assert result.returncode == 0, (crash_after, result.stderr)
        assert_ready(node, fstype)
        assert json.loads(STATE_FILE.read_text())["status"] == "ready"


def test_ensure_mounted_heals_an_unmounted_volume(tmp_path, loops) -> None:
    from slurm_scratch.config import parse_config
    from slurm_scratch.volume import setup, state

    disk = loops.device(320)
    node = Node(tmp_path, [disk], backend="single")
    assert node.setup().returncode == 0
    (node.mount_point / "data").write_text("kept")
    node.unmount()
    config = parse_config(node.conf.read_text(), str(node.conf))
    setup.ensure_mounted(config)
    assert_ready(node, "ext4")
    assert (node.mount_point / "data").read_text() == "kept"
    assert state.read().device == disk
    # The setup lock is released when ensure_mounted returns (the Prolog's process goes on).
    other = locks.acquire("/run/slurm-scratch/setup.lock")
    assert other is not None
    os.close(other)


# ---- issue 8: ours by proof, never by label; disks in use anywhere --------------------------------

MARKER = ".slurm-scratch-volume"


def foreign_scratch_labelled(loops, fstype: str = "ext4") -> tuple[str, str]:
    """Someone else's filesystem that happens to be labelled `scratch`, holding their file; (device, UUID)."""
    theirs = loops.filesystem(fstype, 320)
    Path(theirs.mount_point, "theirs").write_text("precious")
    umount(theirs.mount_point)
    sh("e2label" if fstype == "ext4" else "xfs_admin", *((theirs.device, "scratch") if fstype == "ext4" else ("-L", "scratch", theirs.device)))
    assert blkid(theirs.device)["LABEL"] == "scratch"
    return theirs.device, blkid(theirs.device)["UUID"]


def assert_intact(loops, device: str, uuid: str) -> None:
    """Still their filesystem, with their file (read through a mount of our own, then undone)."""
    assert blkid(device)["UUID"] == uuid
    target = loops.workdir / f"check-{os.path.basename(device)}"
    target.mkdir(exist_ok=True)
    sh("mount", "-o", "ro", device, str(target))
    try:
        assert (target / "theirs").read_text() == "precious"
    finally:
        umount(str(target))


def write_marker(device: str, workdir: Path, content: str, uid: int = 0, mode: int = 0o600) -> None:
    target = workdir / f"forge-{os.path.basename(device)}"
    target.mkdir(exist_ok=True)
    sh("mount", device, str(target))
    try:
        marker = target / MARKER
        marker.write_text(content)
        os.chown(marker, uid, uid)
        os.chmod(marker, mode)
    finally:
        umount(str(target))


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_a_filesystem_labelled_scratch_is_not_ours_without_proof(tmp_path, loops, fstype) -> None:
    device, uuid = foreign_scratch_labelled(loops, fstype)
    node = Node(tmp_path, [device], backend="single", filesystem=fstype)
    refused = node.setup()
    assert refused.returncode == 1, refused.stdout
    assert f"skipping {device}: carries an {fstype} filesystem labelled 'scratch' that is not ours" in refused.stderr
    assert "no usable disk" in refused.stderr and device in refused.stderr
    assert not is_mounted(str(node.mount_point)) and not STATE_FILE.exists()
    assert_intact(loops, device, uuid)
    # A user's forged marker (their file, right UUID) or root's marker of another filesystem: no proof.
    for content, uid in ((uuid, 4201), ("00000000-0000-4000-8000-000000000000", 0)):
        write_marker(device, tmp_path, content + "\n", uid)
        again = node.setup()
        assert again.returncode == 1 and "that is not ours" in again.stderr
        assert_intact(loops, device, uuid)
    # Even with on_degraded = rebuild: nothing of ours here to rebuild from.
    node.write([device], backend="single", filesystem=fstype, on_degraded="rebuild")
    assert node.setup().returncode == 1
    assert_intact(loops, device, uuid)


def test_a_building_state_file_for_another_disk_formats_nothing(tmp_path, loops) -> None:
    device, uuid = foreign_scratch_labelled(loops)
    elsewhere = loops.device(320)
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    # Left by a build that was killed half-way: for another disk (by path, and by serial).
    for member in ({"path": elsewhere, "serial": ""}, {"path": device, "serial": "S3RIAL-OF-ANOTHER"}):
        STATE_FILE.write_text(json.dumps({"version": 1, "status": "building", "backend": "single", "filesystem": "ext4",
                                          "device": member["path"], "mount_point": str(tmp_path / "scratch"), "members": [member]}))
        node = Node(tmp_path, [device], backend="single")
        refused = node.setup()
        assert refused.returncode == 1, refused.stdout
        assert mkfs_count(refused.stderr) == 0 and f"skipping {device}: carries an ext4 filesystem labelled 'scratch' that is not ours" in refused.stderr
        assert not is_mounted(str(node.mount_point))
        assert_intact(loops, device, uuid)
    # ...and one naming this very disk, but not the UUID of the filesystem it finds (today's
    # release recorded none while building): the filesystem is not remade either.
    STATE_FILE.write_text(json.dumps({"version": 1, "status": "building", "backend": "single", "members": [{"path": device, "serial": ""}]}))
    refused = node.setup()
    assert refused.returncode == 1 and mkfs_count(refused.stderr) == 0
    assert_intact(loops, device, uuid)


def test_rebuild_never_wipes_a_member_that_now_carries_a_foreign_filesystem(tmp_path, loops) -> None:
    disks = [loops.device(320) for _ in range(2)]
    node = Node(tmp_path, disks, backend="btrfs", filesystem="btrfs", on_degraded="rebuild")
    assert node.setup().returncode == 0
    node.unmount()
    # The second disk is now someone else's, labelled like ours.
    sh("wipefs", "-a", disks[1])
    sh("mkfs.ext4", "-q", "-F", "-L", "scratch", disks[1])
    target = tmp_path / "theirs"
    target.mkdir()
    sh("mount", disks[1], str(target))
    (target / "theirs").write_text("precious")
    umount(str(target))
    uuid = blkid(disks[1])["UUID"]

    rebuilt = node.setup()
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"skipping {disks[1]}: carries an ext4 filesystem labelled 'scratch' that is not ours" in rebuilt.stderr
    assert f"wipefs -a {disks[1]}" not in rebuilt.stderr
    assert [m["path"] for m in json.loads(STATE_FILE.read_text())["members"]] == disks[:1]
    node.unmount()
    assert_intact(loops, disks[1], uuid)


@pytest.mark.parametrize("backend, fstype, count", [("single", "ext4", 1), ("single", "xfs", 1), ("btrfs", "btrfs", 2)])
def test_a_stateless_node_adopts_its_own_volume_by_its_marker(tmp_path, loops, backend, fstype, count) -> None:
    disks = [loops.device(320) for _ in range(count)]
    node = Node(tmp_path, disks, backend=backend, filesystem=fstype)
    built = node.setup()
    assert built.returncode == 0, built.stderr
    marker = os.lstat(node.mount_point / MARKER)
    assert stat.S_ISREG(marker.st_mode) and marker.st_uid == 0 and stat.S_IMODE(marker.st_mode) == 0o600
    assert (node.mount_point / MARKER).read_text().strip() == blkid(disks[0])["UUID"] == json.loads(STATE_FILE.read_text())["fs_uuid"]
    (node.mount_point / "data").write_text("kept")
    node.unmount()
    STATE_FILE.unlink()  # a stateless node (or a recreated container): /var/lib is gone, the disks are not

    adopted = node.setup()
    assert adopted.returncode == 0, adopted.stderr
    assert mkfs_count(adopted.stderr) == 0 and "wipefs" not in adopted.stderr
    assert_ready(node, fstype)
    assert (node.mount_point / "data").read_text() == "kept"
    assert [m["path"] for m in json.loads(STATE_FILE.read_text())["members"]] == disks
    # The probe's private read-only mount is gone with its namespace.
    assert [fields[4] for fields in map(str.split, open("/proc/self/mountinfo")) if fields[fields.index("-") + 2] in disks] == [str(node.mount_point)]


def test_a_squatted_marker_name_is_moved_aside(tmp_path, loops) -> None:
    """A volume from before the marker: a user takes its name first (a directory in the 1777 root)."""
    disk = loops.device(320)
    node = Node(tmp_path, [disk], backend="single")
    assert node.setup().returncode == 0
    (node.mount_point / MARKER).unlink()
    squat = node.mount_point / MARKER  # what sstest1 can do in the 1777 root (made here as root, then given away)
    squat.mkdir()
    (squat / "mine").write_text("x")
    for path in (squat, squat / "mine"):
        os.chown(path, 4201, 4201)
    again = node.setup()
    assert again.returncode == 0, again.stderr
    assert "moved into the trash" in again.stderr
    marker = os.lstat(node.mount_point / MARKER)
    assert stat.S_ISREG(marker.st_mode) and marker.st_uid == 0 and stat.S_IMODE(marker.st_mode) == 0o600
    (aside,) = os.listdir(node.mount_point / TRASH)
    assert os.lstat(node.mount_point / TRASH / aside).st_uid == 4201
    assert_ready(node, "ext4")
    assert "nothing to do" in node.setup().stdout  # the fast path holds again


def hold(argv: list[str]) -> subprocess.Popen:
    """Start a process that holds a disk and prints 'ready' once it does; killed by PID by the caller."""
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # EOF (not a hang) if it failed
    assert line.strip() == "ready", process.stderr.read() if process.poll() is not None else line
    return process


def release(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=30)


def test_a_disk_mounted_only_in_another_mount_namespace_is_not_used(tmp_path, loops) -> None:
    theirs = loops.filesystem("ext4", 320)
    umount(theirs.mount_point)
    sh("e2label", theirs.device, "scratch")  # even labelled like ours
    blank = loops.device(320)
    holder = hold(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                   f"mount {theirs.device} {theirs.mount_point} && echo ready && exec sleep 600"])
    try:
        assert not is_mounted(theirs.mount_point)  # not in ours
        node = Node(tmp_path, [theirs.device, blank], backend="single", wipe="yes")
        result = node.setup()
        assert result.returncode == 0, result.stderr
        assert f"skipping {theirs.device}: is mounted in another mount namespace (pid {holder.pid}, at {theirs.mount_point})" in result.stderr
        assert f"wipefs -a {theirs.device}" not in result.stderr
        assert node.mounts()[0][node.mounts()[0].index("-") + 2] == blank
        (skipped,) = node.status()["skipped"]
        assert skipped["path"] == theirs.device and f"pid {holder.pid}" in skipped["reason"]
        assert blkid(theirs.device)["LABEL"] == "scratch"
    finally:
        release(holder)


def test_a_disk_held_open_exclusively_is_not_used(tmp_path, loops) -> None:
    busy = loops.device(320)
    holder = hold([sys.executable, "-c", "import os, sys; os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL); print('ready', flush=True); sys.stdin.read()", busy])
    try:
        node = Node(tmp_path, [busy], backend="single", wipe="yes")
        refused = node.setup()
        assert refused.returncode == 1
        assert f"skipping {busy}: cannot be opened exclusively (EBUSY)" in refused.stderr
        assert blkid(busy) == {}
    finally:
        release(holder)
    node = Node(tmp_path, [busy], backend="single")
    assert node.setup().returncode == 0  # once let go, it is used


def test_a_users_copy_of_our_mount_in_another_namespace_does_not_make_our_volume_foreign(tmp_path, loops) -> None:
    """Any user can copy the mount table (`unshare -Urm`), bind /scratch elsewhere and keep it after
    we unmount: our own disk is then mounted in another namespace, at another path. Still ours."""
    disk = loops.device(320)
    node = Node(tmp_path, [disk], backend="single")
    assert node.setup().returncode == 0
    (node.mount_point / "data").write_text("kept")
    (tmp_path / "elsewhere").mkdir()
    holder = hold(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                   f"mount --bind {node.mount_point} {tmp_path / 'elsewhere'} && echo ready && exec sleep 600"])
    try:
        node.unmount()
        again = node.setup()
        assert again.returncode == 0, again.stderr
        assert mkfs_count(again.stderr) == 0 and "skipping" not in again.stderr
        assert_ready(node, "ext4")
        assert (node.mount_point / "data").read_text() == "kept"
    finally:
        release(holder)
