"""The trash's reaper: the background process that empties the trash, and `slurm-scratch reap`.

The Epilog forks the reaper as its last act (see spawn_reaper): a process in its own process group,
stdio on /dev/null (so slurmd does not wait for it), at nice 19, deleting at idle I/O priority
(`ionice -c 3`). It is bounded: only one runs per node at a time (layout.REAPER_LOCK), it stops
after `[jobs] reaper_max_seconds`, and it exits when the trash is empty. Whatever it leaves is
picked up by the next Epilog, health check, `slurm-scratch reap` or sweep. It deletes with
`rm -rf --one-file-system`, which never follows symlinks and never crosses into another filesystem.
"""

from __future__ import annotations

import os
import sys
import time

from slurm_scratch import log
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import REAPER_LOCK, TEMPORARY_PREFIXES, TRASH_NAME, open_root, open_trash


def spawn_reaper(config: Config) -> int | None:
    """Fork the detached reaper and return its PID at once; the caller must write nothing after this.

    Every way of waiting for a child (a double fork's intermediate, posix_spawn's vfork until exec)
    costs the Epilog scheduling delays on a busy node; a plain fork is cheap and nothing is waited
    for:
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
    # Neither needs psutil (an import the Epilog's reaper would pay).
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


def _delete(config: Config, target: str, remaining: float) -> str:
    """Delete one trash entry and release what its quota held (a btrfs subvolume and its qgroups,
    an ext4/xfs project id): only now, once its data is gone. A note for the log."""
    from slurm_scratch import run

    deadline = time.monotonic() + remaining
    kind, project = _kind(target)
    if kind == "subvolume":
        from slurm_scratch.jobs import quota_btrfs

        return f": {quota_btrfs.reap(config.volume.mount_point, target, deadline)}"
    try:
        run.run(_rm_argv(target), timeout=remaining, quiet=True)
    except ScratchError as exc:
        if getattr(exc, "timed_out", False) or kind != "btrfs" or not os.path.lexists(target):
            raise
        from slurm_scratch.jobs import quota_btrfs  # rm stopped at subvolumes a user nested inside

        return f": {quota_btrfs.reap(config.volume.mount_point, target, deadline)}"
    if project:
        from slurm_scratch.jobs import quota_project
        from slurm_scratch.layout import open_root

        root_fd = open_root(config.volume.mount_point)
        try:
            if quota_project.release(config, root_fd, project):
                return f"; released project id {project}"
        finally:
            os.close(root_fd)
    return ""


def _kind(target: str) -> tuple[str, int]:
    """("subvolume", 0) for a btrfs subvolume of the volume (a job directory with a quota);
    ("btrfs", 0) for another entry on btrfs; ("", project id) elsewhere (0: none or not a directory)."""
    import stat

    from slurm_scratch import mounts
    from slurm_scratch.layout import DIR_FLAGS, PATH_FLAGS

    try:
        fd = os.open(target, PATH_FLAGS)
    except FileNotFoundError:
        return "", 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            return "", 0
        trash_fd = os.open(os.path.dirname(target), PATH_FLAGS)
        try:
            trash_st, same_mount = os.fstat(trash_fd), mounts.mount_id(trash_fd) == mounts.mount_id(fd)
            mount = mounts.find_mount(os.path.dirname(os.path.dirname(target)))
            fstype = mount.fstype if mount else ""
        finally:
            os.close(trash_fd)
        if fstype == "btrfs":
            from slurm_scratch.jobs import quota_btrfs

            return ("subvolume" if same_mount and quota_btrfs.is_subvolume_root(st, trash_st) else "btrfs"), 0
        if fstype not in ("ext4", "xfs") or not same_mount:
            return "", 0
        from slurm_scratch.jobs import quota

        # The id the Prolog gave it, from its mark: the directory's owner can change the id it
        # carries (to another job's), but not the mark.
        dir_fd = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd)
        try:
            project = quota.fields_of(quota.read_mark(dir_fd)).get("project", "")
        finally:
            os.close(dir_fd)
        return "", int(project) if project.isdigit() else 0
    finally:
        os.close(fd)


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
                        note = _delete(config, target, remaining)
                    except (ScratchError, OSError) as exc:
                        log.error(f"reaper: could not delete {target}: {exc}")
                        failed.add(entry)
                        continue
                    deleted += 1
                    log.info(f"reaper deleted {target}{note}", ms=timer.ms())
        finally:
            os.close(lock_fd)  # releases the flock
        # An Epilog may have trashed something after our last look but before we let go of the lock,
        # and its own reaper found the lock taken: look once more now that the lock is free.
        if time.monotonic() >= deadline or not pending():
            return deleted
        wait = False
