"""The seed's story end to end, inside one VM: a node boots with two EC2 instance-store disks,
the boot-time `slurm-scratch setup` stripes them into vg.01/lv_ephemeral (ext4 at /scratch),
munged + slurmctld + slurmd run with the project's hooks, an ordinary user's job writes to
$SCRATCH, a reboot keeps the data, a pulled disk drains the node with a `scratch:` reason and
the node is resumed by the health check once the disk is back -- or, with
`on_degraded = rebuild`, once setup has rebuilt the volume from the disk that is left.

Every wait is a poll with a deadline; the daemons are stopped by PID whatever happens."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from lab import guest_node as node
from lab.nvme_disks import EC2_INSTANCE_STORE, sh
from slurm_node import TOOL_CONF, poll

VM_TIMEOUT_S = 600

MOUNT_POINT = Path("/scratch")
VG, LV = "vg.01", "lv_ephemeral"
LV_DEVICE = f"/dev/mapper/{VG}-{LV}"
WORKDIR = Path("/var/tmp/slurm-full-stack")
USER, UID = "fsuser", 4301
TRASH = MOUNT_POINT / ".slurm-scratch-trash"
HEALTH_STATE = Path("/run/slurm-scratch/health.state")  # drain.STATE_FILE: written once Slurm was asked
DRAIN_WAIT_S = 60  # HealthCheckInterval is 5 s
RESUME_WAIT_S = 60

JOB_SCRIPT = """#!/bin/sh
set -e
echo "SCRATCH=$SCRATCH"
head -c 1048576 /dev/urandom > "$SCRATCH/data"
echo "written=$(stat -c %s "$SCRATCH/data")"
stat -c "dir=%U:%a" "$SCRATCH"
df -P "$SCRATCH" | tail -n 1 | awk '{print "fs=" $1 " on=" $6}'
"""


class Steps:
    """Prints how long each step of the story took (in the guest's junit output)."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()

    def done(self, what: str) -> None:
        now = time.monotonic()
        print(f"[full-stack] {what}: {now - self.last:.1f} s (total {now - self.started:.1f} s)",
              flush=True)
        self.last = now


# -- the steps of the story -------------------------------------------------------------------
def boot_node(disks, make_stack, settings, steps: Steps):
    """Two EC2 instance-store disks, `setup` as at boot, then munged, slurmctld and slurmd."""
    made = disks.create(2, model=EC2_INSTANCE_STORE)
    for disk in made:
        assert re.fullmatch(r"AWS[0-9A-F]{17}", disk.serial), disk.serial
        assert disk.by_id.name == f"nvme-Amazon_EC2_NVMe_Instance_Storage_{disk.serial}"
        assert disk.by_id.exists(), f"udev made no {disk.by_id}"
        controller = disk.controller()
        assert (controller / "model").read_text().strip() == EC2_INSTANCE_STORE
    stack = make_stack(WORKDIR, settings, [(USER, UID)])
    steps.done("2 EC2 instance-store disks, slurm.conf, tool config")

    boot = node.setup_ok(TOOL_CONF)
    assert_striped_volume(made, boot)
    steps.done("boot-time setup (vg.01/lv_ephemeral over 2 disks, ext4, /scratch)")
    assert_healthy_volume()

    stack.start()
    wait_first_health_check(stack)
    state = stack.node_state()
    assert "DRAIN" not in state and stack.node_reason() == "", stack.describe_node()
    steps.done("munged, slurmctld, slurmd started; node up")
    return made, stack


def assert_healthy_volume() -> None:
    """The tool's own health check (report only) finds the fresh volume healthy (it once said
    'LV ... not active' for every LVM volume: bookworm's `lvs --readonly` reports state 'X')."""
    check = node.slurm_scratch(TOOL_CONF, "healthcheck", "--report-only", "--node", "vm")
    assert check.returncode == 0 and check.stdout.startswith("ok:"), node.describe(check)


def assert_striped_volume(made, setup_result) -> None:
    layout = node.lv_layout(VG, LV)
    assert (layout["stripes"], layout["stripe_size"]) == ("2", "64.00k"), layout
    devices = {str(disk.device()) for disk in made}
    used = {part.split("(")[0] for part in layout["devices"].split(",")}
    assert used == devices, f"LV on {used}, the instance-store disks are {devices}"
    mount = node.mount_of(str(MOUNT_POINT))
    assert mount is not None, "/scratch not mounted: " + node.describe(setup_result)
    assert os.path.realpath(mount[0]) == os.path.realpath(LV_DEVICE) and mount[2] == "ext4", mount
    recorded = node.read_state()
    assert sorted(m["serial"] for m in recorded["members"]) == sorted(d.serial for d in made)


def run_job(stack, steps: Steps) -> int:
    """The user's job writes 1 MiB to $SCRATCH; the Epilog retires the directory."""
    job_id = stack.submit(USER, JOB_SCRIPT)
    info = stack.wait_job(job_id)
    output_file = WORKDIR / "home" / USER / f"slurm-{job_id}.out"
    output = output_file.read_text() if output_file.exists() else "(no output file)"
    assert info["JobState"] == "COMPLETED", f"job {job_id}: {info}\n{output}"
    job_dir = MOUNT_POINT / f"job_{job_id}"
    assert f"SCRATCH={job_dir}\n" in output, output
    assert "written=1048576\n" in output, output
    assert f"dir={USER}:700\n" in output, output
    fs = re.search(r"^fs=(\S+) on=(\S+)$", output, re.M)
    assert fs and fs.group(2) == str(MOUNT_POINT), output
    assert os.path.realpath(fs.group(1)) == os.path.realpath(LV_DEVICE), output
    poll(f"the Epilog to retire {job_dir} and the reaper to empty the trash",
         lambda: not job_dir.exists() and trash_empty(), 60)
    steps.done(f"job {job_id} as {USER} wrote to $SCRATCH; its directory retired")
    return job_id


def trash_empty() -> bool:
    return not TRASH.exists() or not any(TRASH.iterdir())


def write_marker() -> bytes:
    """Data root leaves on the volume outside any job directory."""
    payload = os.urandom(256 << 10)
    (MOUNT_POINT / "marker").write_bytes(payload)
    os.sync()
    return payload


def wait_first_health_check(stack) -> None:
    """Until the health check slurmd runs at start has told Slurm what it found (/run is
    empty at boot, so the first check always asks Slurm and then remembers it)."""
    poll("slurmd's first health check to report to Slurm", HEALTH_STATE.exists, 30,
         describe=stack.describe_node)


def wait_drained(stack, what: str) -> str:
    def drained():
        reason = stack.node_reason()
        return reason if reason.startswith("scratch:") and "DRAIN" in stack.node_state() else None
    return poll(f"the health check to drain the node ({what})", drained, DRAIN_WAIT_S,
                describe=stack.describe_node)


def pull_disk(stack, disk, steps: Steps) -> None:
    """Pull `disk`: the health check drains the node, naming the problem in the layers (the LV
    lost a leg), the kernel's I/O errors on the disk (or the LV), or, if ext4 already gave up, as
    read-only."""
    disk.disconnect()
    reason = wait_drained(stack, f"{disk.serial} pulled")
    assert reason in (f"scratch: LV {VG}/{LV} partial (a disk is missing)",
                      f"scratch: {MOUNT_POINT} read-only") or reason.startswith("scratch: I/O errors on /dev/"), reason
    steps.done(f"disk pulled -> drained: {reason!r}")


def wait_resumed(stack, what: str) -> None:
    def resumed():
        state = stack.node_state()
        return "DRAIN" not in state and "DOWN" not in state and stack.node_reason() == ""
    poll(f"the health check to resume the node ({what})", resumed, RESUME_WAIT_S,
         describe=stack.describe_node)


# -- the tests --------------------------------------------------------------------------------
def test_boot_job_reboot_pulled_disk_drains_and_its_return_resumes(disks, slurm_stack):
    steps = Steps()
    made, stack = boot_node(disks, slurm_stack, {}, steps)
    uuid = node.fs_uuid(LV_DEVICE)

    run_job(stack, steps)
    marker = write_marker()

    # A reboot: slurmd stops, the volume goes down, the disks go and come back with their data,
    # /run is emptied; the boot-time setup mounts the same volume again.
    stack.stop_slurmd()
    problems = node.release_volumes()  # nothing may hold /scratch once slurmd is gone
    assert not problems, problems
    node.reboot(disks)
    assert node.mount_of(str(MOUNT_POINT)) is None
    again = node.setup_ok(TOOL_CONF)
    assert node.fs_uuid(LV_DEVICE) == uuid, "reformatted at reboot: " + again.stderr
    assert "mkfs" not in again.stderr, again.stderr
    assert_striped_volume(made, again)
    assert (MOUNT_POINT / "marker").read_bytes() == marker
    steps.done("reboot: same volume, marker kept")
    stack.start_slurmd()
    wait_first_health_check(stack)
    assert stack.node_reason() == "", stack.describe_node()
    run_job(stack, steps)

    # One disk pulled: the health check drains the node, naming the problem.
    pulled = made[1]
    pull_disk(stack, pulled, steps)

    # The disk is put back and the volume repaired as an admin would: taken down, its ext4
    # checked (the writes that failed while the disk was gone left errors recorded in the
    # superblock, which the health check reports until fsck clears them), and set up again as
    # at boot. The running slurmd's next health check resumes the node.
    pulled.connect()
    with stack.health_checks_paused():
        problems = node.release_volumes()
        assert not problems, problems
        sh("vgchange", "-ay", VG)
        fsck = sh("e2fsck", "-fy", LV_DEVICE, check=False, timeout=120)
        assert fsck.returncode in (0, 1), f"e2fsck exited {fsck.returncode}: {fsck.stdout}{fsck.stderr}"
        repaired = node.setup_ok(TOOL_CONF)
        # the kernel's I/O errors while the disk was gone hold the node drained until cleared
        cleared = node.slurm_scratch(TOOL_CONF, "healthcheck", "--clear-io-errors", "--report-only", "--node", "vm")
        assert "cleared:" in cleared.stdout, cleared.stdout + cleared.stderr
    assert node.fs_uuid(LV_DEVICE) == uuid, "reformatted at repair: " + repaired.stderr
    assert_striped_volume(made, repaired)
    assert (MOUNT_POINT / "marker").read_bytes() == marker
    wait_resumed(stack, f"{pulled.serial} back")
    steps.done("disk back, volume set up again -> resumed")
    run_job(stack, steps)


def test_a_pulled_disk_that_stays_gone_is_rebuilt_and_the_node_resumed(disks, slurm_stack):
    steps = Steps()
    made, stack = boot_node(disks, slurm_stack, {"volume": {"on_degraded": "rebuild"}}, steps)
    old_uuid = node.fs_uuid(LV_DEVICE)

    gone, kept = made
    pull_disk(stack, gone, steps)

    # The node reboots and the disk does not come back: setup rebuilds from the disk present.
    stack.stop_slurmd()
    problems = node.release_volumes()
    assert not problems, problems
    kept.disconnect()  # the kernel logs I/O errors of the disconnect: they belong to the old boot
    node.clear_boot_state()
    kept.connect()
    node.release_volumes()  # what udev auto-activated from the one disk (a partial VG)
    rebuilt = node.setup_ok(TOOL_CONF)
    assert gone.serial in rebuilt.stderr, "the rebuild does not name the lost disk: " + rebuilt.stderr
    new_uuid = node.fs_uuid(LV_DEVICE)
    assert new_uuid not in ("", old_uuid), rebuilt.stderr
    layout = node.lv_layout(VG, LV)
    assert layout["stripes"] == "1" and layout["devices"].startswith(str(kept.device())), layout
    assert [m["serial"] for m in node.read_state()["members"]] == [kept.serial]
    steps.done("reboot without the disk: volume rebuilt on the one left")

    stack.start_slurmd()
    wait_resumed(stack, "volume rebuilt")
    steps.done("slurmd started -> health check resumed the node")
    run_job(stack, steps)
