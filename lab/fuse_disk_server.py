"""A FUSE filesystem holding one file, `disk`, backed by an image file, that fails requests with
EIO on demand: the backing file of a loop device whose I/O errors the kernel itself then logs
("I/O error, dev loopN, ..."), for the tests of the kernel I/O error check.

Run by lab/failing_disk.py in the foreground (python3-fuse, libfuse2), single-threaded, with
direct_io so that every read and write of the loop device reaches it. The environment names the
image (FUSE_DISK_IMAGE) and a control file (FUSE_DISK_CONTROL), read on every request:
  empty or missing    every request is served
  all                 every read and write fails with EIO
  N                   the next N reads or writes fail
  reads N             the next N reads fail (writes are served)
"""
from __future__ import annotations

import errno
import os
import stat

import fuse

fuse.fuse_python_api = (0, 2)
IMAGE = os.environ["FUSE_DISK_IMAGE"]
CONTROL = os.environ["FUSE_DISK_CONTROL"]
FD = os.open(IMAGE, os.O_RDWR)


def failing(kind: str) -> bool:
    try:
        with open(CONTROL) as stream:
            words = stream.read().split()
    except FileNotFoundError:
        return False
    if words == ["all"]:
        return True
    only = words[0] if len(words) == 2 else None
    count = words[-1] if words else ""
    if not count.isdigit() or int(count) == 0 or (only is not None and only != kind):
        return False
    with open(CONTROL, "w") as stream:
        stream.write(" ".join(([only] if only else []) + [str(int(count) - 1)]))
    return True


class Disk(fuse.Fuse):
    def getattr(self, path):
        if path == "/":
            return fuse.Stat(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/disk":
            return fuse.Stat(st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=os.fstat(FD).st_size)
        return -errno.ENOENT

    def readdir(self, path, offset):
        for name in (".", "..", "disk"):
            yield fuse.Direntry(name)

    def open(self, path, flags):
        return 0 if path == "/disk" else -errno.ENOENT

    def read(self, path, size, offset):
        if failing("reads"):
            return -errno.EIO
        return os.pread(FD, size, offset)

    def write(self, path, buf, offset):
        if failing("writes"):
            return -errno.EIO
        return os.pwrite(FD, buf, offset)

    def truncate(self, path, size):
        return 0

    def fsync(self, path, isfsyncfile):
        os.fsync(FD)
        return 0

    def flush(self, path):
        return 0

    def release(self, path, flags):
        return 0


if __name__ == "__main__":
    server = Disk(version="%prog", usage="", dash_s_do="setsingle")
    server.parse(errex=1)
    server.multithreaded = False
    server.main()
