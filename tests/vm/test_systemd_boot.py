"""The boot unit (etc/systemd/slurm-scratch-setup.service) under a real systemd.

The VM boots Debian's systemd as PID 1 (lab/vm_systemd.py) with two QEMU NVMe disks, a
persistent state disk for /var/lib/slurm-scratch, the project installed with
`make install PREFIX=/usr/local`, its unit enabled as the README says, and Debian's munge,
slurmctld and slurmd units with `TmpFS=/scratch` and a `TmpDisk=` that fits the volume.
Three QEMU runs on the same disks:
1. a cold boot (blank disks: setup builds the volume), then a reboot from inside the guest
   (same machine, same disks: setup must adopt and mount, not rebuild);
2. a boot with one member disk gone: setup fails, slurmd still starts, the node is drained
   with a `scratch:` reason and a user's job stays pending;
3. the disk is back: setup adopts the volume at boot, the health check resumes the node, and
   the job that waited runs on /scratch (slurmctld's state is on a persistent disk).
What each boot showed comes back as JSON (tests/vm/systemd_boot.py) with the boot's journal.
"""
from __future__ import annotations

import json
import re
import sys

import pytest

from lab import vm_systemd
from lab.vm_boot import qemu_unavailable_reason
from lab.vm_image import ensure_image

pytestmark = pytest.mark.vm

GUEST_SCRIPT = "/src/tests/vm/systemd_boot.py"
DISK_BYTES = 1 << 30
DISKS = 2
# slurm.conf's TmpDisk: below what the striped ext4 gives (LVM metadata, ext4 overhead).
TMP_DISK_MB = DISKS * (DISK_BYTES >> 20) * 8 // 10
USER, UID = "sduser", 4302  # tests/vm/systemd_boot.py submits as this user
BOOT_TIMEOUT_S = 420
SETUP = "slurm-scratch-setup.service"


