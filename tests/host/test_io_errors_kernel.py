"""The kernel I/O error check against real kernel messages: a loop device whose backing file sits on
a FUSE filesystem that fails on demand (lab/failing_disk.py), so the kernel's block layer and
filesystems log the errors themselves. The healthcheck hook runs as slurmd runs it, against the fake
Slurm of lab/fake_slurm.py; the cluster tests run the real one."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lab.failing_disk import FailingDisk
from lab.fake_slurm import FakeSlurm
from lab.jobs import poll
from lab.kernel import mkfs, mount, umount
from slurm_scratch import layout, statefile
from slurm_scratch.health import io_errors, kmsg

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "hooks" / "healthcheck"
CLI = ["/usr/bin/python3", "-m", "slurm_scratch"]
NODE = "n1"


@pytest.fixture(autouse=True)
def fresh_node():
    """A node just booted as far as the tool knows (private tmpfs state dirs, lab/sandbox.py)."""
    names = ("health.state", "hook-finding", "probe-stuck", "volume-record.cache", "health.findings")
    paths = [f"{layout.RUN_DIR}/{name}" for name in names] + [layout.IO_ERRORS_STATE, layout.VOLUME_RECORD]
    for path in paths:
        if os.path.exists(path):
            os.unlink(path)
    yield
    for path in paths:  # the next test's first check starts at the log's end, after these errors
        if os.path.exists(path):
            os.unlink(path)


class Node(FakeSlurm):
    def __init__(self, tmp_path: Path, mount_point: str, health: str = "", fstype: str = "ext4") -> None:
        super().__init__(tmp_path / "slurm")
        self.mount_point = mount_point
        backend = "btrfs" if fstype == "btrfs" else "single"
        self.config = self.tool_config(tmp_path / "slurm-scratch.conf", f"mount_point = {mount_point}\nbackend = {backend}\nfilesystem = {fstype}\n", health)

    def healthcheck(self, *args: str) -> subprocess.CompletedProcess:
        env = {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(self.config)}
        argv = [*CLI, "healthcheck", *args] if args else [str(HOOK)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=str(REPO) if args else "/")


@pytest.fixture
def faulty(tmp_path):
    disk = FailingDisk(tmp_path)
    yield disk
    disk.close()


def write_and_sync(path: Path) -> None:
    """Write through the page cache to the disk (whatever the disk says)."""
    subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=64k", "count=8", "conv=fsync", "status=none"], capture_output=True, timeout=60)


def inject_one_read_error(faulty: FailingDisk, data: Path) -> None:
    """One failed read of the disk, as the kernel logs it. The block layer rate-limits its error
    lines (10 per 5 s, shared with every device's): a line suppressed after other errors is not
    there to count, so the single error is injected again, at most a few times, until it shows."""
    cursor = kmsg.read_after(-1).last_seq

    def logged() -> bool:
        faulty.fail("reads 1")
        fd = os.open(data, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            try:  # a failed readahead is retried page by page: the read itself may well succeed
                os.pread(fd, 65536, 0)
            except OSError:
                pass
        finally:
            os.close(fd)
        name = os.path.basename(faulty.device)
        return any(f"I/O error, dev {name}," in message.text for message in kmsg.read_after(cursor).messages)

    poll(logged, timeout=20, interval=1.0, what=f"a read error on {faulty.device} in the kernel log")


def test_kmsg_is_read_without_blocking_and_the_cursor_moves() -> None:
    first = kmsg.read_after(-1)
    assert first.complete and first.last_seq >= 0 and first.messages
    again = kmsg.read_after(first.last_seq)
    assert again.complete and all(message.seq > first.last_seq for message in again.messages)


def test_a_healthy_disk_and_a_single_transient_error_do_not_drain(tmp_path, faulty) -> None:
    mkfs(faulty.device, "ext4")
    mount_point = str(tmp_path / "scratch")
    os.makedirs(mount_point)
    mount(faulty.device, mount_point, "ext4")
    try:
        node = Node(tmp_path, mount_point)
        data = Path(mount_point) / "data"
        write_and_sync(data)
        for _ in range(2):
            result = node.healthcheck()
            assert result.returncode == 0 and "no kernel I/O errors" in result.stdout, result.stdout + result.stderr
        totals_before = sum(io_errors.current().totals.values())
        inject_one_read_error(faulty, data)
        results = [node.healthcheck() for _ in range(2)]
        state = io_errors.current()
        assert sum(state.totals.values()) > totals_before, "the kernel logged the error and the check counted it"
        assert all(result.returncode == 0 for result in results), [result.stdout for result in results]
        assert "kernel I/O error(s) in the last" in results[0].stdout
        assert node.state() == ("IDLE", "") and not any(call.startswith("update") for call in node.calls())
        # the cursor survives runs: the second run counted nothing again
        assert sum(state.totals.values()) - totals_before == len(state.events)
    finally:
        umount(mount_point)


def test_errors_on_one_member_disk_drain_naming_it_and_stay_until_cleared(tmp_path, faulty, loops) -> None:
    healthy = loops.device(256)
    mount_point = str(tmp_path / "scratch")
    os.makedirs(mount_point)
    subprocess.run(["mkfs.btrfs", "-q", "-f", "-d", "raid0", "-m", "raid1", healthy, faulty.device], check=True, capture_output=True)
    mount(healthy, mount_point, "btrfs")
    try:
        node = Node(tmp_path, mount_point, "io_errors_max = 3\n", fstype="btrfs")
        first = node.healthcheck()  # a node's first check starts at the log's end: earlier errors on
        assert first.returncode == 0, first.stdout + first.stderr  # this (reused) loop name are not counted
        assert "no kernel I/O errors" in first.stdout
        faulty.fail("all")
        for index in range(4):
            write_and_sync(Path(mount_point) / f"data{index}")
        drained = []
        for _ in range(2):  # within two health checks
            result = node.healthcheck()
            drained.append(node.state())
            if drained[-1][0].endswith("+DRAIN"):
                break
        assert drained[-1] == ("IDLE+DRAIN", f"scratch: I/O errors on {faulty.device}"), (result.stdout, drained)
        assert f"I/O errors on {faulty.device}" in result.stdout
        faulty.heal()
        quiet = node.healthcheck()  # the disk answers again: the drain stays
        assert quiet.returncode == 1 and node.state()[1] == f"scratch: I/O errors on {faulty.device}", quiet.stdout
        cleared = node.healthcheck("--clear-io-errors")
        assert f"cleared: I/O errors on {faulty.device}" in cleared.stdout, cleared.stdout + cleared.stderr
    finally:
        umount(mount_point)
    # what the volume still says about its disk (btrfs may keep it degraded) is the other checks'
    # business: the sticky finding itself is gone
    assert io_errors.current().sticky == ""


def test_a_new_boot_resets_the_cursor_and_the_sticky_finding(tmp_path) -> None:
    statefile.write_fields(layout.IO_ERRORS_STATE, {"boot": "an-earlier-boot", "seq": 10**12, "sticky": "nvme9n1",
                                                    "events": "nvme9n1@1.0", "total.nvme9n1": 50})
    state = io_errors.current()
    assert (state.boot, state.seq, state.sticky, state.totals) == (kmsg.boot_id(), -1, "", {})  # this boot's log from its start
    node = Node(tmp_path, str(tmp_path / "nothing-mounted"))
    result = node.healthcheck("--report-only")
    assert "I/O errors on" not in result.stdout
