"""btrfs: a job directory is a subvolume whose usage a level-1 qgroup limits.

The Prolog makes the subvolume (S) in the trash, creates qgroup 1/S with the job's limit and puts
the subvolume's own qgroup 0/S in it, then renames the subvolume into place. The volume runs
btrfs *simple quotas* (setup enables them): with them the kernel puts a subvolume a user creates
(or snapshots) inside the job's into every qgroup the job's subvolume belongs to, so a nested
subvolume is charged to the job too; with full qgroups it would escape the limit.

The Prolog's calls are ioctls (no btrfs command on the hot path); the reaper deletes with the
`btrfs` command through the run module, under its timeout, and then removes the qgroups.
"""

from __future__ import annotations

import fcntl
import os
import sys

from slurm_scratch.errors import ScratchError

FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root directory
LEVEL_SHIFT = 48  # a qgroup id is level << 48 | id
LIMIT_MAX_RFER = 1


def _ioc(direction: int, number: int, size: int) -> int:
    return direction << 30 | size << 16 | 0x94 << 8 | number


SUBVOL_CREATE = _ioc(1, 14, 4096)
INO_LOOKUP = _ioc(3, 18, 4096)
QGROUP_ASSIGN = _ioc(1, 41, 24)
QGROUP_CREATE = _ioc(1, 42, 16)
QGROUP_LIMIT = _ioc(2, 43, 48)


def _u64(*values: int) -> bytes:
    """The ioctl structs' fields: native-endian unsigned 64-bit integers (what the struct module's
    "Q" gives, without importing it on the Prolog's path)."""
    return b"".join(value.to_bytes(8, sys.byteorder) for value in values)


def level1(subvolume_id: int) -> str:
    return f"1/{subvolume_id}"


def create_subvolume(dir_fd: int, name: str) -> None:
    """A new, empty subvolume at dir_fd/name (root-owned, mode 0755, as the kernel makes it)."""
    encoded = os.fsencode(name)
    fcntl.ioctl(dir_fd, SUBVOL_CREATE, bytearray(_u64(0) + encoded[:4088].ljust(4088, b"\0")))  # over 1 KiB: a mutable buffer


def subvolume_id(fd: int) -> int:
    """The id of the subvolume `fd` lies in (the tree the inode belongs to)."""
    args = bytearray(_u64(0, FIRST_FREE_OBJECTID) + bytes(4080))
    fcntl.ioctl(fd, INO_LOOKUP, args)
    return int.from_bytes(args[:8], sys.byteorder)


def is_subvolume_root(st: os.stat_result, parent: os.stat_result) -> bool:
    """A subvolume's root: inode 256 on a device of its own (btrfs gives each subvolume one)."""
    return st.st_ino == FIRST_FREE_OBJECTID and st.st_dev != parent.st_dev


def limit_new(dir_fd: int, fd: int, limit_bytes: int) -> int:
    """Put the subvolume open on `fd` under a new qgroup 1/S limited to `limit_bytes`; returns S.
    `dir_fd` is any directory on the volume (the ioctls act on the filesystem)."""
    subvolume = subvolume_id(fd)
    group = 1 << LEVEL_SHIFT | subvolume
    try:
        fcntl.ioctl(dir_fd, QGROUP_CREATE, _u64(1, group))
    except FileExistsError:
        pass  # left by a subvolume of the same id whose data is gone: ours to reuse
    except OSError as exc:
        raise ScratchError(f"cannot create btrfs qgroup {level1(subvolume)} ({exc.strerror}): are quotas enabled? "
                           "(`slurm-scratch setup` enables btrfs simple quotas when [jobs] quota is on)") from None
    fcntl.ioctl(dir_fd, QGROUP_LIMIT, _u64(group, LIMIT_MAX_RFER, limit_bytes, 0, 0, 0))
    fcntl.ioctl(dir_fd, QGROUP_ASSIGN, _u64(1, subvolume, group))
    return subvolume


def set_limit(dir_fd: int, subvolume: int, limit_bytes: int) -> None:
    """A reused job directory's limit, set again (the same job, requeued: its request may differ)."""
    fcntl.ioctl(dir_fd, QGROUP_LIMIT, _u64(1 << LEVEL_SHIFT | subvolume, LIMIT_MAX_RFER, limit_bytes, 0, 0, 0))


SYSFS_BTRFS = "/sys/fs/btrfs"


