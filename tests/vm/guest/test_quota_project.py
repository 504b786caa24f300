"""Per-job project quotas on ext4 and xfs ([jobs] quota; issue 11), in the VM: Debian's kernel has
the quota formats and XFS quota that the build machine's kernel lacks.

setup makes ext4 with -O quota,project and mounts ext4 and xfs with prjquota; each job directory
gets a project id of [jobs] quota_project_ids (never two jobs one id), the inherit flag and the
limit; the trash gets neither; the id is released once the reaper has deleted the data."""
from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from lab import guest_node as node

MOUNT_POINT = Path("/scratch")
IDS = MOUNT_POINT / ".slurm-scratch-project-ids"
MIB = 1 << 20
USERS = {"nobody": 65534, "daemon": 1}


def job_env(job_id: int, user: str = "nobody") -> dict[str, str]:
    uid = USERS[user]
    return {"SLURM_JOB_ID": str(job_id), "SLURM_JOB_UID": str(uid), "SLURM_JOB_GID": str(uid if user == "daemon" else 65534),
            "SLURM_JOB_USER": user, "SLURMD_NODENAME": "vm"}


def hook(config: Path, name: str, job_id: int, user: str = "nobody") -> subprocess.CompletedProcess:
    return node.slurm_scratch(config, name, extra_env=job_env(job_id, user), timeout=120)


def write_as(user: str, path: Path, mib: int) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={USERS[user]}", f"--regid={USERS[user] if user == 'daemon' else 65534}",
                           "--clear-groups", "dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"],
                          capture_output=True, text=True, timeout=120)


def project_of(path: Path) -> tuple[int, bool]:
    """(project id, inherit flag) as lsattr shows them."""
    fields = subprocess.run(["lsattr", "-pd", str(path)], capture_output=True, text=True, check=True).stdout.split()
    return int(fields[0]), "P" in fields[1]


def wait_trash_empty() -> None:
    trash = MOUNT_POINT / ".slurm-scratch-trash"
    deadline = time.monotonic() + 60
    while os.listdir(trash):
        assert time.monotonic() < deadline, f"the reaper left {os.listdir(trash)}"
        time.sleep(0.1)


@pytest.mark.parametrize("filesystem", ["ext4", "xfs"])
def test_project_quota_per_job(disks, conf, tool_available, filesystem):
    disks.create(1, size="1G")
    config = conf(devices="aws", backend="lvm", filesystem=filesystem,
                  sections={"jobs": {"quota": "64M", "quota_project_ids": "7000-7002"}})
    built = node.setup_ok(config)
    assert "project quotas enforced" in built.stderr, node.describe(built)
    options = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", str(MOUNT_POINT)], capture_output=True, text=True).stdout
    assert {"prjquota", "pquota"} & set(options.strip().split(",")), options  # the filesystem's own options
    assert stat.S_IMODE(os.stat(MOUNT_POINT).st_mode) == 0o755

    for job_id, user in ((101, "nobody"), (102, "daemon")):
        started = hook(config, "prolog", job_id, user)
        assert started.returncode == 0, node.describe(started)
    greedy, neighbour = MOUNT_POINT / "job_101", MOUNT_POINT / "job_102"
    (greedy_id, inherit), (neighbour_id, _) = project_of(greedy), project_of(neighbour)
    assert inherit and greedy_id != neighbour_id and {greedy_id, neighbour_id} <= {7000, 7001, 7002}
    assert sorted(os.listdir(IDS)) == sorted([str(greedy_id), str(neighbour_id)])
    assert project_of(MOUNT_POINT / ".slurm-scratch-trash") == (0, False)

    # df $SCRATCH inside the job shows the job's limit (project quota + inherit flag)
    size = os.statvfs(greedy)
    assert size.f_blocks * size.f_frsize == 64 * MIB

    over = write_as("nobody", greedy / "big", 100)
    # xfs reports a project quota's limit as a full filesystem (ENOSPC), as its df shows it; ext4 as EDQUOT
    refused = "No space left on device" if filesystem == "xfs" else "Disk quota exceeded"
    assert over.returncode != 0 and refused in over.stderr, over.stderr
    assert os.path.getsize(greedy / "big") <= 64 * MIB
    assert project_of(greedy / "big")[0] == greedy_id
    assert write_as("daemon", neighbour / "data", 60).returncode == 0

    # a requeued job keeps its directory, data and project
    again = hook(config, "prolog", 102, "daemon")
    assert again.returncode == 0 and "(kept)" in again.stderr, node.describe(again)
    assert project_of(neighbour)[0] == neighbour_id and os.path.getsize(neighbour / "data") == 60 * MIB

    # the Epilog retires (a rename into the trash, across projects: no EXDEV), the reaper deletes
    # and only then releases the id; the next job gets a fresh limit
    ended = hook(config, "epilog", 101)
    assert ended.returncode == 0, node.describe(ended)
    wait_trash_empty()
    deadline = time.monotonic() + 30
    while str(greedy_id) in os.listdir(IDS):
        assert time.monotonic() < deadline, "the project id was not released"
        time.sleep(0.1)
    third = hook(config, "prolog", 103)
    assert third.returncode == 0, node.describe(third)
    assert write_as("nobody", MOUNT_POINT / "job_103" / "data", 60).returncode == 0


