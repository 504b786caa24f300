"""What slurm.conf says about a node's temporary disk, read from the file (no Slurm command, no
RPC): `TmpFS` (the filesystem slurmd measures at registration, default /tmp) and the node's
configured `TmpDisk` in MiB (what Slurm shows and schedules `--tmp` on for a static node; slurmd
measuring less drains the node with "Low TmpDisk"). For `status` and `check-config`.

The parser is small and pure: `Key=Value` words (keys in any case, values may be double-quoted),
`#` comments, `Include FILE` (relative to the including file's directory), `NodeName=DEFAULT`
lines (their values apply to the NodeName lines that follow), and NodeName host lists such as
`n[1-4,7],gpu[01-02]`. Everything else in the file is ignored.
"""

from __future__ import annotations

import os

from slurm_scratch.errors import ScratchError
from slurm_scratch.record import Record

DEFAULT_PATH = "/etc/slurm/slurm.conf"
DEFAULT_TMP_FS = "/tmp"
MAX_INCLUDE_DEPTH = 8


class SlurmTmp(Record):
    path: str  # the slurm.conf read
    node: str
    tmp_fs: str
    tmp_disk_mib: int | None  # the node's TmpDisk (0 when its line sets none); None: no such node


def conf_path(configured: str, environ: dict[str, str] | None = None) -> str:
    """`[slurm] slurm_conf`, else $SLURM_CONF, else Slurm's default."""
    environ = os.environ if environ is None else environ
    return configured or environ.get("SLURM_CONF") or DEFAULT_PATH


def _words(line: str) -> list[str]:
    """A line's words, split at blanks outside double quotes (the quotes removed)."""
    words, word, quoted = [], "", False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            if word:
                words.append(word)
            word = ""
        else:
            word += char
    if word:
        words.append(word)
    return words


def _split_outside_brackets(text: str) -> list[str]:
    parts, part, depth = [], "", 0
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += char
    return parts + [part]


def _expand_range(body: str) -> list[str]:
    """`1-3,07` -> ["1", "2", "3", "07"] (a range keeps the width of its first bound)."""
    numbers = []
    for piece in body.split(","):
        first, dash, last = piece.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"bad host range [{body}]")
        if not dash:
            numbers.append(first)
            continue
        if int(last) < int(first) or int(last) - int(first) > 100_000:
            raise ValueError(f"bad host range [{body}]")
        numbers.extend(str(n).zfill(len(first)) for n in range(int(first), int(last) + 1))
    return numbers


def expand_hostlist(text: str) -> list[str]:
    """`n[1-3],gpu[01-02]x` -> n1 n2 n3 gpu01x gpu02x (brackets may repeat in one name)."""
    names = []
    for item in _split_outside_brackets(text):
        expanded = [""]
        rest = item
        while "[" in rest:
            head, _, tail = rest.partition("[")
            body, closed, rest = tail.partition("]")
            if not closed:
                raise ValueError(f"unclosed [ in {item!r}")
            expanded = [f"{done}{head}{number}" for done in expanded for number in _expand_range(body)]
        names.extend(f"{done}{rest}" for done in expanded if f"{done}{rest}")
    return names


def _lines(path: str, depth: int = 0) -> list[tuple[str, str]]:
    """(file, line) of the file and the files it includes, in order."""
    if depth > MAX_INCLUDE_DEPTH:
        raise ScratchError(f"{path}: Include nested deeper than {MAX_INCLUDE_DEPTH}")
    with open(path, encoding="utf-8", errors="replace") as file:
        text = file.read()
    lines = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        words = line.split(None, 1)
        if len(words) == 2 and words[0].lower() == "include":
            included = os.path.join(os.path.dirname(path), words[1].strip().strip('"'))
            lines.extend(_lines(included, depth + 1))
        elif line:
            lines.append((path, line))
    return lines


def parse(lines: list[tuple[str, str]], node: str) -> tuple[str, int | None]:
    """(TmpFS, the node's TmpDisk or None when no NodeName line names it) from (file, line)s."""
    tmp_fs = DEFAULT_TMP_FS
    default_tmp_disk = 0
    found: int | None = None
    for path, line in lines:
        pairs = {}
        for word in _words(line):
            key, equals, value = word.partition("=")
            if equals:
                pairs[key.lower()] = value
        if "tmpfs" in pairs:
            tmp_fs = pairs["tmpfs"]
        if "nodename" not in pairs:
            continue
        tmp_disk = pairs.get("tmpdisk")
        if tmp_disk is not None and not tmp_disk.isdigit():
            raise ScratchError(f"{path}: TmpDisk={tmp_disk} on the NodeName={pairs['nodename']} line is not a number of MiB")
        if pairs["nodename"].upper() == "DEFAULT":
            if tmp_disk is not None:
                default_tmp_disk = int(tmp_disk)
            continue
        try:
            names = expand_hostlist(pairs["nodename"])
        except ValueError as exc:
            raise ScratchError(f"{path}: NodeName={pairs['nodename']}: {exc}") from None
        if node in names:
            found = int(tmp_disk) if tmp_disk is not None else default_tmp_disk
    return tmp_fs, found


def read(path: str, node: str) -> SlurmTmp:
    """What `path` says about `node`; OSError when it cannot be read, ScratchError when a value
    it needs is malformed."""
    tmp_fs, tmp_disk = parse(_lines(path), node)
    return SlurmTmp(path=path, node=node, tmp_fs=tmp_fs, tmp_disk_mib=tmp_disk)


def volume_mib(mount_point: str) -> int | None:
    """The size of the filesystem mounted at `mount_point` in MiB, as slurmd measures TmpFS
    (statvfs: f_blocks * f_frsize); None when nothing is mounted there."""
    if not os.path.ismount(mount_point):
        return None
    stats = os.statvfs(mount_point)
    return stats.f_blocks * stats.f_frsize // (1 << 20)


def warnings(tmp: SlurmTmp, mount_point: str, volume: int | None) -> list[str]:
    """What is wrong with slurm.conf's view of the scratch volume (`volume`: its MiB, if mounted)."""
    found = []
    if os.path.normpath(tmp.tmp_fs) != os.path.normpath(mount_point):
        found.append(f"{tmp.path}: TmpFS={tmp.tmp_fs} is not [volume] mount_point {mount_point}: slurmd measures "
                     f"{tmp.tmp_fs} for TmpDisk and --tmp, not the scratch volume (set TmpFS={mount_point})")
    if tmp.tmp_disk_mib is None:
        found.append(f"{tmp.path}: no NodeName line names node {tmp.node}: its TmpDisk cannot be checked")
    elif volume is not None and tmp.tmp_disk_mib > volume:
        found.append(f"{tmp.path}: TmpDisk={tmp.tmp_disk_mib} of node {tmp.node} exceeds the volume at {mount_point} "
                     f"({volume} MiB): slurmd will drain the node with \"Low TmpDisk\" (set TmpDisk={volume} or less)")
    return found
