"""After a healthy check: sweep orphaned job directories, expire kept directories and empty the
trash, within [health] housekeeping_seconds (the jobs wing does the work; this decides when and
how long)."""

from __future__ import annotations

import os
import time

from slurm_scratch import log
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import KEPT_NAME, NOT_JOB_DIRS, PROBE_PREFIX, TRASH_NAME


def sweep_orphans(config: Config, node: str, deadline: float | None = None) -> int:
    """Retire orphaned job dirs until `deadline` (time.monotonic()); slurmctld is asked only when a
    local candidate exists. /proc is scanned once for all of them (see jobs.sweep)."""
    from slurm_scratch.health import slurm
    from slurm_scratch.jobs import sweep

    now = time.time()
    old = {found.job_id for found in sweep.job_dirs(config, node, deadline) if found.st is None or now - found.st.st_mtime >= config.jobs.sweep_guard}
    if not old:
        return 0
    try:
        local = slurm.local_jobs(config, node)
    except ScratchError as exc:
        log.warning(f"healthcheck: scontrol listpids failed ({exc}); asking slurmctld")
        local = set()
    if not old - local or (deadline is not None and time.monotonic() >= deadline):
        return 0
    running = slurm.running_jobs(config, node)
    report = sweep.sweep(config, node, running | local, deadline=deadline)
    if report.unfinished:
        log.info("healthcheck: the sweep ran out of [health] housekeeping_seconds; the next run goes on")
    return len(report.retired)


def expire_kept(config: Config, deadline: float) -> int:
    """Move kept directories into the trash: those past [jobs] keep_failed (all, when it is 0) or
    with no record of ours, then, while free space or inodes are under keep_reclaim_free_percent,
    the oldest others, each deleted by the reaper before space is measured again; until
    `deadline`. Returns how many went."""
    from slurm_scratch.jobs import kept, trash
    from slurm_scratch.layout import open_root

    gone = 0
    root_fd = open_root(config.volume.mount_point, consult_mountinfo=False)
    try:
        entries = kept.listing(config, root_fd)
        due = kept.due(config, entries, time.time())
        for entry in due:
            if time.monotonic() >= deadline:
                return gone
            if _retire_kept(config, root_fd, entry, deadline) is not None:
                gone += 1
                why = f"kept until {kept.report_time(kept.until(config, entry))}" if entry.kept_at is not None else "no record of an Epilog's keeping it"
                log.info(f"healthcheck: {entry.path} went to the trash ({why})", job=entry.job_id)
        left = kept.reclaim_order([entry for entry in entries if entry not in due])
        while left and time.monotonic() < deadline and kept.short_of_space(config, root_fd):
            entry = left.pop(0)
            if _retire_kept(config, root_fd, entry, deadline) is None:
                continue
            gone += 1
            log.warning(f"healthcheck: free space under [jobs] keep_reclaim_free_percent ({config.jobs.keep_reclaim_free_percent:g}%): "
                        f"{entry.path} (kept until {kept.report_time(kept.until(config, entry))}) went to the trash early", job=entry.job_id)
            trash.reap(config, wait=True, max_seconds=max(0.0, deadline - time.monotonic()))
            kept.sync(config.volume.mount_point, deadline - time.monotonic())
    finally:
        os.close(root_fd)
    return gone


def _retire_kept(config: Config, root_fd: int, entry, deadline: float) -> str | None:
    """Move one kept entry (a jobs.kept.Kept) into the trash, a mount on or in it detached first;
    its name there. Processes holding it are not ended: they may be a running job of its user's."""
    from slurm_scratch.jobs import kept
    from slurm_scratch.jobs.retire import retire_entry, say_to_log

    area_fd = kept.open_level(root_fd, KEPT_NAME)
    if area_fd is None:
        return None
    try:
        user_fd = kept.open_level(area_fd, entry.user)
    finally:
        os.close(area_fd)
    if user_fd is None:
        return None
    try:
        return retire_entry(config, root_fd, user_fd, entry.name, entry.path, None, entry.job_id, deadline=deadline, say=say_to_log(entry.job_id), end_holders=False)
    finally:
        os.close(user_fd)


def housekeeping(config: Config, node: str, seconds: float) -> None:
    """Sweep and empty the trash, all of it (listing, scanning /proc, sweeping, deleting) within
    `seconds` plus the Slurm calls' own timeouts; what is left is the next run's."""
    deadline = time.monotonic() + seconds
    mount_point = config.volume.mount_point
    try:
        names = os.listdir(mount_point)
        entries = [name for name in names if name not in NOT_JOB_DIRS]
        if entries:
            swept = sweep_orphans(config, node, deadline)
            if swept:
                log.info(f"healthcheck: swept {swept} orphaned job directories")
        if KEPT_NAME in names and time.monotonic() < deadline:
            expire_kept(config, deadline)
        trash_dir = f"{mount_point}/{TRASH_NAME}"
        remaining = deadline - time.monotonic()
        if remaining > 0 and os.path.isdir(trash_dir) and any(not name.startswith(PROBE_PREFIX) for name in os.listdir(trash_dir)):
            from slurm_scratch.jobs import trash  # only when there is something to delete

            trash.reap(config, wait=False, max_seconds=remaining)
    except (ScratchError, OSError) as exc:
        log.error(f"healthcheck: housekeeping: {exc}")
