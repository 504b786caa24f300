"""The scratch filesystem's layout and the tool's own directories: every name in one place.

On the volume: the trash (where the Epilog renames job directories and the reaper deletes them),
the kept area (failed jobs' directories, kept for a while), the marker that proves a filesystem is
ours, and the temporaries a Prolog or health check makes in the trash. On the node: RUN_DIR (locks and small state files, gone at boot) and STATE_DIR (the
record of the built volume, kept across boots). Also how the volume's root and its trash are
opened: by descriptor, never following a symlink, since users can write under a 1777 mount point.

Everything above this module takes these names from here; the hooks import it, so it imports only
`os` and `stat` at load time.
"""

from __future__ import annotations

import os
import stat

from slurm_scratch.errors import ScratchError

# ---- on the volume --------------------------------------------------------------------------

TRASH_NAME = ".slurm-scratch-trash"
MARKER_NAME = ".slurm-scratch-volume"  # in the root: holds the filesystem's UUID (proof of ownership)
PROBE_PREFIX = ".health-probe."  # the health check's probe file, in the trash
# Made in the trash by a running Prolog (a level or job directory before it is renamed into
# place) or health check (its probe file), named PREFIX...PID.NANOSECONDS.
LEVEL_PREFIX = "level."
NEW_PREFIX = "new."
TEMPORARY_PREFIXES = (LEVEL_PREFIX, NEW_PREFIX, PROBE_PREFIX)
SQUATTED_PREFIX = "squatted."  # what stood at a name the Prolog or setup needed, moved aside
# Failed jobs' directories, kept for a while ([jobs] keep_failed): KEPT_NAME/<user>/<the job
# directory's own name>, both levels root's 0755. KEPT_XATTR on a kept directory records, by root
# only (users can neither set nor remove trusted.* attributes), when and for which job it was kept.
KEPT_NAME = ".kept"
KEPT_XATTR = "trusted.slurm-scratch.kept"
PROJECT_IDS_NAME = ".slurm-scratch-project-ids"  # ext4/xfs project ids in use: one file per id (root, 0700)
NOT_JOB_DIRS = (TRASH_NAME, PROJECT_IDS_NAME, "lost+found", KEPT_NAME)  # names in the root that are never a job's

# ---- on the node ----------------------------------------------------------------------------

RUN_DIR = "/run/slurm-scratch"
STATE_DIR = "/var/lib/slurm-scratch"
VOLUME_RECORD = f"{STATE_DIR}/volume.json"  # the built volume (JSON: the released on-disk format)
SETUP_LOCK = f"{RUN_DIR}/setup.lock"
REAPER_LOCK = f"{RUN_DIR}/reaper.lock"
HEALTH_LOCK = f"{RUN_DIR}/health.lock"
HOUSEKEEPING_LOCK = f"{RUN_DIR}/housekeeping.lock"
HEALTH_STATE = f"{RUN_DIR}/health.state"
HOOK_FINDING = f"{RUN_DIR}/hook-finding"
RELEASED_HOOK_FINDING = f"{RUN_DIR}/prolog-finding"  # what the released version wrote (read, never written)
PROBE_STUCK = f"{RUN_DIR}/probe-stuck"
VOLUME_RECORD_CACHE = f"{RUN_DIR}/volume-record.cache"

# ---- descriptors ----------------------------------------------------------------------------

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # opens nothing: no FIFO, device or FUSE call
DIR_PATH_FLAGS = PATH_FLAGS | os.O_DIRECTORY


class VolumeNotMounted(ScratchError):
    pass


def exists_at(dir_fd: int, name: str) -> bool:
    """Whether `name` exists in the directory open on `dir_fd`, looked at with O_PATH: nothing is
    opened or stat'ed through it (a FUSE mount a user put there is not asked), no symlink followed."""
    try:
        os.close(os.open(name, PATH_FLAGS, dir_fd=dir_fd))
        return True
    except FileNotFoundError:
        return False


def open_root(mount_point: str, refusal: str | None = None, consult_mountinfo: bool = True) -> int:
    """A descriptor of the mounted volume's root; VolumeNotMounted(refusal) when nothing is mounted.

    consult_mountinfo=False for a caller that has just read the mount table itself (the health
    check): then only the descriptor is compared with its parent."""
    if refusal is None:
        refusal = f"{mount_point} is not a mounted filesystem: refusing to create job directories on the disk below it"
    if consult_mountinfo:
        from slurm_scratch import mounts

        if mounts.find_mount(mount_point) is None:
            raise VolumeNotMounted(refusal)
    try:
        fd = os.open(mount_point, DIR_FLAGS)
    except FileNotFoundError:
        raise VolumeNotMounted(refusal) from None
    # The descriptor pins what we opened; it must be the root of a filesystem other than its
    # parent's (as `mountpoint` judges), not the directory below a volume unmounted a moment ago.
    # (Not compared with mountinfo's device: btrfs subvolumes have devices of their own.)
    st, parent = os.fstat(fd), os.stat("..", dir_fd=fd)
    if st.st_dev == parent.st_dev and st.st_ino != parent.st_ino:
        os.close(fd)
        raise VolumeNotMounted(refusal)
    return fd


def open_trash(root_fd: int, mount_point: str, create: bool) -> int | None:
    """The trash directory's descriptor; refuses one that is not root's own 0700 directory.

    (The Prolog makes the trash its own way, replacing whatever took the name: jobdir.)"""
    return open_private_dir(root_fd, mount_point, TRASH_NAME, create)


def open_private_dir(root_fd: int, mount_point: str, name: str, create: bool) -> int | None:
    """The descriptor of root's own 0700 directory `name` in the volume's root (made if `create`;
    None when missing); anything else at the name is refused."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=root_fd)
        except FileExistsError:
            pass
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ScratchError(f"{mount_point}/{name} is not a directory ({exc.strerror}): remove it by hand") from None
    st = os.fstat(fd)
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise ScratchError(f"{mount_point}/{name} is not root's private directory (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): remove it by hand")
    return fd

# ---- operations: metrics and the kernel log ---------------------------------------------------

HOOK_FIGURES = f"{RUN_DIR}/hook-figures"  # the Prolog's and Epilog's figures, for the metrics
HOOK_TOTALS = f"{RUN_DIR}/hook-figures.totals"  # what the health check has folded of them
HEALTH_FINDINGS = f"{RUN_DIR}/health.findings"  # the latest health check's findings (status, metrics)
IO_ERRORS_STATE = f"{STATE_DIR}/io-errors"  # the kernel log's cursor (per boot) and the I/O errors counted
METRICS_FILE = "slurm_scratch.prom"  # in [health] metrics_dir
