"""Inside the VM booted by systemd (lab/vm_systemd.py): what one boot of the node shows, written
as JSON to $VM_RESULTS/facts.json for tests/vm/test_systemd_boot.py, which asserts on it.

    python3 systemd_boot.py cold|reboot|missing|back JOB_ID

Every phase waits (bounded) for slurmd to register and for the health check slurmd ran to
report, then records the units' timestamps, /scratch, the volume record, `scontrol show node`,
`sinfo -R` and the TmpDisk slurmd measured. `cold` and `reboot` then run an ordinary user's job
that writes to $SCRATCH (`cold` also leaves a marker on the volume for the reboot to find).
`missing` (a member disk gone) waits for the drain, submits the user's job and records it
pending once the scheduler has looked at it; `back` (the disk back, the node rebooted) records
that job running on the volume once the health check has resumed the node (slurmctld's state is
on a persistent disk, so the job outlives the reboot).

Standard library only (the guest's bare python3; the checkout is at /src).
"""
from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lab import guest_node  # noqa: E402
from lab.scontrol import (TERMINAL_JOB_STATES, first_record, parse_sinfo_reason,  # noqa: E402
                          sinfo_reason_argv)
from lab.systemd_guest import NODE_NAME, SETUP_UNIT, SLURM_CONF, SLURMD_LOG  # noqa: E402

T = TypeVar("T")
MOUNT_POINT = "/scratch"
MARKER = Path(MOUNT_POINT) / "marker-from-the-first-boot"
HEALTH_STATE = Path("/run/slurm-scratch/health.state")  # written once a health check asked Slurm
UNITS = (SETUP_UNIT, "slurmd.service", "slurmctld.service", "munge.service")
UNIT_PROPERTIES = ("ActiveState", "Result", "ExecMainStatus", "ExecMainStartTimestampMonotonic",
                   "ExecMainExitTimestampMonotonic", "ActiveEnterTimestampMonotonic",
                   "InactiveExitTimestampMonotonic")
USER = "sduser"  # made by lab/systemd_guest.py from node.json
WAIT_S = 120
JOB_SCRIPT = """#!/bin/sh
echo "SCRATCH=$SCRATCH"
head -c 65536 /dev/urandom > "$SCRATCH/data" && echo "written=$(stat -c %s "$SCRATCH/data")"
df -P "$SCRATCH" | tail -n 1 | awk '{print "on=" $6}'
"""


