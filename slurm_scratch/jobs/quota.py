"""The per-job quota policy: how large a job's limit is, and which directory is ours to reuse.

`[jobs] quota` is off, a fixed size, a percentage of the volume, or `request`: the job's own
`--tmp` (Slurm's MinTmpDiskNode), which the Prolog's environment does not carry, so it is asked
with one `squeue` of the job under `[jobs] quota_query_timeout`; a job that asked for nothing, or
a Slurm that does not answer in time, gets `[jobs] quota_default`. The mechanisms live in
quota_btrfs (a subvolume with a qgroup) and quota_project (ext4/xfs project quotas).

A directory the Prolog made for a job carries MARK, a `trusted.` extended attribute: only root
can set or change one, and an unprivileged copy does not carry it, so no user can make a
directory the Prolog takes for its own.
"""

from __future__ import annotations

import os

from slurm_scratch.config import Config
from slurm_scratch.jobs.job import JobContext

MARK = "trusted.slurm-scratch"
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def size_bytes(spec: tuple, root_fd: int) -> int:
    """A ("bytes", n) or ("percent", p) setting as bytes on the volume open on root_fd."""
    kind, amount = spec
    if kind == "percent":
        vfs = os.fstatvfs(root_fd)
        return max(1 << 20, int(vfs.f_blocks * vfs.f_frsize * amount / 100))
    return int(amount)


# What the Prolog asks of Slurm: the job's --tmp per node and its GRES per node, as values only.
# Not `scontrol show job`: its Key=Value text holds what the user chose (a job name, a comment, a
# path may contain " MinTmpDiskNode=10T" or " TresPerNode=gres:tmpdisk:9999"), which would forge
# the limit. squeue with one job id sends the same single-job RPC (REQUEST_JOB_INFO_SINGLE).
QUERY_FORMAT = "%d %b"


def requested_tmp(config: Config, job_id: int) -> tuple[int, str]:
    """The job's --tmp per node in bytes (0: none), with one bounded squeue query; never raises."""
    from slurm_scratch import run
    from slurm_scratch.errors import ScratchError

    conf = config.slurm.slurm_conf or os.environ.get("SLURM_CONF", "")
    argv = [config.slurm.squeue, "--noheader", f"--jobs={job_id}", f"--format={QUERY_FORMAT}"]
    try:
        result = run.run(argv, timeout=config.jobs.quota_query_timeout, env={"SLURM_CONF": conf} if conf else None, quiet=True)
    except ScratchError as exc:
        return 0, f"Slurm did not tell the job's --tmp: {exc}"
    fields = result.stdout.split()
    if len(fields) != 2:
        return 0, f"squeue did not answer '<tmp> <gres>' for the job: {result.stdout.strip()[:80]!r}"
    tmp, tres_per_node = fields
    gres, per_count = config.jobs.quota_gres
    count = parse_gres_count(tres_per_node, gres) if gres else None
    if count:
        return count * per_count, f"--gres={gres}:{count}"
    value = parse_min_tmp_disk(tmp)
    if value is None:
        return 0, f"squeue's --tmp for the job is not a size: {tmp!r}"
    return value, "no --tmp" if value == 0 else "--tmp"


def parse_gres_count(tres_per_node: str, gres: str) -> int | None:
    """The job's per-node count of GRES `gres` from squeue's %b (gres:NAME:N in Slurm 22.05,
    gres/NAME:N later, comma-separated; a type between name and count is allowed), or None."""
    for item in tres_per_node.split(","):
        parts = item.replace("gres/", "gres:", 1).split(":")
        if len(parts) >= 3 and parts[0] == "gres" and parts[1] == gres and parts[-1].isdigit():
            return int(parts[-1])
    return None


def parse_min_tmp_disk(value: str) -> int | None:
    """squeue's %d (the job's --tmp per node: megabytes, or with a unit: 0, 500M, 10G) in bytes."""
    unit = _UNITS.get(value[-1:].upper())
    number = value[:-1] if unit else value
    try:
        return int(float(number) * (unit or _UNITS["M"]))
    except ValueError:
        return None


def mark_value(job_id: int, what: str) -> bytes:
    return f"job={job_id} {what}".encode()


