"""Create, export and retire a job's private directory below the mount point.

Every path below the mount point is walked with directory file descriptors and O_NOFOLLOW: a user
can create, rename and replace entries under a 1777 mount point (and inside their own job
directory), so no name is ever resolved through a symlink and nothing is chowned by path.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from slurm_scratch import log, mounts
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.jobs import pattern
from slurm_scratch.jobs.job import JobContext
from slurm_scratch.layout import DIR_FLAGS, LEVEL_PREFIX, NEW_PREFIX, PATH_FLAGS, SQUATTED_PREFIX, TRASH_NAME, VolumeNotMounted, exists_at, open_root
INTERMEDIATE_MODE = 0o755
MAX_ATTEMPTS = 16  # re-decisions when a name changes under the Prolog (a racing user or Prolog)
MAX_MOUNTS = 1024  # filesystems a user may have stacked on one name (fuse.conf's mount_max is 1000)


class VolumeHung(ScratchError):
    """The Prolog's work on the volume did not end within [jobs] fs_timeout (a frozen or dead disk)."""


def relative_components(config: Config, job: JobContext) -> list[str]:
    """The job directory's path below the mount point, as components (config validated the pattern)."""
    return pattern.relative_components(config.jobs.dir, config.volume.mount_point, job)


def job_dir_path(config: Config, job: JobContext) -> str:
    return "/".join([config.volume.mount_point, *relative_components(config, job)])


def open_mount_point(config: Config) -> int:
    """A descriptor of the mounted volume's root; VolumeNotMounted when nothing is mounted there."""
    return open_root(config.volume.mount_point)


def _open_intermediate(parent_fd: int, name: str, path: str, create: bool, place: _Place | None = None) -> int | None:
    """Open (and, with create, make) a root-owned directory level such as /scratch/alice for %u/job_%j.

    With create (the Prolog), anything at the name but root's own directory on the volume (a user's
    directory, symlink, file or mount, made before the first job that needed the level) is moved
    aside into the trash and replaced; a root-owned level with a mode users could write is fixed."""
    if create:
        assert place is not None
        return place.level(parent_fd, name, path)
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except (NotADirectoryError, OSError) as exc:
        raise ScratchError(f"{path} is not a plain directory ({exc.strerror}): leaving it alone") from None
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        raise ScratchError(f"{path} must be owned by root and not writable by others (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): leaving it alone")
    return fd


def open_parent(config: Config, root_fd: int, components: list[str], create: bool, place: _Place | None = None) -> int | None:
    """A descriptor of the job directory's parent (the mount point for a one-level pattern).

    `place` (required with create) is the Prolog's view of the volume: its trash, mount and notes."""
    fd = os.dup(root_fd)
    path = config.volume.mount_point
    for name in components[:-1]:
        path = f"{path}/{name}"
        try:
            next_fd = _open_intermediate(fd, name, path, create, place)
        finally:
            os.close(fd)
        if next_fd is None:
            return None
        fd = next_fd
    return fd


def _raise_unless_done(result, mount_point: str, hook: str, timeout: float) -> None:
    """The hook's child reported failure or hit the deadline: raise what it reported, as the type
    the CLI tells apart (VolumeHung, VolumeNotMounted, OSError: the volume's fault; ScratchError)."""
    if result.status == "timeout":
        raise VolumeHung(f"{mount_point} hung: {hook} timed out after {timeout:g} s")
    if result.status == "ok":
        return
    if result.kind == "VolumeNotMounted":
        raise VolumeNotMounted(result.text)
    if result.kind == "OSError":
        raise OSError(result.text)
    if result.kind in ("ScratchError", "ChildError"):
        raise ScratchError(result.text)
    raise ScratchError(f"internal error ({result.kind}): {result.text}")