def usage(fs_uuid: str, subvolume: int, sysfs: str = SYSFS_BTRFS) -> tuple[int, int] | None:
    """(limit, bytes used) of the job's qgroup 1/S, from the kernel's counters in sysfs (no command,
    no ioctl, nothing read from the disks; limit 0: none set), or None when the qgroup is gone."""
    base = f"{sysfs}/{fs_uuid}/qgroups/1_{subvolume}"
    try:
        with open(f"{base}/max_referenced", "rb") as limit, open(f"{base}/referenced", "rb") as used:
            return int(limit.read()), int(used.read())
    except (OSError, ValueError):
        return None


# ---- the reaper ----------------------------------------------------------------------------------

def reap(mount_point: str, target: str, deadline: float) -> str:
    """Delete the trashed entry at `target` (in root's 0700 trash: no user can change it under us):
    a job's subvolume, or a directory `rm -rf --one-file-system` could not empty, with every
    subvolume a user nested inside (btrfs deletes no subvolume that holds another, so the innermost
    go first); then remove the qgroups they leave. Each command runs under the run module's
    timeout, bounded by `deadline`. Returns a note for the log."""
    import time

    from slurm_scratch import run

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    top = _subvolume_id_if_root(target)
    ids: list[int] = []
    if top is not None:  # btrfs refuses to delete a subvolume at its limit (EDQUOT): lift it first
        run.run(["btrfs", "qgroup", "limit", "none", level1(top), mount_point], timeout=left(), check=False, quiet=True)
    if top is not None and run.run(["btrfs", "subvolume", "delete", "--commit-after", "--", target], timeout=left(), check=False, quiet=True).returncode == 0:
        ids.append(top)  # nothing nested inside: one ioctl, however many files
    else:
        for path in _subvolumes_below(target):  # deepest first
            ids.append(_subvolume_id_if_root(path) or 0)
            run.run(["btrfs", "subvolume", "delete", "--commit-after", "--", path], timeout=left(), quiet=True)
        if top is not None:
            run.run(["btrfs", "subvolume", "delete", "--commit-after", "--", target], timeout=left(), quiet=True)
            ids.append(top)
        else:
            run.run(["rm", "-rf", "--one-file-system", "--", target], timeout=left(), quiet=True)
    ids = [subvolume for subvolume in ids if subvolume]
    if not ids:
        return ""
    # Wait for the cleaner to drop them (then the kernel removes their 0/N qgroups), within budget.
    run.run(["btrfs", "subvolume", "sync", mount_point, *map(str, ids)], timeout=min(left(), 60.0), check=False, quiet=True)
    # A qgroup the cleaner has not let go of yet stays, empty and harmless: a later subvolume of the
    # same id reuses it (limit_new). Nothing else is removed: only what this reaper deleted is ours.
    problems = destroy_qgroups(mount_point, ids, top, left())
    return f"deleted subvolume(s) {', '.join(map(str, ids))}" + (f"; qgroups left: {'; '.join(problems)}" if problems else "; qgroups removed")


def _subvolume_id_if_root(path: str) -> int | None:
    st, parent = os.lstat(path), os.lstat(os.path.dirname(path))
    if not is_subvolume_root(st, parent):
        return None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return subvolume_id(fd)
    finally:
        os.close(fd)


def _subvolumes_below(top: str) -> list[str]:
    """Subvolume roots below `top` (same mount: never a mount point), deepest first; symlinks never followed."""
    from slurm_scratch import mounts

    found: list[str] = []
    top_fd = os.open(top, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mount = mounts.mount_id(top_fd)
    finally:
        os.close(top_fd)

    def visit(path: str, st: os.stat_result) -> None:
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                child = entry.stat(follow_symlinks=False)
                fd = os.open(entry.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    same_mount = mounts.mount_id(fd) == mount
                finally:
                    os.close(fd)
            except OSError:
                continue
            if same_mount:
                visit(entry.path, child)
                if is_subvolume_root(child, st):
                    found.append(entry.path)

    visit(top, os.lstat(top))
    return found


def destroy_qgroups(mount_point: str, subvolume_ids: list[int], top: int | None, timeout: float) -> list[str]:
    """Remove the deleted subvolumes' 0/N qgroups (when the kernel has not) and the job's 1/S;
    returns what could not be removed yet."""
    from slurm_scratch import run

    problems = []
    groups = [f"0/{subvolume}" for subvolume in subvolume_ids] + ([level1(top)] if top is not None else [])
    for group in groups:
        result = run.run(["btrfs", "qgroup", "destroy", group, mount_point], timeout=timeout, check=False, quiet=True)
        if result.returncode != 0 and "No such file" not in result.stderr:
            problems.append(f"{group}: {(result.stderr or result.stdout).strip()}")
    return problems
