"""Create, export and retire a job's private directory below the mount point.

Every path below the mount point is walked with directory file descriptors and O_NOFOLLOW: a user
can create, rename and replace entries under a 1777 mount point (and inside their own job
directory), so no name is ever resolved through a symlink and nothing is chowned by path.
"""

from __future__ import annotations

import os
import stat

from slurm_scratch import log, mounts
from slurm_scratch.cleanup import TRASH_NAME
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.job import JobContext

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
INTERMEDIATE_MODE = 0o755


class VolumeNotMounted(ScratchError):
    pass


def expand(component: str, job: JobContext) -> str:
    """One path component of `[jobs] dir` with %j, %u, %n and %% replaced."""
    # One pass, so that a '%' inside a user or node name is never read as a placeholder.
    values = {"j": str(job.job_id), "u": job.user, "n": job.node, "%": "%"}
    out, index = [], 0
    while index < len(component):
        char = component[index]
        if char == "%" and component[index + 1 : index + 2] in values:
            out.append(values[component[index + 1]])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def relative_components(config: Config, job: JobContext) -> list[str]:
    """The job directory's path below the mount point, as components (config validated the pattern)."""
    relative = config.jobs.dir[len(config.volume.mount_point) + 1 :]
    return [expand(component, job) for component in relative.split("/")]


def job_dir_path(config: Config, job: JobContext) -> str:
    return "/".join([config.volume.mount_point, *relative_components(config, job)])


def open_mount_point(config: Config) -> int:
    """A descriptor of the mounted volume's root; VolumeNotMounted when nothing is mounted there."""
    mount_point = config.volume.mount_point
    refusal = f"{mount_point} is not a mounted filesystem: refusing to create job directories on the disk below it"
    if mounts.find_mount(mount_point) is None:
        raise VolumeNotMounted(refusal)
    try:
        fd = os.open(mount_point, DIR_FLAGS)
    except FileNotFoundError:
        raise VolumeNotMounted(refusal) from None
    # The descriptor pins what we opened; it must be the root of a filesystem other than its
    # parent's (as `mountpoint` judges), not the directory below a volume unmounted a moment ago.
    st, parent = os.fstat(fd), os.stat("..", dir_fd=fd)
    if st.st_dev == parent.st_dev and st.st_ino != parent.st_ino:
        os.close(fd)
        raise VolumeNotMounted(refusal)
    return fd


def _open_intermediate(parent_fd: int, name: str, path: str, create: bool) -> int | None:
    """Open (and, with create, make) a root-owned directory level such as /scratch/alice for %u/job_%j."""
    made = False
    if create:
        try:
            os.mkdir(name, INTERMEDIATE_MODE, dir_fd=parent_fd)
            made = True
        except FileExistsError:
            pass
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if create:
            raise
        return None
    except (NotADirectoryError, OSError) as exc:
        raise ScratchError(f"{path} is not a plain directory ({exc.strerror}): leaving it alone") from None
    st = os.fstat(fd)
    if made and st.st_uid == 0 and stat.S_IMODE(st.st_mode) != INTERMEDIATE_MODE:
        os.fchmod(fd, INTERMEDIATE_MODE)  # slurmd's umask (say 077) must not lock users out of their level
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        raise ScratchError(f"{path} must be owned by root and not writable by others (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): leaving it alone")
    return fd


def open_parent(config: Config, root_fd: int, components: list[str], create: bool) -> int | None:
    """A descriptor of the job directory's parent (the mount point for a one-level pattern)."""
    fd = os.dup(root_fd)
    path = config.volume.mount_point
    for name in components[:-1]:
        path = f"{path}/{name}"
        try:
            next_fd = _open_intermediate(fd, name, path, create)
        finally:
            os.close(fd)
        if next_fd is None:
            return None
        fd = next_fd
    return fd


