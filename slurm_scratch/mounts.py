"""What is mounted where, read from /proc/self/mountinfo (cheap enough for the Prolog)."""

from __future__ import annotations

import os

from slurm_scratch.record import Record

MOUNTINFO = "/proc/self/mountinfo"


class Mount(Record):
    mount_point: str
    source: str
    fstype: str
    options: tuple[str, ...]  # per-mount and superblock options, e.g. ("rw", "noatime", ...)
    major_minor: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field) - i >= 4 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        mounts.append(
            Mount(
                mount_point=_unescape(fields[4]),
                source=_unescape(fields[dash + 2]) if len(fields) > dash + 2 else "",
                fstype=fields[dash + 1],
                options=tuple(fields[5].split(",")) + tuple(fields[dash + 3].split(",") if len(fields) > dash + 3 else ()),
                major_minor=fields[2],
            )
        )
    return mounts


def list_mounts() -> list[Mount]:
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as stream:
        return parse_mountinfo(stream.read())


def find_mount(path: str) -> Mount | None:
    """The filesystem mounted exactly at `path` (the last one, if stacked), or None.

    On the Prolog's path: only lines whose mount point field matches are parsed into records
    (a node with containers or many cgroup mounts has hundreds of lines)."""
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as stream:
        text = stream.read()
    needle = path if "\\" not in path and not any(ch in path for ch in " \t\n") else None
    matches = []
    for line in text.splitlines():
        fields = line.split(" ", 5)
        if len(fields) > 4 and (fields[4] == needle if needle is not None else _unescape(fields[4]) == path):
            matches.append(line)
    found = parse_mountinfo("\n".join(matches))
    return found[-1] if found else None


def mount_id(fd: int) -> int | None:
    """The id of the mount an open descriptor lies on (fdinfo's mnt_id): the kernel's answer, not a
    path's, so it holds for names a user can rename or swap for symlinks."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as stream:
            for line in stream.read().splitlines():
                if line.startswith(b"mnt_id:"):
                    return int(line.split(b":", 1)[1])
    except (OSError, ValueError):
        return None
    return None


BTRFS_IOC_FS_INFO = 2 << 30 | 1024 << 16 | 0x94 << 8 | 31


def btrfs_fs_uuid(fd: int) -> str:
    """The uuid of the btrfs filesystem an open directory (not O_PATH) lies on, as /sys/fs/btrfs
    names it; OSError on another filesystem."""
    import fcntl

    info = bytearray(1024)
    fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, info)
    fsid = info[16:32].hex()
    return f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}"


def detach(fd: int) -> None:
    """Lazily detach (umount -l) the mount whose root `fd` is open on; OSError if the kernel refuses.

    The mount is named by the descriptor (/proc/self/fd/N), never by a path a user could change into
    a symlink between our look and the umount. Rare path (a user's FUSE mount inside a job
    directory): ctypes is imported only here."""
    import ctypes

    mnt_detach = 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(f"/proc/self/fd/{fd}".encode(), mnt_detach) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def mounts_below(path: str) -> list[tuple[int, str]]:
    """(mount id, mount point) of every mount strictly below `path` in this namespace, shallowest
    first. The mount points are hints for a walk with descriptors, never used as paths themselves."""
    prefix = path.rstrip("/") + "/"
    found = []
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as stream:
        for line in stream.read().splitlines():
            fields = line.split(" ", 5)
            if len(fields) > 4:
                mount_point = _unescape(fields[4])
                if mount_point.startswith(prefix):
                    try:
                        found.append((int(fields[0]), mount_point))
                    except ValueError:
                        continue
    return sorted(found, key=lambda item: item[1].count("/"))