def read_mark(fd: int) -> str:
    """The MARK on the directory open on `fd` (an O_PATH descriptor is not enough), or ""."""
    try:
        return os.getxattr(fd, MARK).decode("ascii", errors="replace")
    except OSError:
        return ""


def fields_of(mark: str) -> dict[str, str]:
    """A mark's fields: job, and subvolume (btrfs) or project (ext4/xfs)."""
    return dict(part.partition("=")[::2] for part in mark.split())


def marked_for(mark: str, job_id: int) -> dict[str, str] | None:
    """The mark's fields when it names `job_id`, else None."""
    fields = fields_of(mark)
    return fields if fields.get("job") == str(job_id) else None


def shown_size(size: int) -> str:
    """A size for the log, e.g. 64M or 1.5G."""
    unit = next((unit for unit in ("T", "G", "M", "K") if size >= _UNITS[unit]), "")
    return f"{size / _UNITS[unit]:.4g}{unit}" if unit else f"{size}B"


class JobQuota:
    """The Prolog's quota for one job (in its child): makes the job's directory (a btrfs subvolume,
    or a plain directory for a project quota), limits it, marks it, and judges one found at the
    job's name. `asked`: the job's --tmp as the parent learnt it (quota = request)."""

    def __init__(self, config: Config, job: JobContext, root_fd: int, asked: tuple[int, str] | None) -> None:
        from slurm_scratch import mounts
        from slurm_scratch.errors import ScratchError

        self.config, self.job, self.root_fd = config, job, root_fd
        if config.jobs.quota[0] == "request":
            requested, note = asked or (0, "not asked")
            self.bytes, self.source = (requested, note) if requested else (size_bytes(config.jobs.quota_default, root_fd), f"quota_default: {note}")
        else:
            self.bytes, self.source = size_bytes(config.jobs.quota, root_fd), "[jobs] quota"
        mount = mounts.find_mount(config.volume.mount_point)
        self.fstype = mount.fstype if mount else ""
        if self.fstype not in ("btrfs", "ext4", "xfs"):
            raise ScratchError(f"[jobs] quota is on but {config.volume.mount_point} is {self.fstype or 'not mounted'}: "
                               "per-job quotas need btrfs, ext4 or xfs")

    def make(self, trash_fd: int, name: str) -> None:
        if self.fstype == "btrfs":
            from slurm_scratch.jobs import quota_btrfs

            quota_btrfs.create_subvolume(trash_fd, name)
        else:
            os.mkdir(name, 0o700, dir_fd=trash_fd)

    def limit(self, fd: int) -> str:
        """Limit and mark the new directory open on `fd`; a line for the log."""
        if self.fstype == "btrfs":
            from slurm_scratch.jobs import quota_btrfs

            what = f"subvolume={quota_btrfs.limit_new(self.root_fd, fd, self.bytes)}"
        else:
            from slurm_scratch.jobs import quota_project

            what = f"project={quota_project.limit_new(self.config, self.root_fd, fd, self.job.job_id, self.bytes)}"
        os.setxattr(fd, MARK, mark_value(self.job.job_id, what))
        return f"quota {shown_size(self.bytes)} ({self.source}) on {what.replace('=', ' ')}"

    def reuse(self, fd: int, st: os.stat_result, parent: os.stat_result) -> str | None:
        """A line for the log when the directory open on `fd` is the one the Prolog made for this
        job (its limit set again), else None: it is then moved aside like any squatter's entry."""
        fields = marked_for(read_mark(fd), self.job.job_id)
        if fields is None:
            return None
        if self.fstype == "btrfs":
            from slurm_scratch.jobs import quota_btrfs

            if not quota_btrfs.is_subvolume_root(st, parent) or fields.get("subvolume") != str(quota_btrfs.subvolume_id(fd)):
                return None  # a snapshot of ours (it carries our mark), not ours
            quota_btrfs.set_limit(self.root_fd, int(fields["subvolume"]), self.bytes)
            what = f"subvolume {fields['subvolume']}"
        else:
            from slurm_scratch.jobs import quota_project

            project = quota_project.project_of(fd)
            if fields.get("project") != str(project):
                return None
            quota_project.set_limit(self.root_fd, project, self.bytes)
            what = f"project {project}"
        return f"quota {shown_size(self.bytes)} ({self.source}) on {what} (kept)"