def create(config: Config, job: JobContext) -> str:
    """Make the job's directory, owned by the job's uid/gid with [jobs] mode; reuse the job's own.

    The work on the volume runs in a child under `[jobs] fs_timeout` (a frozen or dead volume must
    not hold the Prolog in D state): VolumeHung at the deadline, VolumeNotMounted, OSError (EROFS,
    EIO, ENOSPC: the volume's fault) or ScratchError as the child reported them."""
    from slurm_scratch import timed

    timer = log.Timer()
    timeout = config.jobs.fs_timeout
    asked = None
    if config.jobs.quota[0] == "request":  # asked here, not in the child: Slurm is not the volume
        from slurm_scratch.jobs import quota

        asked = quota.requested_tmp(config, job.job_id)
    result = timed.in_child(lambda: _create(config, job, asked), timeout)
    _raise_unless_done(result, config.volume.mount_point, "prolog", timeout)
    # The child cannot log (its stdio is /dev/null): it says what it did, and we log it.
    squatted = "moved aside" in result.text or "detached" in result.text
    (log.warning if squatted else log.info)(f"prolog {result.text}", job=job.job_id, ms=timer.ms())
    return job_dir_path(config, job)


def _create(config: Config, job: JobContext, asked: tuple[int, str] | None = None) -> str:
    """The Prolog's work on the volume (in the child): what it did, as one line for the log.
    `asked`: the job's --tmp and how it was learnt, with [jobs] quota = request."""
    components = relative_components(config, job)
    path = job_dir_path(config, job)
    root_fd = open_mount_point(config)
    try:
        place = _Place(root_fd, config.volume.mount_point)
        if config.jobs.quota[0] != "off":
            from slurm_scratch.jobs import quota

            place.quota = quota.JobQuota(config, job, root_fd, asked)
        try:
            parent_fd = open_parent(config, root_fd, components, create=True, place=place)
            assert parent_fd is not None
            try:
                verb = _make_owned_dir(parent_fd, components[-1], path, job, config.jobs.mode, place)
            finally:
                os.close(parent_fd)
        finally:
            os.close(place.trash_fd)
    finally:
        os.close(root_fd)
    return "; ".join([f"{verb} {path} owner={job.user} uid={job.uid} gid={job.gid} mode={config.jobs.mode:04o}", *place.notes])


