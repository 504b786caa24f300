"""What is mounted where, read from /proc/self/mountinfo (cheap enough for the Prolog)."""

from __future__ import annotations

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
    """The filesystem mounted exactly at `path` (the last one, if stacked), or None."""
    found = None
    for mount in list_mounts():
        if mount.mount_point == path:
            found = mount
    return found
