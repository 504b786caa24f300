"""Retiring an entry: moving a job directory (the Epilog's, or a sweep's orphan) into the trash.

A filesystem mounted on the entry or inside it (a user's FUSE mount) is detached lazily, by
descriptor, and never stat'ed; the processes holding it are ended (processes.Index: one scan of
/proc per run); then it is renamed into the trash: one rename, however many files it holds.
Shared by the Epilog (jobdir.retire) and the sweep, so both retire the same way.
"""

from __future__ import annotations

import os
import stat
import time

from slurm_scratch import log
from slurm_scratch.config import Config
from slurm_scratch.layout import DIR_PATH_FLAGS, PATH_FLAGS, open_trash


def _detach_submounts(dir_fd: int, volume_mnt: int | None, path: str, say) -> None:
    """Lazily detach mounts inside the directory (a user's FUSE mount deeper down), each opened by
    walking from `dir_fd` with O_NOFOLLOW descriptors and named by descriptor, never by path."""
    from slurm_scratch import mounts

    for mnt, mount_point in mounts.mounts_below(path):
        fd = os.dup(dir_fd)
        try:
            names = mount_point[len(path) + 1 :].split("/")
            for index, name in enumerate(names):
                next_fd = os.open(name, DIR_PATH_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = next_fd
                here = mounts.mount_id(fd)
                if index < len(names) - 1 and here != volume_mnt:
                    raise FileNotFoundError  # detached already with a mount above it, or not what mountinfo said
            if mounts.mount_id(fd) == mnt:
                mounts.detach(fd)
                say("warning", f"{mount_point}: a mount inside the job directory (mount id {mnt}): detached it lazily")
        except OSError:
            pass
        finally:
            os.close(fd)


def unmounted(parent_fd: int, name: str, path: str, volume_mnt: int | None, say) -> int | None:
    """An O_PATH descriptor of parent/name once nothing is mounted on it, or None (gone, or a mount
    the kernel will not detach). A mount on it (a user's FUSE or bind mount) is never stat'ed (a FUSE
    daemon answers that): it is detached lazily, by descriptor."""
    from slurm_scratch import mounts

    for _ in range(16):  # mounts stacked on it: one at a time
        try:
            fd = os.open(name, PATH_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return None
        mnt = mounts.mount_id(fd)
        if mnt == volume_mnt:
            return fd
        try:
            mounts.detach(fd)
        except OSError as exc:
            say("warning", f"{path} is a mount point (mount id {mnt}) that could not be detached ({exc.strerror}): leaving it for the sweep")
            return None
        finally:
            os.close(fd)
        say("warning", f"{path} was a mount point (mount id {mnt}): detached it lazily")
    say("warning", f"{path} is still a mount point: leaving it for the sweep")
    return None


EXIT_VARIABLES = ("SLURM_JOB_EXIT_CODE", "SLURM_JOB_EXIT_CODE2", "SLURM_JOB_DERIVED_EC")


def job_failed(environ) -> tuple[bool, list[str], list[str]]:
    """Whether the job failed, by the Epilog's exit-code variables: a non-zero exit code or signal
    in SLURM_JOB_EXIT_CODE (a raw wait status), SLURM_JOB_EXIT_CODE2 ("exit:signal") or
    SLURM_JOB_DERIVED_EC (a raw wait status); none set = succeeded. Returns (failed, the variables
    that say so, the malformed ones). A malformed value counts as failed: keeping a directory
    costs only space the housekeeping reclaims, deleting it loses what its user needed."""
    from slurm_scratch.jobs.job import shown

    failing: list[str] = []
    malformed: list[str] = []
    for env_name in EXIT_VARIABLES:
        value = environ.get(env_name)
        if value is None:
            continue
        parts = value.split(":") if env_name == "SLURM_JOB_EXIT_CODE2" else [value]
        if len(parts) != (2 if env_name == "SLURM_JOB_EXIT_CODE2" else 1) or not all(part.isascii() and part.isdigit() and len(part) <= 10 for part in parts):
            malformed.append(f"{env_name}={shown(value)}")
        elif any(int(part) for part in parts):
            failing.append(f"{env_name}={value}")
    return bool(failing or malformed), failing, malformed


def say_to_log(job: object):
    def say(level: str, text: str) -> None:
        getattr(log, level)(text, job=job)

    return say


def retire_entry(config: Config, root_fd: int, parent_fd: int, name: str, path: str, owner: int | None, job: object, index=None, deadline: float | None = None, say=None,
                 keep=None, end_holders: bool = True) -> str | None:
    """Rename parent/name into the trash; returns its name there, or None when nothing was moved.

    `keep(fd_path)` (a failed job's Epilog, with [jobs] keep_failed): a directory goes to the kept
    area instead (jobs/kept.keep), and what `keep` returned (its path below the mount point) is
    returned; into the trash when that fails. `end_holders=False`: processes
    holding it are left alone (a kept directory's reader).

    `owner` set: the entry must belong to that uid (an Epilog retiring its own job's directory).
    A mount on the entry or inside it is detached lazily first (by descriptor), the processes
    holding it are ended (`index`: a processes.Index already built, else one is built for the
    owner), then it is renamed. What the user made impossible (a mount the kernel will not detach,
    an entry of someone else's) is reported through `say(level, text)` and left for the sweep.
    """
    from slurm_scratch import mounts

    say = say or say_to_log(job)
    volume_mnt = mounts.mount_id(parent_fd)
    fd = unmounted(parent_fd, name, path, volume_mnt, say)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if owner is not None and st.st_uid != owner:
            say("warning", f"{path} belongs to uid {st.st_uid}, not the job's uid {owner}: leaving it alone")
            return None
        if stat.S_ISDIR(st.st_mode):
            _detach_submounts(fd, volume_mnt, path, say)
            if config.jobs.kill_processes and end_holders:
                from slurm_scratch.jobs import processes

                if index is None:
                    scan_end = time.monotonic() + 10 if deadline is None else deadline
                    index = processes.Index(root_fd, scan_end, {st.st_uid})
                if not index.complete:
                    say("warning", f"{path}: the process scan ran out of time; holders not found may survive")
                for line in processes.end_holders(index, index.key(st), st.st_uid, path, deadline):
                    say("warning" if "still alive" in line else "info", line)
            if keep is not None:
                where = keep(fd)
                if where is not None:
                    return where
    finally:
        os.close(fd)
    trash_fd = open_trash(root_fd, config.volume.mount_point, create=True)
    assert trash_fd is not None
    try:
        target = f"{name}.{time.time_ns()}"
        try:
            os.rename(name, target, src_dir_fd=parent_fd, dst_dir_fd=trash_fd)
        except OSError as exc:
            import errno

            if exc.errno not in (errno.EBUSY, errno.ENOENT, errno.EXDEV):
                raise  # the volume's own fault (EROFS, EIO, ...): the caller records it
            say("warning", f"{path} could not be moved into the trash ({exc.strerror}): leaving it for the sweep")
            return None
    finally:
        os.close(trash_fd)
    return target