def wait(condition: Callable[[], T], timeout_s: float = WAIT_S, interval_s: float = 0.5) -> T | None:
    """`condition()` until truthy (returned) or `timeout_s` passed (None: the facts then show
    what was there, and the host's assertion says what was missing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(interval_s)


def command(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "HOME": "/root", "SLURM_CONF": str(SLURM_CONF)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def unit(name: str) -> dict[str, str]:
    shown = command("systemctl", "show", name, *[f"--property={p}" for p in UNIT_PROPERTIES])
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def node_record() -> dict[str, str]:
    return first_record(command("scontrol", "show", "node", "-o", NODE_NAME).stdout)


def node_reason() -> str:
    return parse_sinfo_reason(command(*sinfo_reason_argv(NODE_NAME)).stdout)


def registered() -> bool:
    state = node_record().get("State", "")
    return bool(state) and "NOT_RESPONDING" not in state and "UNKNOWN" not in state


def slurmd_tmp_disk() -> int | None:
    """The TmpDisk slurmd measured at start (its log line `CPUs=... TmpDisk=<MB> ...`)."""
    text = SLURMD_LOG.read_text(errors="replace") if SLURMD_LOG.exists() else ""
    found = re.findall(r"\bCPUs=\d+ .*\bTmpDisk=(\d+)", text)
    return int(found[-1]) if found else None


def volume_facts() -> dict:
    mount = guest_node.mount_of(MOUNT_POINT)
    facts: dict = {"mount": list(mount) if mount else None, "volume_json": guest_node.read_state()}
    if mount:
        stats = os.statvfs(MOUNT_POINT)
        facts["scratch_mb"] = stats.f_blocks * stats.f_frsize // (1 << 20)
        facts["fs_uuid"] = guest_node.fs_uuid(mount[0])
    return facts


def submit(script: str) -> int:
    user = pwd.getpwnam(USER)
    argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
            "sbatch", "--parsable", f"--chdir={user.pw_dir}", f"--output={user.pw_dir}/slurm-%j.out",
            "-N1", "-n1"]
    result = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "HOME": user.pw_dir,
                                 "SLURM_CONF": str(SLURM_CONF)}, cwd=user.pw_dir)
    if result.returncode != 0:
        raise RuntimeError(f"sbatch as {USER} exited {result.returncode}: {result.stderr}")
    return int(result.stdout.strip().split(";")[0])


def job_record(job_id: int) -> dict[str, str]:
    return first_record(command("scontrol", "show", "job", "-o", str(job_id)).stdout)


def job_output(job_id: int) -> str | None:
    path = Path(pwd.getpwnam(USER).pw_dir) / f"slurm-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else None


def wait_job_end(job_id: int) -> dict:
    def ended() -> dict[str, str] | None:
        record = job_record(job_id)
        return record if record.get("JobState") in TERMINAL_JOB_STATES else None

    record = wait(ended) or job_record(job_id)
    return {"id": job_id, "record": record, "output": job_output(job_id)}


def boot_facts() -> dict:
    """What every boot records once slurmd registered and its first health check reported."""
    facts: dict = {"registered": bool(wait(registered)),
                   "health_reported": bool(wait(HEALTH_STATE.exists))}
    facts["units"] = {name: unit(name) for name in UNITS}
    facts.update(volume_facts())
    facts["node"] = node_record()
    facts["reason"] = node_reason()
    facts["slurmd_tmp_disk"] = slurmd_tmp_disk()
    return facts


def cold() -> dict:
    facts = boot_facts()
    verify = command("systemd-analyze", "verify", SETUP_UNIT)
    facts["verify"] = {"exit": verify.returncode, "output": verify.stdout + verify.stderr}
    if facts["mount"]:
        MARKER.write_text(facts.get("fs_uuid", ""))
        os.sync()
    facts["job"] = wait_job_end(submit(JOB_SCRIPT))
    return facts


def reboot() -> dict:
    facts = boot_facts()
    facts["marker"] = MARKER.read_text() if MARKER.exists() else None
    facts["job"] = wait_job_end(submit(JOB_SCRIPT))
    return facts


def missing() -> dict:
    facts = boot_facts()

    def drained() -> str | None:
        reason = node_reason()
        return reason if reason.startswith("scratch:") and "DRAIN" in node_record().get("State", "") else None

    facts["drained_reason"] = wait(drained)
    facts["node_when_drained"] = node_record()
    job_id = submit(JOB_SCRIPT)

    def considered() -> dict[str, str] | None:
        """The job once the scheduler has looked at it (it then says why it is pending)."""
        record = job_record(job_id)
        return record if record.get("Reason", "None") != "None" or record.get("JobState") != "PENDING" else None

    facts["job_while_drained"] = {"id": job_id, "record": wait(considered) or job_record(job_id),
                                  "output": job_output(job_id)}
    facts["node_after_job"] = node_record()
    return facts


def back(job_id: int) -> dict:
    """The disk is back and the node rebooted: job `job_id`, which waited, runs."""
    facts = boot_facts()
    facts["marker"] = MARKER.read_text() if MARKER.exists() else None
    facts["job"] = wait_job_end(job_id)
    facts["reason_after_job"] = node_reason()
    return facts


if __name__ == "__main__":
    phase, *args = sys.argv[1:]
    gathered = {"cold": cold, "reboot": reboot, "missing": missing, "back": back}[phase](*map(int, args))
    out = Path(os.environ.get("VM_RESULTS", ".")) / "facts.json"
    out.write_text(json.dumps(gathered, indent=2, sort_keys=True))
    print(json.dumps(gathered, indent=2, sort_keys=True))
