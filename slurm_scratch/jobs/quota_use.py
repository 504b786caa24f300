"""What job directories use of their quotas, and how many directories the kept area holds: what
`slurm-scratch status` lists and the metrics file sums up (health/status.py, health/metrics.py).

Reading touches the volume, so it runs in a timed child (timed.py), killed at its bound. Job
directories are found as the sweep finds them ([jobs] dir, jobs.sweep.job_dirs); one whose mark
(quota.MARK, which only root can set) names this job and its subvolume or project has a quota. The
figures are the kernel's own accounting, read without walking anyone's files: on btrfs the job's
qgroup counters in sysfs, on ext4/xfs quotactl_fd Q_GETQUOTA for the directory's project.
"""

from __future__ import annotations

import os

from slurm_scratch.config import Config
from slurm_scratch.record import Record


class DirQuota(Record):
    """One job directory's quota."""

    path: str
    job_id: int
    limit_bytes: int  # 0: no limit set
    used_bytes: int


class Use(Record):
    dirs: tuple  # a DirQuota per job directory with a quota (none when [jobs] quota is off)
    kept: int  # entries in the kept area
    error: str = ""  # why the volume could not be read ("" when it could)


def measure(config: Config, node: str, seconds: float) -> Use:
    """Quota use and the kept area's size, read in a child killed after `seconds`."""
    from slurm_scratch import timed

    result = timed.in_child(_reader(config, node), seconds)
    if result.status != "ok":
        return Use(dirs=(), kept=0, error=result.text or f"timed out after {seconds:g} s")
    return decode(result.text)


def encode(kept: int, dirs: list[DirQuota]) -> str:
    """One line for the child's answer (paths hex-encoded: they may hold any byte but '/')."""
    fields = [str(kept)]
    for found in dirs:
        fields += [str(found.job_id), str(found.limit_bytes), str(found.used_bytes), os.fsencode(found.path).hex()]
    return " ".join(fields)


def decode(text: str) -> Use:
    fields = text.split()
    dirs = tuple(DirQuota(job_id=int(job), limit_bytes=int(limit), used_bytes=int(used), path=os.fsdecode(bytes.fromhex(path)))
                 for job, limit, used, path in zip(*[iter(fields[1:])] * 4))
    return Use(dirs=dirs, kept=int(fields[0]))


def totals(dirs: tuple) -> tuple[int, int, int, int]:
    """(directories, sum of limits, bytes used, directories at 90% of their limit or more)."""
    near = sum(1 for found in dirs if found.limit_bytes and found.used_bytes * 10 >= found.limit_bytes * 9)
    return len(dirs), sum(found.limit_bytes for found in dirs), sum(found.used_bytes for found in dirs), near


def _reader(config: Config, node: str):
    def work() -> str:
        from slurm_scratch.jobs import kept
        from slurm_scratch.layout import open_root

        root_fd = open_root(config.volume.mount_point, consult_mountinfo=False)
        try:
            dirs = _quota_dirs(config, node, root_fd) if config.jobs.quota[0] != "off" else []
            return encode(len(kept.listing(config, root_fd)), dirs)
        finally:
            os.close(root_fd)

    return work


def _quota_dirs(config: Config, node: str, root_fd: int) -> list[DirQuota]:
    from slurm_scratch import mounts
    from slurm_scratch.jobs import quota, quota_btrfs, quota_project, sweep

    found: list[DirQuota] = []
    fs_uuid = ""
    for job_dir in sweep.job_dirs(config, node):
        if job_dir.st is None:  # something is mounted on it: not looked into
            continue
        fields = quota.marked_for(_mark(job_dir.path, job_dir.st), job_dir.job_id) or {}
        if fields.get("subvolume", "").isdigit():
            fs_uuid = fs_uuid or mounts.btrfs_fs_uuid(root_fd)
            figures = quota_btrfs.usage(fs_uuid, int(fields["subvolume"]))
        elif fields.get("project", "").isdigit():
            figures = quota_project.usage(root_fd, int(fields["project"]))
        else:
            continue
        if figures is not None:
            found.append(DirQuota(path=job_dir.path, job_id=job_dir.job_id, limit_bytes=figures[0], used_bytes=figures[1]))
    return found


def _mark(path: str, st: os.stat_result) -> str:
    """The quota mark of the directory at `path` if it is still the one the walk saw, else ""."""
    from slurm_scratch.jobs import quota
    from slurm_scratch.layout import DIR_FLAGS, PATH_FLAGS

    try:
        fd_path = os.open(path, PATH_FLAGS)
    except OSError:
        return ""
    try:
        now = os.fstat(fd_path)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return ""
        fd = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd_path)
    except OSError:
        return ""
    finally:
        os.close(fd_path)
    try:
        return quota.read_mark(fd)
    finally:
        os.close(fd)
