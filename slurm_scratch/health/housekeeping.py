"""After a healthy check: sweep orphaned job directories and empty the trash, within
[health] housekeeping_seconds (the jobs wing does the work; this decides when and how long)."""

from __future__ import annotations

import os
import time

from slurm_scratch import log
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import NOT_JOB_DIRS, PROBE_PREFIX, TRASH_NAME


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


def housekeeping(config: Config, node: str, seconds: float) -> None:
    """Sweep and empty the trash, all of it (listing, scanning /proc, sweeping, deleting) within
    `seconds` plus the Slurm calls' own timeouts; what is left is the next run's."""
    deadline = time.monotonic() + seconds
    mount_point = config.volume.mount_point
    try:
        entries = [name for name in os.listdir(mount_point) if name not in NOT_JOB_DIRS]
        if entries:
            swept = sweep_orphans(config, node, deadline)
            if swept:
                log.info(f"healthcheck: swept {swept} orphaned job directories")
        trash_dir = f"{mount_point}/{TRASH_NAME}"
        remaining = deadline - time.monotonic()
        if remaining > 0 and os.path.isdir(trash_dir) and any(not name.startswith(PROBE_PREFIX) for name in os.listdir(trash_dir)):
            from slurm_scratch.jobs import trash  # only when there is something to delete

            trash.reap(config, wait=False, max_seconds=remaining)
    except (ScratchError, OSError) as exc:
        log.error(f"healthcheck: housekeeping: {exc}")
