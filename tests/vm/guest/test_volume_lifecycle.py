"""`slurm-scratch setup` in the cases users hit: a rerun, a reboot, an EC2 stop/start, a volume
built by ParallelCluster's own script, a crash in the middle of setup, a disk missing, and
many setups at once."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from lab import guest_node as node
from lab.nvme_disks import sh, wait_for

MOUNT_POINT = Path("/scratch")
VM_TIMEOUT_S = 1200


def build(disks, conf, backend: str, count: int = 2, **keys: str):
    made = disks.create(count)
    config = conf(devices="aws", backend=backend, **keys)
    node.setup_ok(config)
    return made, config


def write_marker() -> bytes:
    payload = os.urandom(256 << 10)
    (MOUNT_POINT / "marker").write_bytes(payload)
    os.sync()
    return payload


def mounted_source() -> str:
    mount = node.mount_of(str(MOUNT_POINT))
    assert mount is not None, f"{MOUNT_POINT} is not mounted"
    return mount[0]


def signatures(disks) -> dict[str, str]:
    return {disk.serial: node.fs_type(disk.device()) for disk in disks if disk.connected}


def test_rerun_on_a_mounted_volume_runs_no_command(disks, conf, tool_available):
    _, config = build(disks, conf, "lvm")
    again = node.setup_ok(config)
    assert "nothing to do" in again.stdout
    assert "ran /" not in again.stderr, "the mounted fast path ran external commands:\n" + again.stderr


@pytest.mark.parametrize("backend,autoactivate", [("lvm", True), ("lvm", False), ("mdadm", True)],
                         ids=["lvm-autoactivated", "lvm-inactive", "mdadm"])
def test_reboot_mounts_the_same_volume_with_its_data(disks, conf, tool_available, backend, autoactivate):
    made, config = build(disks, conf, backend)
    uuid = node.fs_uuid(mounted_source())
    payload = write_marker()

    node.reboot(disks, autoactivate=autoactivate)
    assert node.mount_of(str(MOUNT_POINT)) is None
    result = node.setup_ok(config)

    assert node.fs_uuid(mounted_source()) == uuid, "the volume was reformatted: " + result.stderr
    assert (MOUNT_POINT / "marker").read_bytes() == payload
    assert "ran /usr/sbin/mkfs" not in result.stderr
    recorded = node.read_state()
    assert sorted(m["serial"] for m in recorded["members"]) == sorted(d.serial for d in made)


def test_the_prolog_sets_up_a_volume_that_is_not_mounted(disks, conf, tool_available):
    """After a reboot whose setup did not run, the first job's Prolog mounts the volume (with
    its data) and makes the job's directory."""
    _, config = build(disks, conf, "lvm")
    uuid = node.fs_uuid(mounted_source())
    payload = write_marker()
    node.reboot(disks, autoactivate=False)

    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_UID": "65534", "SLURM_JOB_GID": "65534",
           "SLURM_JOB_USER": "nobody", "SLURMD_NODENAME": "vm"}
    result = node.slurm_scratch(config, "prolog", extra_env=job)

    assert result.returncode == 0, node.describe(result)
    assert node.fs_uuid(mounted_source()) == uuid
    assert (MOUNT_POINT / "marker").read_bytes() == payload
    job_dir = MOUNT_POINT / "job_4242"
    assert job_dir.is_dir() and job_dir.stat().st_uid == 65534


@pytest.mark.parametrize("backend", ["lvm", "mdadm"])
def test_stop_start_builds_a_new_volume_on_the_new_disks(disks, conf, tool_available, backend):
    _, config = build(disks, conf, backend)
    old_uuid = node.fs_uuid(mounted_source())
    write_marker()

    fresh = node.stop_start(disks)
    node.setup_ok(config)

    assert node.fs_uuid(mounted_source()) != old_uuid
    assert not (MOUNT_POINT / "marker").exists()
    recorded = node.read_state()
    assert recorded["status"] == "ready"
    assert sorted(m["serial"] for m in recorded["members"]) == sorted(d.serial for d in fresh)


def seed_setup(devices: list[str]) -> None:
    """ParallelCluster's setup-ephemeral-drives.sh, step by step (its commands, its options)."""
    lv = "/dev/vg.01/lv_ephemeral"
    sh("pvcreate", "-y", *devices)
    sh("vgcreate", "-y", "vg.01", *devices)
    sh("lvcreate", "-y", "-i", str(len(devices)), "-I", "64", "-l", "100%FREE",
       "-n", "lv_ephemeral", "vg.01")
    sh("mkfs", "-t", "ext4", lv)
    MOUNT_POINT.mkdir(exist_ok=True)
    sh("mount", "-v", "-t", "ext4", "-o", "noatime,nodiratime", lv, str(MOUNT_POINT))
    MOUNT_POINT.chmod(0o1777)


@pytest.mark.parametrize("after", ["mounted", "reboot-autoactivated", "reboot-inactive"])
def test_a_volume_built_by_the_seed_script_is_adopted(disks, conf, tool_available, after):
    made = disks.create(2)
    seed_setup([str(disk.device()) for disk in made])
    uuid = node.fs_uuid("/dev/vg.01/lv_ephemeral")
    payload = write_marker()
    if after != "mounted":
        node.reboot(disks, autoactivate=after == "reboot-autoactivated")

    result = node.setup_ok(conf(devices="aws"))

    assert Path(mounted_source()).resolve() == Path("/dev/vg.01/lv_ephemeral").resolve()
    assert node.fs_uuid("/dev/vg.01/lv_ephemeral") == uuid, result.stderr
    assert (MOUNT_POINT / "marker").read_bytes() == payload
    assert node.read_state()["status"] == "ready"