class _Place:
    """The Prolog's hold on the volume: its root's mount, the trash (made or repaired first), and
    notes on what was moved aside, for the log.

    Every existing name is first opened with O_PATH|O_NOFOLLOW: that neither follows a symlink nor
    opens a FIFO or device nor calls into a filesystem mounted there (a user's FUSE daemon could
    hang forever); the mount id (fdinfo) tells a mount from our own entry before anything is
    asked of it."""

    def __init__(self, root_fd: int, mount_point: str) -> None:
        self.root_fd = root_fd
        self.mount_point = mount_point
        self.mount = mounts.mount_id(root_fd)
        self.notes: list[str] = []
        self.quota = None  # a quota.JobQuota when [jobs] quota is on: it makes and limits the job's directory
        self.trash_fd = _make_trash(self)

    def look(self, parent_fd: int, name: str, path: str) -> tuple[int, os.stat_result, bool] | None:
        """An O_PATH descriptor of parent/name, its stat, and whether anything mounted there was detached."""
        for count in range(MAX_MOUNTS):
            try:
                fd = os.open(name, PATH_FLAGS, dir_fd=parent_fd)
            except FileNotFoundError:
                return None
            if mounts.mount_id(fd) == self.mount:
                try:
                    return fd, os.fstat(fd), count > 0
                except BaseException:
                    os.close(fd)
                    raise
            try:
                mounts.detach(fd)
            finally:
                os.close(fd)
            self.notes.append(f"detached a filesystem mounted on {path}")
        raise ScratchError(f"{path}: more than {MAX_MOUNTS} filesystems mounted on it: giving up")

    def new_dir(self, prefix: str, uid: int, gid: int, mode: int, quota=None) -> tuple[str, int]:
        """A new directory in the trash (root 0700: no user can see or race it), owned and moded as
        asked: its name there and a descriptor. `quota` (a quota.JobQuota) makes it and limits it."""
        name = f"{prefix}{os.getpid()}.{time.time_ns()}"
        if quota is None:
            os.mkdir(name, 0o700, dir_fd=self.trash_fd)
        else:
            quota.make(self.trash_fd, name)
        fd = os.open(name, DIR_FLAGS, dir_fd=self.trash_fd)
        try:
            if (uid, gid) != (0, 0):
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            if quota is not None:
                self.notes.append(quota.limit(fd))
        except BaseException:
            os.close(fd)
            raise
        return name, fd

    def swap_in(self, new: str, parent_fd: int, name: str, path: str, st: os.stat_result | None) -> bool:
        """Put trash/`new` at parent/`name`: a plain rename when nothing is there, else an atomic
        exchange that leaves what was there in the trash. False when the name changed meanwhile."""
        try:
            if st is None:
                os.rename(new, name, src_dir_fd=self.trash_fd, dst_dir_fd=parent_fd)
                return True
            _exchange(self.trash_fd, new, parent_fd, name)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.EBUSY, errno.ENOENT):
                return False  # appeared, vanished or was mounted on meanwhile: decide again
            raise
        # trash/`new` now holds the squatter's entry: never followed, never opened, only renamed.
        try:
            moved = os.stat(new, dir_fd=self.trash_fd, follow_symlinks=False)
        except FileNotFoundError:
            moved = st
        target = f"{SQUATTED_PREFIX}{name[:160]}.{time.time_ns()}"
        os.rename(new, target, src_dir_fd=self.trash_fd, dst_dir_fd=self.trash_fd)
        self.notes.append(f"moved aside {path}: {_describe(moved)} of uid {moved.st_uid} (not followed), now {TRASH_NAME}/{target}")
        return True

    def put(self, parent_fd: int, name: str, path: str, keep, prefix: str, uid: int, gid: int, mode: int, in_place: bool = False, quota=None):
        """What `keep(fd_path, st, mounted)` makes of the entry at parent/name when it accepts it
        (not None); else a new directory made in the trash (prefix, uid, gid, mode) is swapped in
        for whatever is there, and its descriptor returned. `in_place`: a missing entry is made
        with mkdir where it belongs (and then judged by `keep`) rather than renamed in."""
        new: tuple[str, int] | None = None
        try:
            for _ in range(MAX_ATTEMPTS):
                found = self.look(parent_fd, name, path)
                st = found[1] if found else None
                if found is None and in_place:
                    try:
                        os.mkdir(name, mode, dir_fd=parent_fd)
                    except FileExistsError:
                        pass
                    continue  # and look at what is there now
                if found is not None:
                    try:
                        kept = keep(*found)
                        if kept is not None:
                            return kept
                    finally:
                        os.close(found[0])
                if new is None:
                    new = self.new_dir(prefix, uid, gid, mode, quota)
                if self.swap_in(new[0], parent_fd, name, path, st):
                    fd, new = new[1], None
                    return fd
            raise ScratchError(f"{path} kept changing while the Prolog made it ({MAX_ATTEMPTS} attempts): giving up")
        finally:
            if new is not None:
                self.discard(new)

    def level(self, parent_fd: int, name: str, path: str) -> int:
        """Root's own 0755 directory at parent/name, made or put in place of a squatter's entry.

        A missing level is made in place with mkdir, not in the trash and renamed like a job's
        directory: a level is root's anyway, and a rename would silently replace the empty level
        that a concurrent Prolog has just made and is about to create its job's directory in."""

        def keep(fd_path: int, st: os.stat_result, mounted: bool) -> int | None:
            if not (stat.S_ISDIR(st.st_mode) and st.st_uid == 0):
                return None
            fd = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd_path)
            if stat.S_IMODE(st.st_mode) != INTERMEDIATE_MODE:
                # slurmd's umask narrowed a level just made; or root's own level (an old release,
                # an admin) is fixed in place: moving it would take the running jobs' directories
                # inside with it
                os.fchmod(fd, INTERMEDIATE_MODE)
                if stat.S_IMODE(st.st_mode) != INTERMEDIATE_MODE & ~_umask():
                    self.notes.append(f"{path} had mode {stat.S_IMODE(st.st_mode):04o}, set to {INTERMEDIATE_MODE:04o}")
            return fd

        return self.put(parent_fd, name, path, keep, LEVEL_PREFIX, 0, 0, INTERMEDIATE_MODE, in_place=True)

    def discard(self, new: tuple[str, int]) -> None:
        os.close(new[1])
        try:
            os.rmdir(new[0], dir_fd=self.trash_fd)
        except OSError:
            pass  # left to the reaper, like everything in the trash


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _describe(st: os.stat_result) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"), (stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(st.st_mode)), "a device node")