def node_description(*phases: str) -> dict:
    """node.json: one boot per phase of tests/vm/systemd_boot.py (with its arguments)."""
    return {
        "boots": [f"python3 {GUEST_SCRIPT} {phase}" for phase in phases],
        "tool_conf": {"volume": {"devices": f"/dev/disk/by-id/{vm_systemd.NVME_MODEL_BY_ID}*"}},
        "tmp_disk_mb": TMP_DISK_MB,
        "users": [[USER, UID]],
        "timeout_s": BOOT_TIMEOUT_S,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{phase: (facts, BootResult, SystemdRun)} of the four boots (three QEMU runs)."""
    reason = qemu_unavailable_reason()
    if reason:
        pytest.skip(f"no VM possible here: {reason}")
    image = ensure_image()
    work = tmp_path_factory.mktemp("systemd-node")
    installed = vm_systemd.install_tree(work / "installed")
    disks = vm_systemd.make_nvme_disks(work, DISKS, DISK_BYTES)
    state = vm_systemd.make_state_disks(work)
    first = vm_systemd.boot(image, work / "run-1", installed, node_description("cold", "reboot"),
                            disks, state)
    second = vm_systemd.boot(image, work / "run-2", installed, node_description("missing"),
                             disks[:1], state)
    waiting = found_facts(second, 0)
    job_id = waiting["job_while_drained"]["id"] if waiting else 0
    third = vm_systemd.boot(image, work / "run-3", installed, node_description(f"back {job_id}"),
                            disks, state)
    for run in (first, second, third):
        print(f"\n[vm-systemd] {run.describe().splitlines()[0]}", file=sys.stderr)
        for boot in run.boots:
            print(f"[vm-systemd] boot {boot.index}: {boot.boot_times.strip()}", file=sys.stderr)
    return {phase: (found_facts(run, boot), run.boots[boot], run)
            for phase, run, boot in (("cold", first, 0), ("reboot", first, 1),
                                     ("missing", second, 0), ("back", third, 0))}


def found_facts(run: vm_systemd.SystemdRun, boot: int) -> dict | None:
    """What tests/vm/systemd_boot.py wrote in that boot (None if it did not finish)."""
    result = run.boots[boot]
    facts_file = result.directory / "facts.json"
    if result.exit_code != 0 or not facts_file.exists():
        return None
    return json.loads(facts_file.read_text())


def facts_of(runs, phase: str) -> tuple[dict, vm_systemd.BootResult]:
    facts, result, run = runs[phase]
    if facts is None:
        pytest.fail(f"the {phase} boot gave no facts: {run.describe()}", pytrace=False)
    return facts, result


def journal_order(journal: str, *patterns: str) -> list[int]:
    """The line number of the first journal line matching each pattern (-1: none)."""
    lines = journal.splitlines()
    found = []
    for pattern in patterns:
        found.append(next((n for n, line in enumerate(lines) if re.search(pattern, line)), -1))
    return found


def assert_setup_before_slurmd(facts: dict, result: vm_systemd.BootResult, outcome: str) -> None:
    setup, slurmd = facts["units"][SETUP], facts["units"]["slurmd.service"]
    assert setup["Result"] == outcome, setup
    assert slurmd["ActiveState"] == "active", slurmd
    setup_done = int(setup["ExecMainExitTimestampMonotonic"])
    slurmd_start = int(slurmd["ExecMainStartTimestampMonotonic"])
    assert 0 < setup_done <= slurmd_start, (setup, slurmd)
    finished = "Finished" if outcome == "success" else "Failed to start"
    setup_line, slurmd_line = journal_order(
        result.journal, rf"systemd\[1\]: {finished} {re.escape(SETUP)}",
        r"systemd\[1\]: Started slurmd\.service")
    assert 0 <= setup_line < slurmd_line, (setup_line, slurmd_line, result.directory)


def assert_volume_mounted(facts: dict) -> None:
    assert facts["mount"] is not None, "no /scratch after boot"
    source, point, fstype = facts["mount"]
    assert (point, fstype) == ("/scratch", "ext4"), facts["mount"]
    members = facts["volume_json"]["members"]
    assert len(members) == DISKS, members


def assert_tmp_disk(facts: dict) -> None:
    """slurmd measured the mounted volume (TmpFS=/scratch), slurmctld shows the configured
    TmpDisk, which the volume holds."""
    assert facts["registered"] and facts["health_reported"], facts["node"]
    assert facts["slurmd_tmp_disk"] == facts["scratch_mb"], facts
    assert int(facts["node"]["TmpDisk"]) == TMP_DISK_MB <= facts["scratch_mb"], facts["node"]
    assert "DRAIN" not in facts["node"]["State"] and facts["reason"] == "", facts["node"]


def assert_job_ran_on_scratch(job: dict) -> None:
    assert job["record"].get("JobState") == "COMPLETED", job
    output = job["output"] or ""
    assert f"SCRATCH=/scratch/job_{job['id']}\n" in output, output
    assert "written=65536\n" in output and "on=/scratch\n" in output, output


def test_cold_boot_builds_and_mounts_the_volume_before_slurmd_starts(runs):
    facts, result = facts_of(runs, "cold")
    assert_setup_before_slurmd(facts, result, "success")
    assert_volume_mounted(facts)
    assert re.search(r"setup: .*mkfs\.ext4", result.journal), "the cold boot made no filesystem"
    assert_tmp_disk(facts)
    assert_job_ran_on_scratch(facts["job"])


def test_reboot_adopts_the_same_volume_before_slurmd_starts(runs):
    cold, _ = facts_of(runs, "cold")
    facts, result = facts_of(runs, "reboot")
    assert_setup_before_slurmd(facts, result, "success")
    assert_volume_mounted(facts)
    assert facts["fs_uuid"] == cold["fs_uuid"], "the reboot made a new filesystem"
    assert facts["marker"] == cold["fs_uuid"], "the first boot's data is gone"
    assert not re.search(r"setup: .*(mkfs|pvcreate|vgcreate|lvcreate)", result.journal)
    assert_tmp_disk(facts)
    assert_job_ran_on_scratch(facts["job"])


def test_systemd_finds_nothing_wrong_with_the_unit(runs):
    facts, _ = facts_of(runs, "cold")
    assert facts["verify"]["exit"] == 0, facts["verify"]
    assert SETUP not in facts["verify"]["output"], facts["verify"]


def test_the_unit_pulls_in_no_deprecated_udev_settle(runs):
    for phase in ("cold", "reboot"):
        _, result = facts_of(runs, phase)
        assert "systemd-udev-settle.service is deprecated" not in result.journal
        assert not re.search(r"Starting systemd-udev-settle\.service", result.journal)


def test_a_missing_disk_leaves_slurmd_up_and_the_node_drained_taking_no_job(runs):
    facts, result = facts_of(runs, "missing")
    assert_setup_before_slurmd(facts, result, "exit-code")
    assert facts["mount"] is None, facts["mount"]
    assert re.search(r"slurm-scratch-setup\[\d+\]: .*SSNODE02", result.journal), \
        "setup's failure does not name the missing disk"
    assert facts["registered"], facts["node"]
    assert (facts["drained_reason"] or "").startswith("scratch:"), facts["node_when_drained"]
    waiting = facts["job_while_drained"]
    record = waiting["record"]
    assert record["JobState"] == "PENDING" and waiting["output"] is None, waiting
    assert record["Reason"].startswith(("ReqNodeNotAvail", "Nodes_required_for_job_are_DOWN")), record
    assert "DRAIN" in facts["node_after_job"]["State"], facts["node_after_job"]


def test_once_the_disk_is_back_the_rebooted_node_runs_the_waiting_job_on_its_volume(runs):
    cold, _ = facts_of(runs, "cold")
    waited, _ = facts_of(runs, "missing")
    facts, result = facts_of(runs, "back")
    assert_setup_before_slurmd(facts, result, "success")
    assert_volume_mounted(facts)
    assert facts["fs_uuid"] == cold["fs_uuid"] and facts["marker"] == cold["fs_uuid"], \
        "the volume was not adopted with its data"
    assert facts["slurmd_tmp_disk"] == facts["scratch_mb"], facts
    assert facts["job"]["id"] == waited["job_while_drained"]["id"]
    assert_job_ran_on_scratch(facts["job"])
    assert facts["reason_after_job"] == "", facts["node"]
