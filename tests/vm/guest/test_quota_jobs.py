"""Per-job quotas with real Slurm jobs on ext4 and xfs (issue 11), in the VM: Debian's kernel has
the quota formats and XFS quota that the build machine's kernel lacks.

Two EC2 instance-store disks striped (LVM) with `[jobs] quota = 64M`; munged, slurmctld and slurmd
run with the project's hooks (slurm_node.py). An ordinary user's sbatch job that writes past its
limit has its own write refused (ext4: "Disk quota exceeded"; xfs reports a project's limit as a
full filesystem: "No space left on device") while its neighbour, a job of another user on the same
node at the same time, writes what it wants; the node stays up with no reason; once the Epilog and
the reaper are done, no project id is left in use. Every wait is a poll with a deadline; the
daemons are stopped by PID whatever happens."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from lab import guest_node as node
from lab.nvme_disks import EC2_INSTANCE_STORE
from slurm_node import TOOL_CONF, poll

VM_TIMEOUT_S = 1200

MOUNT_POINT = Path("/scratch")
IDS = MOUNT_POINT / ".slurm-scratch-project-ids"
WORKDIR = Path("/var/tmp/slurm-quota-jobs")
HEALTH_STATE = Path("/run/slurm-scratch/health.state")
GREEDY, NEIGHBOUR = ("qtuser1", 4311), ("qtuser2", 4312)
MIB = 1 << 20
JOB = """#!/bin/sh
touch "$SCRATCH/started"
while [ ! -e "{go}" ]; do sleep 0.2; done
dd if=/dev/zero of="$SCRATCH/data" bs=1M count={mib} conv=fsync 2>&1 | grep -v records
echo "wrote=$(stat -c %s "$SCRATCH/data")"
"""


def output(job_id: int, user: str) -> str:
    path = WORKDIR / "home" / user / f"slurm-{job_id}.out"
    return path.read_text() if path.exists() else "(no output file)"


@pytest.mark.timeout(600)  # LVM, mkfs and three daemons under TCG, then two jobs
@pytest.mark.parametrize("filesystem", ["ext4", "xfs"])
def test_a_job_past_its_quota_fails_its_own_write_while_its_neighbour_finishes(disks, slurm_stack, filesystem):
    disks.create(2, model=EC2_INSTANCE_STORE)
    settings = {"volume": {"devices": "aws", "backend": "lvm", "filesystem": filesystem},
                "jobs": {"quota": "64M", "quota_project_ids": "7100-7199"}}
    node_stack = slurm_stack(WORKDIR, settings, (GREEDY, NEIGHBOUR))
    built = node.setup_ok(TOOL_CONF)
    assert "project quotas enforced" in built.stderr, node.describe(built)
    node_stack.start()
    poll("slurmd's first health check to report to Slurm", HEALTH_STATE.exists, 60, describe=node_stack.describe_node)

    go = WORKDIR / "home" / "go"  # both jobs write at the same time, once both have started
    greedy = node_stack.submit(GREEDY[0], JOB.format(go=go, mib=100))
    neighbour = node_stack.submit(NEIGHBOUR[0], JOB.format(go=go, mib=48))
    for job_id in (greedy, neighbour):
        poll(f"job {job_id} to start", lambda job_id=job_id: (MOUNT_POINT / f"job_{job_id}" / "started").exists(), 120,
             describe=lambda job_id=job_id: f"{node_stack.job_info(job_id)}\n{node_stack.describe_node()}")
    go.write_text("")
    os.chmod(go, 0o644)
    for job_id in (greedy, neighbour):
        node_stack.wait_job(job_id, timeout_s=180)

    refused = "No space left on device" if filesystem == "xfs" else "Disk quota exceeded"
    greedy_out, neighbour_out = output(greedy, GREEDY[0]), output(neighbour, NEIGHBOUR[0])
    assert refused in greedy_out, greedy_out
    wrote = re.search(r"^wrote=(\d+)$", greedy_out, re.M)
    assert wrote and int(wrote.group(1)) <= 64 * MIB, greedy_out
    assert f"wrote={48 * MIB}\n" in neighbour_out and refused not in neighbour_out, neighbour_out
    state = node_stack.node_state()
    assert "DRAIN" not in state and "DOWN" not in state and node_stack.node_reason() == "", node_stack.describe_node()

    # the Epilogs retired both directories; once the reaper has deleted the data, no id is in use
    trash = MOUNT_POINT / ".slurm-scratch-trash"
    poll("the Epilogs to retire the job directories and the reaper to empty the trash",
         lambda: not any((MOUNT_POINT / f"job_{job_id}").exists() for job_id in (greedy, neighbour))
         and not os.listdir(trash), 120)
    poll("the project ids to be released", lambda: not os.listdir(IDS), 60, describe=lambda: str(os.listdir(IDS)))