def create(config: Config, job: JobContext) -> str:
    """Make the job's directory, owned by the job's uid/gid with [jobs] mode; reuse it for a requeued job."""
    timer = log.Timer()
    components = relative_components(config, job)
    path = job_dir_path(config, job)
    root_fd = open_mount_point(config)
    try:
        _make_trash(root_fd)
        parent_fd = open_parent(config, root_fd, components, create=True)
        assert parent_fd is not None
        try:
            reused = _make_owned_dir(parent_fd, components[-1], path, job, config.jobs.mode, os.fstat(root_fd).st_dev)
        finally:
            os.close(parent_fd)
    finally:
        os.close(root_fd)
    verb = "reused" if reused else "created"
    log.info(f"prolog {verb} {path} owner={job.user} mode={config.jobs.mode:04o}", job=job.job_id, ms=timer.ms())
    return path


def _make_trash(root_fd: int) -> None:
    # Made before any job can run, so that no user can take the name first under a 1777 mount point.
    try:
        os.mkdir(TRASH_NAME, 0o700, dir_fd=root_fd)
    except FileExistsError:
        pass


def _make_owned_dir(parent_fd: int, name: str, path: str, job: JobContext, mode: int, device: int) -> bool:
    created = True
    try:
        # Made root-only first: the user gets it only through fchown/fchmod on our descriptor.
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        created = False
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise ScratchError(f"{path} exists and is not a directory ({exc.strerror}): leaving it alone") from None
    try:
        st = os.fstat(fd)
        if st.st_dev != device:
            raise ScratchError(f"{path} is not on the scratch volume: leaving it alone")
        if created and (st.st_uid != 0 or st.st_mode & 0o077):
            # Not the root-only directory we just made: someone swapped it (possible only under a
            # mount point without the sticky bit). Give nothing away.
            raise ScratchError(f"{path} was replaced while it was being created: leaving it alone")
        if not created:
            if (st.st_uid, st.st_gid) != (job.uid, job.gid):
                raise ScratchError(f"{path} already exists, owned by {st.st_uid}:{st.st_gid}, not {job.uid}:{job.gid}: leaving it alone")
            return True
        os.fchown(fd, job.uid, job.gid)
        os.fchmod(fd, mode)
        return False
    finally:
        os.close(fd)


def export_lines(config: Config, job: JobContext) -> list[str]:
    """TaskProlog output: `export NAME=dir` per [jobs] export, or a `print` saying why there are none."""
    path = job_dir_path(config, job)
    try:
        st = os.stat(path)
    except OSError as exc:
        return [f"print slurm-scratch: {path} is not available ({exc.strerror}); {', '.join(config.jobs.export)} not set"]
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != job.uid:
        return [f"print slurm-scratch: {path} is not this job's directory; {', '.join(config.jobs.export)} not set"]
    return [f"export {env_name}={path}" for env_name in config.jobs.export]


def retire(config: Config, job: JobContext) -> str | None:
    """Move the job's directory into the trash (one rename) and start the reaper; None if there is none.

    Starting the reaper points this process's stdio at /dev/null (see cleanup.spawn_reaper): this
    is the Epilog's last act."""
    from slurm_scratch import cleanup

    timer = log.Timer()
    components = relative_components(config, job)
    path = job_dir_path(config, job)
    try:
        root_fd = open_mount_point(config)
    except VolumeNotMounted:
        log.warning(f"epilog: {config.volume.mount_point} is not mounted; nothing to retire", job=job.job_id)
        return None
    try:
        parent_fd = open_parent(config, root_fd, components, create=False)
        if parent_fd is None:
            log.info(f"epilog: no directory {path}", job=job.job_id, ms=timer.ms())
            return None
        try:
            trashed = cleanup.retire_entry(config, root_fd, parent_fd, components[-1], path, job.uid, job.job_id)
        finally:
            os.close(parent_fd)
    finally:
        os.close(root_fd)
    if trashed is not None:
        log.info(f"epilog retired {path} to trash as {trashed}; starting the reaper", job=job.job_id, ms=timer.ms())
        cleanup.spawn_reaper(config)  # last: from here on this process's output goes to /dev/null
    else:
        log.info(f"epilog: nothing to retire at {path}", job=job.job_id, ms=timer.ms())
    return trashed