def kill_setup_at(config: Path, stopping: node.StoppingCommand, timeout_s: float = 120) -> None:
    """Run `setup` until it reaches the stopping command, then SIGKILL it and every process
    below it, as a crash or a power loss would stop it there."""
    process = node.start_slurm_scratch(config, "setup")
    try:
        def stopped() -> bool:
            if stopping.flag.exists():
                return True
            if process.poll() is not None:
                raise AssertionError(f"setup ended before {stopping.path.name} stopped it: "
                                     f"exit {process.returncode}\n{process.communicate()[1]}")
            return False

        wait_for(f"setup to reach {stopping.path.name}", stopped, timeout_s)
        below = node.descendants(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    for pid in below:
        wait_for(f"process {pid} to end", lambda: not Path(f"/proc/{pid}").exists(), 30)
    sh("udevadm", "settle")


CRASH_POINTS = [
    # backend, command, when, only calls whose arguments contain
    ("lvm", "/usr/sbin/vgcreate", "before", ""),
    ("lvm", "/usr/sbin/vgcreate", "after", ""),
    ("lvm", "/usr/sbin/lvcreate", "after", ""),
    ("lvm", "/usr/sbin/mkfs.ext4", "before", ""),
    ("lvm", "/usr/sbin/mkfs.ext4", "after", ""),
    ("lvm", "/usr/bin/mount", "after", "/scratch"),
    ("mdadm", "/usr/sbin/mdadm", "after", "--create"),
    ("mdadm", "/usr/sbin/mkfs.ext4", "after", ""),
]


@pytest.mark.parametrize("backend,command,when,match", CRASH_POINTS,
                         ids=[f"{b}-{when}-{Path(c).name}" for b, c, when, _ in CRASH_POINTS])
def test_a_setup_killed_mid_way_is_completed_by_the_next(disks, conf, tool_available, backend,
                                                          command, when, match):
    made = disks.create(2)
    config = conf(devices="aws", backend=backend)
    with node.StoppingCommand(command, when, match) as stopping:
        kill_setup_at(config, stopping)

    result = node.setup_ok(config)

    source = mounted_source()
    assert node.fs_type(source) == "ext4"
    recorded = node.read_state()
    assert recorded["status"] == "ready", recorded
    assert sorted(m["serial"] for m in recorded["members"]) == sorted(d.serial for d in made)
    if backend == "lvm":
        assert int(node.lv_layout("vg.01", "lv_ephemeral")["stripes"]) == 2
    else:
        assert int(node.md_detail(source)["MD_DEVICES"]) == 2
    # And after a reboot it is the same volume.
    uuid = node.fs_uuid(source)
    node.reboot(disks)
    node.setup_ok(config)
    assert node.fs_uuid(mounted_source()) == uuid, result.stderr


def boot_without(disks, missing) -> None:
    """A reboot after which one disk does not come back."""
    node.reboot(disks)
    missing.disconnect()
    node.release_volumes()  # what udev activated while the disk was still there
    for directory in node.BOOT_CLEARED_RUN_DIRS:
        node.clear_dir(directory)


@pytest.mark.parametrize("backend", ["lvm", "mdadm"])
def test_a_missing_disk_fails_naming_it_and_formats_nothing(disks, conf, tool_available, backend):
    made, config = build(disks, conf, backend, count=3)
    uuid = node.fs_uuid(mounted_source())
    payload = write_marker()
    missing = made[1]
    boot_without(disks, missing)
    before = signatures(disks.disks)

    result = node.slurm_scratch(config, "setup")

    assert result.returncode == 1, node.describe(result)
    assert missing.serial in result.stderr, node.describe(result)
    assert node.mount_of(str(MOUNT_POINT)) is None
    assert signatures(disks.disks) == before
    status = node.status_json(config)
    assert status["state"] == "degraded" and missing.serial in status["error"], status

    # The disk comes back: the same volume, with its data.
    node.release_volumes()
    missing.connect()
    node.setup_ok(config)
    assert node.fs_uuid(mounted_source()) == uuid
    assert (MOUNT_POINT / "marker").read_bytes() == payload


@pytest.mark.parametrize("backend", ["lvm", "mdadm"])
def test_on_degraded_rebuild_builds_a_new_volume_from_the_disks_present(disks, conf,
                                                                        tool_available, backend):
    made, _ = build(disks, conf, backend, count=3)
    old_uuid = node.fs_uuid(mounted_source())
    missing = made[2]
    boot_without(disks, missing)

    result = node.setup_ok(conf(devices="aws", backend=backend, on_degraded="rebuild"))

    assert node.fs_uuid(mounted_source()) not in ("", old_uuid), result.stderr
    recorded = node.read_state()
    assert sorted(m["serial"] for m in recorded["members"]) == \
        sorted(d.serial for d in made if d is not missing)
    assert missing.serial in result.stderr  # the rebuild says which disk it gave up


@pytest.mark.parametrize("backend", ["lvm", "mdadm"])
def test_concurrent_setups_assemble_once_and_all_succeed(disks, conf, tool_available, backend):
    disks.create(2)
    config = conf(devices="aws", backend=backend)
    processes = [node.start_slurm_scratch(config, "setup") for _ in range(4)]
    deadline = time.monotonic() + 240
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=max(1, deadline - time.monotonic()))
        finally:
            if process.poll() is None:
                process.kill()
        results.append((process.returncode, out, err))

    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    all_stderr = "".join(err for _, _, err in results)
    creator = "ran /usr/sbin/vgcreate" if backend == "lvm" else "ran /usr/sbin/mdadm --create"
    assert all_stderr.count(creator) == 1, all_stderr
    assert all_stderr.count("ran /usr/sbin/mkfs.ext4") == 1, all_stderr
    assert len([m for m in node.mounts() if m[1] == str(MOUNT_POINT)]) == 1
