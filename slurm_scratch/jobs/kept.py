"""The kept area: failed jobs' directories, kept for a while ([jobs] keep_failed).

A failed job's directory is renamed by the Epilog to `<mount_point>/.kept/<user>/<its own name>`
(e.g. /scratch/.kept/alice/job_42): one rename within the filesystem, the directory still the
user's with its mode unchanged. `.kept` and `.kept/<user>` are root's 0755 directories, made (or
put in place of whatever a user made there first, moved aside into the trash like any squatter)
the way the Prolog makes a pattern's levels: no user can add, rename or remove anything in them,
and a user reads only what their own directory's mode lets through. Before the rename, root
records on the directory itself when and for which job it was kept (layout.KEPT_XATTR, a trusted.*
extended attribute: users can neither set nor remove it, and touching the directory changes
nothing). A kept directory with no valid record is not one the Epilog kept (a user's entry swapped
in at the last moment): it is due at once.

The health check's housekeeping moves kept directories into the trash (the reaper deletes them,
the one place data is deleted): those past keep_failed, then, while free space or inodes are under
keep_reclaim_free_percent, the oldest first. Reading the area never follows a symlink and never
calls into a filesystem a user mounted on their kept directory (O_PATH and the mount id first).
"""

from __future__ import annotations

import os
import stat
import time

from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import DIR_FLAGS, KEPT_NAME, KEPT_XATTR, PATH_FLAGS, exists_at
from slurm_scratch.record import Record


class Kept(Record):
    """One entry of the kept area."""

    user: str  # the level it is in
    name: str
    path: str
    uid: int | None  # its owner (None: something is mounted on it, not stat'ed)
    kept_at: float | None  # seconds since the epoch, from KEPT_XATTR; None: no valid record of ours
    job_id: int | None


# ---- the Epilog: moving a directory in ---------------------------------------------------------


def keep(config: Config, place_type, root_fd: int, parent_fd: int, fd_path: int, name: str, path: str, user: str, job_id: object, say) -> str | None:
    """Move the directory parent/name (pinned by the O_PATH descriptor `fd_path`, nothing mounted
    on it) to .kept/<user>/name; its path below the mount point, or None (said why) when it could
    not be kept: then the caller puts it into the trash. `place_type(root_fd, mount_point)` is the
    Prolog's hold on the volume (jobdir's), whose way of making a pattern's level makes the area's
    two levels. An older kept directory at that name (a requeued job that failed again) goes to the
    trash first."""
    try:
        dir_fd = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd_path)
        try:
            os.setxattr(dir_fd, KEPT_XATTR, f"{time.time_ns()} {job_id}".encode())
        finally:
            os.close(dir_fd)
        place = place_type(root_fd, config.volume.mount_point)
        try:
            area = f"{config.volume.mount_point}/{KEPT_NAME}"
            area_fd = place.level(root_fd, KEPT_NAME, area)
            try:
                user_fd = place.level(area_fd, user, f"{area}/{user}")
            finally:
                os.close(area_fd)
            try:
                if exists_at(user_fd, name):
                    older = f"{KEPT_NAME}.{user[:64]}.{name[:160]}.{time.time_ns()}"
                    os.rename(name, older, src_dir_fd=user_fd, dst_dir_fd=place.trash_fd)
                    place.notes.append(f"an older kept {area}/{user}/{name} went to the trash")
                os.rename(name, name, src_dir_fd=parent_fd, dst_dir_fd=user_fd)
            finally:
                os.close(user_fd)
        finally:
            os.close(place.trash_fd)
            for note in place.notes:
                say("warning" if "moved aside" in note or "detached" in note else "info", note)
    except (OSError, ScratchError) as exc:  # a fault of the volume's (EROFS, EIO) fails the trash's rename too
        say("warning", f"{path} could not be kept ({getattr(exc, 'strerror', None) or exc}): it goes to the trash")
        return None
    return f"{KEPT_NAME}/{user}/{name}"


# ---- listing, expiry and reclaim order ---------------------------------------------------------


def open_level(parent_fd: int, name: str) -> int | None:
    """A level of the area (.kept or .kept/<user>) when it is root's and not writable by others
    (a user's entry there is not ours: left alone until the next keep moves it aside)."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        return None
    return fd


def _record(fd_path: int, st: os.stat_result) -> tuple[float | None, int | None]:
    """(kept_at, job_id) from the directory's KEPT_XATTR, or (None, None)."""
    if not stat.S_ISDIR(st.st_mode):
        return None, None  # only directories are kept
    try:
        fd = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=fd_path)
    except OSError:
        return None, None
    try:
        value = os.getxattr(fd, KEPT_XATTR)
    except OSError:
        return None, None
    finally:
        os.close(fd)
    parts = value.split(b" ")
    if len(parts) != 2 or not all(part.isdigit() and len(part) <= 20 for part in parts):
        return None, None
    return int(parts[0]) / 1e9, int(parts[1])


