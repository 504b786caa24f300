"""The sweep of orphaned job directories: those of jobs no longer running on this node.

An entry is a job directory only if its name fits `[jobs] dir` (jobs.pattern) on this node and it
is a directory of a job's user; anything else is reported, never deleted. The sweep (and the health
check's housekeeping, which lists job directories through job_dirs) stops at a deadline and leaves
the rest to the next run.
"""

from __future__ import annotations

import os
import stat
import time

from slurm_scratch import log
from slurm_scratch.config import Config
from slurm_scratch.jobs import pattern
from slurm_scratch.jobs.retire import retire_entry, say_to_log, unmounted
from slurm_scratch.layout import DIR_FLAGS, NOT_JOB_DIRS, PATH_FLAGS, open_root
from slurm_scratch.record import Record


class SweepReport(Record):
    retired: list  # paths retired into the trash
    running: list  # of jobs still running here
    young: list  # modified within [jobs] sweep_guard
    unattributed: list  # not a job directory of this tool: left alone
    unfinished: bool  # the deadline came first: the next run does the rest


class JobDir(Record):
    """One job directory the sweep found: its job id, path and lstat (None: something is mounted on
    it, which is detached before the sweep retires it), and its parent's descriptor and its name."""

    job_id: int
    path: str
    st: object  # os.stat_result | None
    parent_fd: int
    name: str


def _walk_job_dirs(config: Config, node: str, root_fd: int, unattributed: list[str]):
    """Every job directory below the mount point (a JobDir, its parent_fd valid until the next one);
    what fits no level of `[jobs] dir` or is not a job's goes into `unattributed`."""
    patterns = [pattern.component_regex(c, node) for c in pattern.components(config.jobs.dir, config.volume.mount_point)]
    yield from _walk_level(root_fd, root_fd, config.volume.mount_point, patterns, unattributed, None)


def _walk_level(root_fd, dir_fd, path, patterns, unattributed, user):
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
            unattributed.append(entry_path)
            continue
        if not last_level:
            child_fd = None
            try:
                child_fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                st = os.fstat(child_fd)
                if st.st_uid != 0 or st.st_mode & 0o022:
                    unattributed.append(entry_path)
                    continue
                level_user = match.groupdict().get("user") or user
                yield from _walk_level(root_fd, child_fd, entry_path, patterns[1:], unattributed, level_user)
            except OSError:
                unattributed.append(entry_path)
            finally:
                if child_fd is not None:
                    os.close(child_fd)
            continue
        try:
            fd = os.open(name, PATH_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        try:
            if mounts.mount_id(fd) != volume_mnt:  # mounted on: not stat'ed (see retire.unmounted)
                yield JobDir(job_id=int(match.group("job")), path=entry_path, st=None, parent_fd=dir_fd, name=name)
                continue
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not _is_job_dir(st, match.groupdict().get("user") or user):
            unattributed.append(entry_path)
            continue
        yield JobDir(job_id=int(match.group("job")), path=entry_path, st=st, parent_fd=dir_fd, name=name)


def job_dirs(config: Config, node: str, deadline: float | None = None) -> list[JobDir]:
    """The job directories on the volume (their parent_fd no longer valid), without touching any;
    those found by `deadline` (time.monotonic()) when there is one."""
    found = []
    root_fd = open_root(config.volume.mount_point)
    try:
        for entry in _walk_job_dirs(config, node, root_fd, []):
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
    retired: list[str] = []
    running: list[str] = []
    young: list[str] = []
    unattributed: list[str] = []
    unfinished = False
    now = time.time()
    index = None
    root_fd = open_root(config.volume.mount_point)
    try:
        for found in _walk_job_dirs(config, node, root_fd, unattributed):
            if deadline is not None and time.monotonic() >= deadline:
                unfinished = True
                break
            if found.job_id in running_jobs:
                running.append(found.path)
                continue
            if found.st is None:
                from slurm_scratch import mounts

                fd = unmounted(found.parent_fd, found.name, found.path, mounts.mount_id(root_fd), say_to_log(found.job_id))
                if fd is None:
                    continue
                try:
                    found = found.replace(st=os.fstat(fd))
                finally:
                    os.close(fd)
                if not _is_job_dir(found.st, None):
                    unattributed.append(found.path)
                    continue
            if now - found.st.st_mtime < config.jobs.sweep_guard:
                young.append(found.path)
                continue
            if index is None and config.jobs.kill_processes:
                from slurm_scratch.jobs import processes

                now_monotonic = time.monotonic()  # the scan gets half of what is left: the sweep needs the rest
                index = processes.Index(root_fd, now_monotonic + (60 if deadline is None else max(0.0, deadline - now_monotonic) / 2))
                index.want(  # every candidate at once: one pass over the index answers them all
                    index.key(other.st)
                    for other in _walk_job_dirs(config, node, root_fd, [])
                    if other.st is not None and other.job_id not in running_jobs and now - other.st.st_mtime >= config.jobs.sweep_guard
                )
                if not index.complete:  # retire anyway (or a user's processes would stop every sweep)
                    log.warning("sweep: the scan of /proc ran out of time; processes it did not reach may survive in the trash")
            trashed = retire_entry(config, root_fd, found.parent_fd, found.name, found.path, None, found.job_id, index=index, deadline=deadline)
            if trashed is not None:
                retired.append(found.path)
                log.info(f"sweep retired orphan {found.path} (job {found.job_id} no longer runs here)", job=found.job_id)
    finally:
        os.close(root_fd)
    return SweepReport(retired=retired, running=running, young=young, unattributed=unattributed, unfinished=unfinished)


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
