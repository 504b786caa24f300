"""ext4 and xfs: a job directory gets a project id of its own, the project-inherit flag, and a
project quota limit.

Ids come from `[jobs] quota_project_ids`. Which are in use is kept on the volume itself, in root's
0700 directory PROJECT_IDS_NAME, one file per id made with O_EXCL (two Prologs racing for an id:
one wins, the other takes the next), so the record lives exactly as long as the data it accounts
for; the reaper removes an id's file once it has deleted the directory that carried the id (not
while it waits in the trash). The trash and the levels above job directories never carry the
inherit flag: renaming a directory into a directory of another project fails with EXDEV.
"""

from __future__ import annotations

import os
import struct

from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import PROJECT_IDS_NAME, open_private_dir

FSXATTR = "IIIII8x"  # fsx_xflags, fsx_extsize, fsx_nextents, fsx_projid, fsx_cowextsize, padding
FS_IOC_FSGETXATTR = 2 << 30 | 28 << 16 | ord("X") << 8 | 31
FS_IOC_FSSETXATTR = 1 << 30 | 28 << 16 | ord("X") << 8 | 32
FS_XFLAG_PROJINHERIT = 0x200
SYS_QUOTACTL_FD = 443  # x86_64 and aarch64 (Linux 5.14)
Q_GETQUOTA, Q_SETQUOTA, PRJQUOTA, QIF_BLIMITS = 0x800007, 0x800008, 2, 1
DQBLK = "QQQQQQQQI4x"  # struct if_dqblk: limits in 1 KiB blocks


def project_of(fd: int) -> int:
    import fcntl

    return struct.unpack(FSXATTR, fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(28)))[3]


def _set_project(fd: int, project: int) -> None:
    import fcntl

    xflags, extsize, nextents, _, cowextsize = struct.unpack(FSXATTR, fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(28)))
    fcntl.ioctl(fd, FS_IOC_FSSETXATTR, struct.pack(FSXATTR, xflags | FS_XFLAG_PROJINHERIT, extsize, nextents, project, cowextsize))


def set_limit(root_fd: int, project: int, limit_bytes: int) -> None:
    """The project's hard block limit (quotactl_fd on the mounted volume)."""
    import ctypes

    dqblk = ctypes.create_string_buffer(struct.pack(DQBLK, (limit_bytes + 1023) // 1024, 0, 0, 0, 0, 0, 0, 0, QIF_BLIMITS))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_QUOTACTL_FD, root_fd, Q_SETQUOTA << 8 | PRJQUOTA, project, dqblk) != 0:
        code = ctypes.get_errno()
        raise ScratchError(f"cannot set the project quota of project {project} ({os.strerror(code)}): is the volume "
                           "mounted with prjquota (and ext4 made with -O quota,project)? `slurm-scratch setup` does both when [jobs] quota is on")


def usage(root_fd: int, project: int) -> tuple[int, int] | None:
    """(hard block limit, bytes used) of `project` (quotactl_fd Q_GETQUOTA), or None when the
    kernel has no figures for it."""
    import ctypes

    dqblk = ctypes.create_string_buffer(struct.calcsize(DQBLK))
    if ctypes.CDLL(None, use_errno=True).syscall(SYS_QUOTACTL_FD, root_fd, Q_GETQUOTA << 8 | PRJQUOTA, project, dqblk) != 0:
        return None
    return from_dqblk(dqblk.raw)


def from_dqblk(raw: bytes) -> tuple[int, int]:
    """(hard block limit in bytes, bytes used) from a struct if_dqblk (limits in 1 KiB blocks)."""
    hard_blocks, _soft_blocks, used_bytes = struct.unpack(DQBLK, raw)[:3]
    return hard_blocks * 1024, used_bytes


def allocate(config: Config, root_fd: int, job_id: int) -> int:
    """A project id of `[jobs] quota_project_ids` no other directory holds, taken with O_EXCL."""
    first, last = config.jobs.quota_project_ids
    span = last - first + 1
    ids_fd = open_private_dir(root_fd, config.volume.mount_point, PROJECT_IDS_NAME, create=True)
    assert ids_fd is not None
    try:
        for step in range(span):
            project = first + (job_id + step) % span
            try:
                fd = os.open(str(project), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=ids_fd)
            except FileExistsError:
                continue
            try:
                os.write(fd, f"job={job_id}\n".encode())
            finally:
                os.close(fd)
            return project
    finally:
        os.close(ids_fd)
    raise ScratchError(f"every project id of [jobs] quota_project_ids = {first}-{last} is in use: widen the range")


def limit_new(config: Config, root_fd: int, fd: int, job_id: int, limit_bytes: int) -> int:
    """Give the new directory open on `fd` a project id of its own, the inherit flag and the limit."""
    project = allocate(config, root_fd, job_id)
    try:
        set_limit(root_fd, project, limit_bytes)
        _set_project(fd, project)
    except BaseException:
        release(config, root_fd, project)
        raise
    return project


def release(config: Config, root_fd: int, project: int) -> bool:
    """Give `project` back (the reaper, once the data that carried it is deleted)."""
    first, last = config.jobs.quota_project_ids
    if not first <= project <= last:
        return False
    ids_fd = open_private_dir(root_fd, config.volume.mount_point, PROJECT_IDS_NAME, create=False)
    if ids_fd is None:
        return False
    try:
        os.unlink(str(project), dir_fd=ids_fd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(ids_fd)
