"""The trash directory, the background reaper that empties it, and the sweep of orphaned job dirs.

The Epilog only renames a job directory into `<mount_point>/.slurm-scratch-trash` (same
filesystem, so it is one rename however many files it holds) and starts the reaper.

The Epilog forks the reaper as its last act (see spawn_reaper): a process in its own process group,
stdio on /dev/null (so slurmd does not wait for it), at nice 19, deleting at idle I/O priority
(`ionice -c 3`). It is bounded:
only one runs per node at a time (a lock in /run/slurm-scratch), it stops after
`[jobs] reaper_max_seconds`, and it exits when the trash is empty. Whatever it leaves is picked up
by the next Epilog, health check, `slurm-scratch reap` or `sweep`. It deletes with
`rm -rf --one-file-system`, which never follows symlinks and never crosses into another filesystem.

Retiring an entry (the Epilog's job directory, or a sweep's orphan): a filesystem mounted on it or
inside it (a user's FUSE mount) is detached lazily, by descriptor, and never stat'ed; the processes
holding it are ended (processes.Index: one scan of /proc per run); then it is renamed. The sweep and
the health check's housekeeping stop at a deadline and leave the rest to the next run.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from slurm_scratch import log
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import DIR_FLAGS, NOT_JOB_DIRS, REAPER_LOCK, TEMPORARY_PREFIXES, TRASH_NAME, open_root, open_trash

def _detach_submounts(dir_fd: int, volume_mnt: int | None, path: str, say) -> None:
    """Lazily detach mounts inside the directory (a user's FUSE mount deeper down), each opened by
    walking from `dir_fd` with O_NOFOLLOW descriptors and named by descriptor, never by path."""
    from slurm_scratch import mounts

    for mnt, mount_point in mounts.mounts_below(path):
        fd = os.dup(dir_fd)
        try:
            names = mount_point[len(path) + 1 :].split("/")
            for index, name in enumerate(names):
                next_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
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


def _unmounted(parent_fd: int, name: str, path: str, volume_mnt: int | None, say) -> int | None:
    """An O_PATH descriptor of parent/name once nothing is mounted on it, or None (gone, or a mount
    the kernel will not detach). A mount on it (a user's FUSE or bind mount) is never stat'ed (a FUSE
    daemon answers that): it is detached lazily, by descriptor."""
    from slurm_scratch import mounts

    for _ in range(16):  # mounts stacked on it: one at a time
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
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


def _say_to_log(job: object):
    def say(level: str, text: str) -> None:
        getattr(log, level)(text, job=job)

    return say


def retire_entry(config: Config, root_fd: int, parent_fd: int, name: str, path: str, owner: int | None, job: object, index=None, deadline: float | None = None, say=None) -> str | None:
    """Rename parent/name into the trash; returns its name there, or None when nothing was moved.

    `owner` set: the entry must belong to that uid (an Epilog retiring its own job's directory).
    A mount on the entry or inside it is detached lazily first (by descriptor), the processes
    holding it are ended (`index`: a processes.Index already built, else one is built for the
    owner), then it is renamed. What the user made impossible (a mount the kernel will not detach,
    an entry of someone else's) is reported through `say(level, text)` and left for the sweep.
    """
    from slurm_scratch import mounts

    say = say or _say_to_log(job)
    volume_mnt = mounts.mount_id(parent_fd)
    fd = _unmounted(parent_fd, name, path, volume_mnt, say)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if owner is not None and st.st_uid != owner:
            say("warning", f"{path} belongs to uid {st.st_uid}, not the job's uid {owner}: leaving it alone")
            return None
        if stat.S_ISDIR(st.st_mode):
            _detach_submounts(fd, volume_mnt, path, say)
            if config.jobs.kill_processes:
                from slurm_scratch import processes

                if index is None:
                    scan_end = time.monotonic() + 10 if deadline is None else deadline
                    index = processes.Index(root_fd, scan_end, {st.st_uid})
                if not index.complete:
                    say("warning", f"{path}: the process scan ran out of time; holders not found may survive")
                for line in processes.end_holders(index, st.st_ino, st.st_uid, path, deadline):
                    say("warning" if "still alive" in line else "info", line)
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


# ---- the reaper ------------------------------------------------------------------------------


def spawn_reaper(config: Config) -> int | None:
    """Fork the detached reaper and return its PID at once; the caller must write nothing after this.

    Measured on a busy 2-core node, every way of waiting for a child (a double fork's intermediate,
    posix_spawn's vfork until exec) cost the Epilog 1-5 ms of scheduling; a plain fork costs ~0.1 ms
    and nothing is waited for:
    - slurmd reads the Epilog's stdout/stderr until end-of-file, so the reaper must never hold them:
      this process points its own stdio at /dev/null *before* forking (its last line is logged);
    - slurmd kills the hook's process group once the hook exits, so the reaper gets a group of its
      own, set by both parent and child (whichever runs first), before the parent returns;
    - the reaper then closes inherited descriptors, moves to /, lowers itself to nice 19, and runs
      reap() in this same interpreter (no second start-up), deleting at idle I/O class.
    A reaper that cannot be started is logged, not fatal: the next Epilog, health check, `reap` or
    `sweep` empties the trash.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    try:
        pid = os.fork()
    except OSError as exc:
        log.warning(f"could not start the reaper ({exc}); the trash is emptied by the next Epilog, health check or `slurm-scratch reap`")
        return None
    if pid:
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child did it first (or is gone already)
        return pid
    try:
        os.setpgid(0, 0)
        os.chdir("/")  # hold no directory busy (slurmd's cwd, or a filesystem someone wants to unmount)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # descriptors slurmd leaked into the Epilog
        _lower_priority()
        log.configure("slurm-scratch-reaper", stderr=False)
        log.info(f"reaper pid {os.getpid()} started")
        reap(config, wait=False)
    except BaseException as exc:  # noqa: BLE001 - a detached process has nobody else to tell
        log.error(f"reaper failed: {exc}")
    finally:
        os._exit(0)


def _lower_priority() -> None:
    # CPU: nice 19, inherited by rm. I/O: rm runs under `ionice -c 3` (idle class), see _rm_argv.
    # Neither needs psutil (10-25 ms to import).
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current < 19:
        os.nice(19 - current)


def _rm_argv(target: str) -> list[str]:
    """rm -rf --one-file-system never follows a symlink and never crosses into another filesystem."""
    from slurm_scratch import run

    rm = ["rm", "-rf", "--one-file-system", "--", target]
    try:
        return [run.tool("ionice"), "-c", "3", *rm]
    except ScratchError:
        return rm


def _in_use(entry: str) -> bool:
    """A temporary whose process is still at work on it (a crashed one's is deleted like the rest)."""
    if not entry.startswith(TEMPORARY_PREFIXES):
        return False
    parts = entry.rsplit(".", 2)
    return len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() and os.path.exists(f"/proc/{parts[1]}")


def trash_entries(config: Config) -> list[str]:
    """Names in the trash (none when the volume is not mounted or has no trash yet), but for the
    temporaries of a Prolog or health check still at work on them."""
    from slurm_scratch.layout import VolumeNotMounted

    try:
        root_fd = open_root(config.volume.mount_point)
    except VolumeNotMounted:
        return []
    try:
        trash_fd = open_trash(root_fd, config.volume.mount_point, create=False)
        if trash_fd is None:
            return []
        try:
            return sorted(entry for entry in os.listdir(trash_fd) if not _in_use(entry))
        finally:
            os.close(trash_fd)
    finally:
        os.close(root_fd)


def reap(config: Config, wait: bool, max_seconds: float | None = None) -> int:
    """Empty the trash; returns how many entries were deleted.

    wait=False (the background reaper): give up at once if another reaper holds the lock.
    wait=True (`slurm-scratch reap`): wait for it, then empty what is left.
    An entry that cannot be deleted (say, another filesystem is mounted inside it) is logged and
    skipped for the rest of this run; it does not hold up the others.
    """
    from slurm_scratch import locks, run

    budget = config.jobs.reaper_max_seconds if max_seconds is None else max_seconds
    deadline = time.monotonic() + budget
    deleted = 0
    failed: set[str] = set()

    def pending() -> list[str]:
        return [entry for entry in trash_entries(config) if entry not in failed]

    while True:
        lock_fd = locks.acquire(REAPER_LOCK, max(0.0, deadline - time.monotonic()) if wait else 0.0)
        if lock_fd is None:
            return deleted
        try:
            while time.monotonic() < deadline:
                entries = pending()
                if not entries:
                    break
                for entry in entries:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    timer = log.Timer()
                    target = f"{config.volume.mount_point}/{TRASH_NAME}/{entry}"
                    try:
                        run.run(_rm_argv(target), timeout=remaining, quiet=True)
                    except ScratchError as exc:
                        log.error(f"reaper: could not delete {target}: {exc}")
                        failed.add(entry)
                        continue
                    deleted += 1
                    log.info(f"reaper deleted {target}", ms=timer.ms())
        finally:
            os.close(lock_fd)  # releases the flock
        # An Epilog may have trashed something after our last look but before we let go of the lock,
        # and its own reaper found the lock taken: look once more now that the lock is free.
        if time.monotonic() >= deadline or not pending():
            return deleted
        wait = False


# ---- the sweep of orphans --------------------------------------------------------------------


class SweepReport:
    __slots__ = ("retired", "running", "young", "unattributed", "unfinished")

    def __init__(self) -> None:
        self.retired: list[str] = []
        self.running: list[str] = []
        self.young: list[str] = []
        self.unattributed: list[str] = []
        self.unfinished = False  # the deadline came first: the next run does the rest


class JobDir:
    """One job directory the sweep found: its job id, path and lstat (None: something is mounted on
    it, which is detached before the sweep retires it)."""

    __slots__ = ("job_id", "path", "st", "parent_fd", "name")

    def __init__(self, job_id: int, path: str, st: os.stat_result, parent_fd: int, name: str) -> None:
        self.job_id, self.path, self.st, self.parent_fd, self.name = job_id, path, st, parent_fd, name


def _component_regex(component: str, node: str):
    """A regex for one level of `[jobs] dir`: %j captures the job id, %u a user name (group `user`)."""
    import re

    pieces = []
    seen = set()
    index = 0
    while index < len(component):
        char, code = component[index], component[index + 1 : index + 2]
        if char == "%" and code in ("j", "u", "n", "%"):
            if code == "%":
                pieces.append("%")
            elif code == "n":
                pieces.append(re.escape(node))
            else:
                group = "job" if code == "j" else "user"
                # Repeats must match what the first one captured; %u is lazy so that in `%u_%j`
                # the user "a_1" of job 42 is read as a_1 / 42, not a_1_4 / 2.
                pattern = "(?P<job>[0-9]+)" if code == "j" else "(?P<user>[^/]+?)"
                pieces.append(f"(?P={group})" if group in seen else pattern)
                seen.add(group)
            index += 2
        else:
            pieces.append(re.escape(char))
            index += 1
    return re.compile("".join(pieces) + r"\Z")


def _walk_job_dirs(config: Config, node: str, root_fd: int, report: SweepReport):
    """Every job directory below the mount point (a JobDir, its parent_fd valid until the next one);
    what fits no level of `[jobs] dir` or is not a job's goes into report.unattributed."""
    patterns = [_component_regex(c, node) for c in config.jobs.dir[len(config.volume.mount_point) + 1 :].split("/")]
    yield from _walk_level(root_fd, root_fd, config.volume.mount_point, patterns, report, None)


def _walk_level(root_fd, dir_fd, path, patterns, report, user):
    """One level of the pattern below dir_fd; `user` is the user name a %u level above captured."""
    from slurm_scratch import mounts

    volume_mnt = mounts.mount_id(root_fd)
    last_level = len(patterns) == 1
    for name in sorted(os.listdir(dir_fd)):
        entry_path = f"{path}/{name}"
        if dir_fd == root_fd and name in NOT_JOB_DIRS:
            continue
        match = patterns[0].match(name)
        if match is None:
            report.unattributed.append(entry_path)
            continue
        if not last_level:
            child_fd = None
            try:
                child_fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                st = os.fstat(child_fd)
                if st.st_uid != 0 or st.st_mode & 0o022:
                    report.unattributed.append(entry_path)
                    continue
                level_user = match.groupdict().get("user") or user
                yield from _walk_level(root_fd, child_fd, entry_path, patterns[1:], report, level_user)
            except OSError:
                report.unattributed.append(entry_path)
            finally:
                if child_fd is not None:
                    os.close(child_fd)
            continue
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        try:
            if mounts.mount_id(fd) != volume_mnt:  # mounted on: not stat'ed (see _unmounted)
                yield JobDir(int(match.group("job")), entry_path, None, dir_fd, name)
                continue
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not _is_job_dir(st, match.groupdict().get("user") or user):
            report.unattributed.append(entry_path)
            continue
        yield JobDir(int(match.group("job")), entry_path, st, dir_fd, name)


def job_dirs(config: Config, node: str, deadline: float | None = None) -> list[JobDir]:
    """The job directories on the volume (their parent_fd no longer valid), without touching any;
    those found by `deadline` (time.monotonic()) when there is one."""
    found = []
    root_fd = open_root(config.volume.mount_point)
    try:
        for entry in _walk_job_dirs(config, node, root_fd, SweepReport()):
            found.append(entry)
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        os.close(root_fd)
    return found


def sweep(config: Config, node: str, running_jobs: set[int], deadline: float | None = None) -> SweepReport:
    """Retire job directories of jobs not in `running_jobs` not modified for [jobs] sweep_guard seconds.

    An entry is a job directory only if its name fits `[jobs] dir` on this node and it is a directory
    owned by a non-root user (by the user the name carries, with %u); anything else is reported in
    `unattributed` and left alone. /proc is scanned once for the whole sweep (processes.Index), and
    the sweep stops at `deadline` (time.monotonic()) with report.unfinished set.
    """
    report = SweepReport()
    now = time.time()
    index = None
    root_fd = open_root(config.volume.mount_point)
    try:
        for found in _walk_job_dirs(config, node, root_fd, report):
            if deadline is not None and time.monotonic() >= deadline:
                report.unfinished = True
                break
            if found.job_id in running_jobs:
                report.running.append(found.path)
                continue
            if found.st is None:
                from slurm_scratch import mounts

                fd = _unmounted(found.parent_fd, found.name, found.path, mounts.mount_id(root_fd), _say_to_log(found.job_id))
                if fd is None:
                    continue
                try:
                    found.st = os.fstat(fd)
                finally:
                    os.close(fd)
                if not _is_job_dir(found.st, None):
                    report.unattributed.append(found.path)
                    continue
            if now - found.st.st_mtime < config.jobs.sweep_guard:
                report.young.append(found.path)
                continue
            if index is None and config.jobs.kill_processes:
                from slurm_scratch import processes

                now_monotonic = time.monotonic()  # the scan gets half of what is left: the sweep needs the rest
                index = processes.Index(root_fd, now_monotonic + (60 if deadline is None else max(0.0, deadline - now_monotonic) / 2))
                index.want(  # every candidate at once: one pass over the index answers them all
                    other.st.st_ino
                    for other in _walk_job_dirs(config, node, root_fd, SweepReport())
                    if other.st is not None and other.job_id not in running_jobs and now - other.st.st_mtime >= config.jobs.sweep_guard
                )
                if not index.complete:  # retire anyway (or a user's processes would stop every sweep)
                    log.warning("sweep: the scan of /proc ran out of time; processes it did not reach may survive in the trash")
            trashed = retire_entry(config, root_fd, found.parent_fd, found.name, found.path, None, found.job_id, index=index, deadline=deadline)
            if trashed is not None:
                report.retired.append(found.path)
                log.info(f"sweep retired orphan {found.path} (job {found.job_id} no longer runs here)", job=found.job_id)
    finally:
        os.close(root_fd)
    return report


def _is_job_dir(st: os.stat_result, user: str | None) -> bool:
    """Only what a Prolog makes: a directory owned by a job's (non-root) user — and by that user, when
    the name carries one. A file, a symlink or a root-owned directory that merely fits the pattern is
    somebody else's, to be reported rather than deleted."""
    if not stat.S_ISDIR(st.st_mode) or st.st_uid == 0:
        return False
    if user is None:
        return True
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid == st.st_uid
    except KeyError:
        return False