@pytest.mark.parametrize("filesystem", ["ext4", "xfs"])
def test_two_jobs_never_share_a_project_id_and_an_exhausted_range_is_named(disks, conf, tool_available, filesystem):
    disks.create(1, size="1G")
    config = conf(devices="aws", backend="lvm", filesystem=filesystem,
                  sections={"jobs": {"quota": "32M", "quota_project_ids": "7100-7101"}})
    node.setup_ok(config)
    both = [subprocess.Popen(node.slurm_scratch_argv("prolog"), env=dict(node.tool_env(config), **job_env(job_id)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for job_id in (201, 203)]
    for started in both:
        assert started.wait(timeout=120) == 0, started.stderr.read()
    assert {project_of(MOUNT_POINT / "job_201")[0], project_of(MOUNT_POINT / "job_203")[0]} == {7100, 7101}
    full = hook(config, "prolog", 205)
    assert full.returncode != 0 and "quota_project_ids = 7100-7101 is in use" in full.stderr, node.describe(full)


def test_a_directory_not_made_by_the_prolog_is_moved_aside(disks, conf, tool_available):
    disks.create(1, size="1G")
    config = conf(devices="aws", backend="lvm", filesystem="xfs", sections={"jobs": {"quota": "32M"}})
    node.setup_ok(config)
    squat = MOUNT_POINT / "job_301"
    squat.mkdir()
    os.chown(squat, 65534, 65534)
    started = hook(config, "prolog", 301)
    assert started.returncode == 0 and "moved aside" in started.stderr, node.describe(started)
    assert project_of(squat)[1] and os.listdir(squat) == []


def test_the_job_owner_and_project_ids(disks, conf, tool_available):
    """What the kernel lets a file's owner do with its project id (reported, for the README): in
    the initial user namespace the owner may change it (FS_IOC_FSSETXATTR), taking the file out of
    the job's project quota. This test pins the behaviour down so that the README stays true."""
    disks.create(1, size="1G")
    config = conf(devices="aws", backend="lvm", filesystem="xfs", sections={"jobs": {"quota": "32M"}})
    node.setup_ok(config)
    assert hook(config, "prolog", 401).returncode == 0
    target = MOUNT_POINT / "job_401" / "f"
    assert write_as("nobody", target, 1).returncode == 0
    changed = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "chattr", "-p", "0", str(target)],
                             capture_output=True, text=True, timeout=30)
    print(f"owner's chattr -p 0: exit {changed.returncode} {changed.stderr.strip()}; project now {project_of(target)[0]}")
    assert changed.returncode == 0 and project_of(target)[0] == 0