def _exchange(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically (rare path: ctypes only here)."""
    import ctypes

    rename_exchange = 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _make_trash(place: _Place) -> int:
    """The trash's descriptor: root's own 0700 directory at the mount point's TRASH_NAME.

    Made by the first Prolog, before any job can run; on a volume where something else took the
    name first (a user under a 1777 mount point, a volume used elsewhere), a new root 0700
    directory is made under a random name and swapped in, and what was there moved into it."""
    root_fd, path = place.root_fd, f"{place.mount_point}/{TRASH_NAME}"
    for _ in range(MAX_ATTEMPTS):
        found = place.look(root_fd, TRASH_NAME, path)
        if found is None:
            try:
                os.mkdir(TRASH_NAME, 0o700, dir_fd=root_fd)
            except FileExistsError:
                pass
            continue  # and look at what is there now
        fd_path, st, _ = found
        try:
            if stat.S_ISDIR(st.st_mode) and st.st_uid == 0:
                fd = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd_path)
                if stat.S_IMODE(st.st_mode) != 0o700:
                    os.fchmod(fd, 0o700)
                    place.notes.append(f"{path} had mode {stat.S_IMODE(st.st_mode):04o}, set to 0700")
                return fd
        finally:
            os.close(fd_path)
        new = f"{TRASH_NAME}.new.{os.getpid()}.{time.time_ns()}"
        try:
            os.mkdir(new, 0o700, dir_fd=root_fd)  # a user could take the name first: EEXIST, try again
        except FileExistsError:
            continue
        fd = os.open(new, DIR_FLAGS, dir_fd=root_fd)
        try:
            _exchange(root_fd, new, root_fd, TRASH_NAME)
        except OSError:
            os.close(fd)
            os.rmdir(new, dir_fd=root_fd)
            continue
        target = f"{SQUATTED_PREFIX}{TRASH_NAME}.{time.time_ns()}"
        try:
            os.rename(new, target, src_dir_fd=root_fd, dst_dir_fd=fd)
            place.notes.append(f"moved aside {path}: {_describe(st)} of uid {st.st_uid} (not followed), now {TRASH_NAME}/{target}")
        except FileNotFoundError:
            pass  # its owner took it away meanwhile
        return fd
    raise ScratchError(f"{path} kept changing while the Prolog made it ({MAX_ATTEMPTS} attempts): giving up")


def _make_owned_dir(parent_fd: int, name: str, path: str, job: JobContext, mode: int, place: _Place) -> str:
    """Put the job's directory at parent/name; "created" or "reused" (the job's own, e.g. requeued).

    A new directory is made in the trash, given to the job's uid/gid and mode there, and renamed
    into place: a crash leaves at most a temporary in the trash (the reaper empties it), never a
    root-owned directory at the job's name. Anything at the name but a directory of the job's uid
    on the volume is swapped out into the trash."""

    def keep(fd_path: int, st: os.stat_result, mounted: bool) -> str | None:
        # A directory someone mounted on is not reused even if it is the job user's:
        # the user's own mount there is as much a squat as anyone's.
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == job.uid and not mounted):
            return None
        fd = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd_path)
        try:
            if place.quota is not None:
                limited = place.quota.reuse(fd, st, os.fstat(parent_fd))
                if limited is None:  # not a directory the Prolog made for this job: moved aside
                    return None
                place.notes.append(limited)
            os.fchown(fd, job.uid, job.gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        was = (st.st_gid, stat.S_IMODE(st.st_mode))
        return "reused" if was == (job.gid, mode) else f"reused (had gid={was[0]} mode={was[1]:04o})"

    outcome = place.put(parent_fd, name, path, keep, f"{NEW_PREFIX}{name[:160]}.", job.uid, job.gid, mode, quota=place.quota)
    if isinstance(outcome, str):
        return outcome
    os.close(outcome)
    return "created"


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


NOTE_SEPARATOR = " \u241e "  # between the lines the Epilog's child reports (the child cannot log)


def retire(config: Config, job: JobContext) -> str | None:
    """Move the job's directory into the trash (one rename) and start the reaper; None if there is none.

    The work on the volume (mounts on or in the directory, its holders, the rename) runs in a child
    under `[jobs] fs_timeout`: VolumeHung at the deadline, OSError (EROFS, EIO: the volume's fault)
    or ScratchError as the child reported them. What the user made impossible (someone else's
    directory, a squatted %u level, a mount the kernel keeps) is logged and left for the sweep.
    With [jobs] keep_failed set, a failed job's directory goes to the kept area instead (jobs/kept;
    into the trash when that fails), and its path there is returned. Starting the reaper points
    this process's stdio at /dev/null (see trash.spawn_reaper): this is the Epilog's last act."""
    from slurm_scratch import timed
    from slurm_scratch.jobs import trash

    timer = log.Timer()
    path = job_dir_path(config, job)
    timeout = config.jobs.fs_timeout
    keep_for, failed_by = None, ""
    if config.jobs.keep_failed:
        from slurm_scratch.jobs.retire import job_failed

        failed, failing, malformed = job_failed(os.environ)
        for value in malformed:
            log.warning(f"epilog: {value} is not an exit code: the job counts as failed", job=job.job_id)
        keep_for, failed_by = (job.user, ", ".join(failing + malformed)) if failed else (None, "")
    result = timed.in_child(lambda: _retire(config, job, time.monotonic() + timeout * 0.6, keep_for), timeout)
    _raise_unless_done(result, config.volume.mount_point, "epilog", timeout)
    outcome, *notes = result.text.split(NOTE_SEPARATOR.strip())
    for note in notes:
        level, _, text = note.strip().partition(" ")
        (log.warning if level == "warning" else log.info)(f"epilog: {text}", job=job.job_id)
    verb, _, trashed = outcome.strip().partition(" ")
    if verb == "kept":
        from slurm_scratch.jobs.kept import report_time

        until = report_time(time.time() + config.jobs.keep_failed)
        log.info(f"epilog kept {path} as {config.volume.mount_point}/{trashed} until {until} (failed: {failed_by})", job=job.job_id, ms=timer.ms())
    elif verb == "retired":
        log.info(f"epilog retired {path} to trash as {trashed}; starting the reaper", job=job.job_id, ms=timer.ms())
    if verb in ("kept", "retired"):  # kept: for what keeping put into the trash (an older kept directory, a squatter's entry)
        trash.spawn_reaper(config)  # last: from here on this process's output goes to /dev/null
        return trashed
    if verb == "unmounted":
        log.warning(f"epilog: {config.volume.mount_point} is not mounted; nothing to retire", job=job.job_id)
    elif verb == "absent":
        log.info(f"epilog: no directory {path}: nothing to retire", job=job.job_id, ms=timer.ms())
    else:
        log.info(f"epilog: nothing retired at {path}", job=job.job_id, ms=timer.ms())
    return None


def _retire(config: Config, job: JobContext, deadline: float, keep_for: str | None = None) -> str:
    """The Epilog's work on the volume (in the child): `retired NAME` (in the trash), `kept PATH`
    (below the mount point), `absent`, `unmounted` or `left`, then what the log should say, joined
    by NOTE_SEPARATOR. `keep_for`: the failed job's user, whose directory goes to the kept area
    (jobs/kept)."""
    from slurm_scratch.jobs.retire import retire_entry

    notes: list[str] = []

    def say(level: str, text: str) -> None:
        notes.append(f"{level} {text}")

    components = relative_components(config, job)
    path = job_dir_path(config, job)
    try:
        root_fd = open_mount_point(config)
    except VolumeNotMounted:
        return "unmounted"
    try:
        try:
            parent_fd = open_parent(config, root_fd, components, create=False)
        except ScratchError as exc:  # a level of the pattern someone else made: the sweep reports it
            say("warning", str(exc))
            return NOTE_SEPARATOR.join(["left", *notes])
        if parent_fd is None:
            return "absent"
        try:
            if not exists_at(parent_fd, components[-1]):
                return "absent"
            keep, kept_at = None, []
            if keep_for is not None:
                from slurm_scratch.jobs import kept

                def keep(fd_path: int) -> str | None:
                    where = kept.keep(config, _Place, root_fd, parent_fd, fd_path, components[-1], path, keep_for, job.job_id, say)
                    if where is not None:
                        kept_at.append(where)
                    return where

            trashed = retire_entry(config, root_fd, parent_fd, components[-1], path, job.uid, job.job_id, deadline=deadline, say=say, keep=keep)
        finally:
            os.close(parent_fd)
    finally:
        os.close(root_fd)
    outcome = (f"kept {trashed}" if kept_at else f"retired {trashed}") if trashed else "left"
    return NOTE_SEPARATOR.join([outcome, *notes])
