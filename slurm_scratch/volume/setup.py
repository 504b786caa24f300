"""`setup`: discover disks -> observe -> plan (pure) -> apply, under the setup lock.

`setup` is idempotent: a mounted volume is a fast no-op; an existing volume is activated and
mounted, never reformatted; a half-built one (a crash) is completed; blank disks are built from
scratch; a volume with a disk missing is a failure naming the disk (or, with on_degraded =
rebuild, rebuilt). Concurrent runs serialise on /run/slurm-scratch/setup.lock and each re-observes
after taking it, so exactly one assembles and all succeed.
"""

from __future__ import annotations

import os
import stat

from slurm_scratch import log
from slurm_scratch.config import Config, VolumeConfig
from slurm_scratch.errors import EXIT_FAILURE, EXIT_OK, ScratchError
from slurm_scratch.layout import MARKER_NAME, TRASH_NAME



def _mounted_as_recorded(volume: VolumeConfig) -> bool:
    """Fast path: mounted from the device setup recorded, trash and mode in place (no udev, no tools)."""
    from slurm_scratch import mounts
    from slurm_scratch.volume import state

    data = state.read()
    if data is None or data.status != "ready" or data.mount_point != volume.mount_point:
        return False
    if volume.quotas:  # the full path checks (and on btrfs enables) quota support: setup is not a hot path
        return False
    mount = mounts.find_mount(volume.mount_point)
    if mount is None or mount.source != data.mount_source:
        return False
    try:
        root = os.lstat(volume.mount_point)
        trash = os.lstat(os.path.join(volume.mount_point, TRASH_NAME))
        marker = os.lstat(os.path.join(volume.mount_point, MARKER_NAME))
    except OSError:
        return False
    return (stat.S_IMODE(root.st_mode) == volume.mount_mode and stat.S_ISDIR(trash.st_mode)
            and trash.st_uid == 0 and not trash.st_mode & 0o077
            and stat.S_ISREG(marker.st_mode) and marker.st_uid == 0 and not marker.st_mode & 0o077)


def make_plan(volume: VolumeConfig):
    """Discover, observe and plan (read-only). Returns (discovery, observed, plan)."""
    from slurm_scratch.volume import devices
    from slurm_scratch.volume import state
    from slurm_scratch.volume.observe import observe
    from slurm_scratch.volume.plan import effective_backend, plan

    data = state.read()
    discovery = devices.discover(volume, data)
    backend = effective_backend(volume, discovery, data)
    observed = observe(volume, discovery, data, backend)
    return discovery, observed, plan(volume, discovery, observed)


def setup(config: Config, dry_run: bool = False):
    """Bring the volume to mounted; returns the Plan carried out (None for the fast path)."""
    volume = config.volume
    timer = log.Timer()
    if not dry_run and _mounted_as_recorded(volume):
        log.info(f"setup: {volume.mount_point} is mounted as recorded: nothing to do", ms=timer.ms())
        return None
    if dry_run:
        return make_plan(volume)[2]
    if os.geteuid() != 0:
        raise ScratchError("setup must run as root (it probes, formats and mounts disks); --dry-run shows the plan")
    from slurm_scratch import locks
    from slurm_scratch.layout import SETUP_LOCK

    wait = max(volume.command_timeout * 4, 60.0)
    lock_fd = locks.acquire(SETUP_LOCK)
    if lock_fd is None:
        log.info(f"setup: another setup holds {SETUP_LOCK}; waiting for it (at most {wait:g} s)")
        lock_fd = locks.acquire(SETUP_LOCK, wait)
        if lock_fd is None:
            raise ScratchError(f"{SETUP_LOCK}: another setup held the lock for more than {wait:g} s")
    try:
        log.info("setup: holding the setup lock", ms=timer.ms())
        return _plan_and_apply(volume)
    finally:
        os.close(lock_fd)


def _plan_and_apply(volume: VolumeConfig):
    """Under the lock: observe afresh (another setup may have just built it), plan, apply."""
    from slurm_scratch.volume.apply import apply

    for attempt in (1, 2):
        _, _, plan = make_plan(volume)
        for note in plan.notes:
            log.warning(f"setup: {note}")
        if plan.failure:
            raise ScratchError(plan.failure)
        try:
            apply(volume, plan)
            return plan
        except ScratchError as exc:
            # udev may assemble an md array or add a link under our feet: look again, once.
            if attempt == 2:
                raise
            log.warning(f"setup: {exc}; observing again and retrying once")
    return None


def ensure_mounted(config: Config) -> None:
    """Make sure the volume is mounted at [volume] mount_point (the Prolog's self-heal)."""
    setup(config)


DONE = {
    "build": "built and mounted",
    "rebuild": "rebuilt (empty) and mounted",
    "complete": "completed and mounted",
    "activate": "activated and mounted",
    "mount": "mounted",
    "mounted": "already mounted, recorded",
}


def setup_main(config: Config, dry_run: bool) -> int:
    plan = setup(config, dry_run)
    volume = config.volume
    if dry_run:
        print(f"# backend {plan.backend}: {plan.state}" + (f", device {plan.device}" if plan.device else ""))
        for note in plan.notes:
            print(f"# {note}")
        if plan.failure:
            print(f"# would fail: {plan.failure}")
            return EXIT_FAILURE
        for line in plan.lines():
            print(line)
        if not plan.steps:
            print("# nothing to do")
        return EXIT_OK
    if plan is None or not plan.steps:
        print(f"{volume.mount_point}: mounted, nothing to do")
    else:
        done = DONE.get(plan.state, plan.state)
        print(f"{volume.mount_point}: {done}: {plan.device} ({plan.backend}, {len(plan.members)} disk(s))")
    return EXIT_OK
