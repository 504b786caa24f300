"""The trash's backlog: how many entries wait for the reaper and how many bytes they hold on disk.

Counting bytes walks the trash, which touches the volume: it runs in a timed child (timed.py),
within a time bound and never following a symlink or crossing into another filesystem; a walk
cut short says so (`complete`), its bytes then being a lower bound.
"""

from __future__ import annotations

import os
import stat
import time

from slurm_scratch import timed
from slurm_scratch.config import Config
from slurm_scratch.layout import DIR_FLAGS, PROBE_PREFIX, VolumeNotMounted, open_root, open_trash
from slurm_scratch.record import Record


class Backlog(Record):
    entries: int  # names in the trash (a retired job directory, a squatter's entry, ...)
    bytes: int  # on disk (allocated blocks) below them
    complete: bool  # False: the walk hit its time bound, or the trash could not be read
    error: str = ""  # why the trash could not be read ("" when it could)


def _walk(dir_fd: int, device: int, deadline: float) -> tuple[int, bool]:
    """Bytes allocated below an open directory, and whether the walk finished before `deadline`."""
    total = 0
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if time.monotonic() > deadline:
                return total, False
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode) and st.st_dev == device:
                try:
                    fd = os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue
                try:
                    below, done = _walk(fd, device, deadline)
                finally:
                    os.close(fd)
                total += below
                if not done:
                    return total, False
    return total, True


def _measure(mount_point: str, seconds: float):
    def work() -> str:
        deadline = time.monotonic() + seconds
        try:
            root_fd = open_root(mount_point, consult_mountinfo=False)
        except VolumeNotMounted:
            return "0 0 1"
        try:
            trash_fd = open_trash(root_fd, mount_point, create=False)
            if trash_fd is None:
                return "0 0 1"
            try:
                names = [name for name in os.listdir(trash_fd) if not name.startswith(PROBE_PREFIX)]
                total, done = _walk(trash_fd, os.fstat(trash_fd).st_dev, deadline)
            finally:
                os.close(trash_fd)
        finally:
            os.close(root_fd)
        return f"{len(names)} {total} {int(done)}"

    return work


def measure(config: Config, seconds: float) -> Backlog:
    """The trash's backlog, within `seconds` (the child is killed after twice that: a hung volume)."""
    result = timed.in_child(_measure(config.volume.mount_point, seconds), 2 * seconds + 1)
    if result.status != "ok":
        return Backlog(entries=0, bytes=0, complete=False, error=result.text or f"timed out after {2 * seconds + 1:g} s")
    entries, total, done = (int(value) for value in result.text.split())
    return Backlog(entries=entries, bytes=total, complete=bool(done))