def area_problem(config: Config, root_fd: int) -> str | None:
    """Why the kept area cannot be read (a user's entry at .kept), or None."""
    try:
        st = os.stat(KEPT_NAME, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        return f"{config.volume.mount_point}/{KEPT_NAME} is not root's directory (uid {st.st_uid}): left alone; the next keep moves it aside"
    return None


def listing(config: Config, root_fd: int) -> list[Kept]:
    """Every entry of the kept area, read by descriptor (none when there is no area of ours)."""
    from slurm_scratch import mounts

    volume_mnt = mounts.mount_id(root_fd)
    found: list[Kept] = []
    area_fd = open_level(root_fd, KEPT_NAME)
    if area_fd is None:
        return found
    try:
        for user in sorted(os.listdir(area_fd)):
            user_fd = open_level(area_fd, user)
            if user_fd is None:
                continue
            try:
                entries = (_entry(config, user_fd, user, name, volume_mnt) for name in sorted(os.listdir(user_fd)))
                found.extend(entry for entry in entries if entry is not None)
            finally:
                os.close(user_fd)
    finally:
        os.close(area_fd)
    return found


def _entry(config: Config, user_fd: int, user: str, name: str, volume_mnt: int | None) -> Kept | None:
    """One entry, looked at by an O_PATH descriptor; something mounted on it is never stat'ed (a
    FUSE daemon would answer): it has no owner or record then."""
    from slurm_scratch import mounts

    path = f"{config.volume.mount_point}/{KEPT_NAME}/{user}/{name}"
    try:
        fd = os.open(name, PATH_FLAGS, dir_fd=user_fd)
    except FileNotFoundError:
        return None
    try:
        if mounts.mount_id(fd) != volume_mnt:
            return Kept(user=user, name=name, path=path, uid=None, kept_at=None, job_id=None)
        st = os.fstat(fd)
        kept_at, job_id = _record(fd, st)
        return Kept(user=user, name=name, path=path, uid=st.st_uid, kept_at=kept_at, job_id=job_id)
    finally:
        os.close(fd)


def until(config: Config, entry: Kept) -> float | None:
    """When the entry is due (None: at once, it has no record of ours)."""
    return None if entry.kept_at is None else entry.kept_at + config.jobs.keep_failed


def due(config: Config, entries: list[Kept], now: float) -> list[Kept]:
    """The entries past [jobs] keep_failed (all of them when it is 0), and those with no valid
    record (not kept by an Epilog, e.g. swapped in by their owner: never root's own)."""
    return [entry for entry in entries if (entry.kept_at is None and entry.uid != 0) or (entry.kept_at is not None and now >= until(config, entry))]


def reclaim_order(entries: list[Kept]) -> list[Kept]:
    """The order in which kept directories go early when space is short: oldest first."""
    return sorted((entry for entry in entries if entry.kept_at is not None), key=lambda entry: (entry.kept_at, entry.path))


def short_of_space(config: Config, root_fd: int) -> bool:
    """Free space or free inodes under [jobs] keep_reclaim_free_percent."""
    st = os.fstatvfs(root_fd)
    threshold = config.jobs.keep_reclaim_free_percent
    space = st.f_blocks > 0 and 100.0 * st.f_bavail / st.f_blocks < threshold
    inodes = st.f_files > 0 and 100.0 * st.f_favail / st.f_files < threshold  # btrfs has no inode limit
    return space or inodes


def sync(mount_point: str, timeout: float) -> None:
    """syncfs(2) on the volume, in a child killed at `timeout`: what was just deleted then shows as
    free space (btrfs frees extents only when its transaction commits). Rare path (space is short):
    ctypes only here."""
    import ctypes

    from slurm_scratch import timed

    def work() -> str:  # the child has let go of every inherited descriptor
        fd = os.open(mount_point, DIR_FLAGS)
        try:
            ctypes.CDLL(None, use_errno=True).syncfs(fd)
        finally:
            os.close(fd)
        return "synced"

    if timeout > 0:
        timed.in_child(work, timeout)


def report(config: Config) -> dict | None:
    """What `slurm-scratch status` shows of the kept area: each entry, for whom, until when; None
    when keeping is off and nothing is kept (status then shows what it always did)."""
    from slurm_scratch.layout import VolumeNotMounted, open_root

    now = time.time()
    shown: dict = {"area": f"{config.volume.mount_point}/{KEPT_NAME}", "keep_failed_seconds": config.jobs.keep_failed,
                   "reclaim_free_percent": config.jobs.keep_reclaim_free_percent, "dirs": []}
    try:
        root_fd = open_root(config.volume.mount_point)
    except VolumeNotMounted:
        return shown if config.jobs.keep_failed else None
    try:
        shown["problem"] = area_problem(config, root_fd)
        for entry in listing(config, root_fd):
            ends = until(config, entry)
            shown["dirs"].append({
                "path": entry.path, "user": entry.user, "uid": entry.uid, "job_id": entry.job_id,
                "kept_at": _utc(entry.kept_at), "until": _utc(ends), "due": ends is None or now >= ends,
            })
    finally:
        os.close(root_fd)
    if not config.jobs.keep_failed and not shown["dirs"]:
        return None
    return shown


def _utc(seconds: float | None) -> str | None:
    return None if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def report_time(seconds: float | None) -> str:
    """A time as the log and `status` show it."""
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
