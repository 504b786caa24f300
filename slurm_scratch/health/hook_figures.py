"""The Prolog's and Epilog's figures (figures.py) folded into running totals for the metrics: runs,
failures, and a histogram of their durations, per hook, since boot (RUN_DIR).

Only a full health check folds, under the check lock: it reads the figures file from where it
stopped (the offset and inode in layout.HOOK_TOTALS), adds the whole lines to the totals and saves
both. Past ROTATE_BYTES it renames a new empty file over it and reads what was appended to the
old one until then (a line a hook writes to the old file in the microseconds after that last read
is lost). With metrics off the file is removed, so that hooks stop writing it.
"""

from __future__ import annotations

import os

from slurm_scratch import statefile
from slurm_scratch.figures import HOOKS
from slurm_scratch.layout import HOOK_FIGURES, HOOK_TOTALS
from slurm_scratch.record import Record

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
ROTATE_BYTES = 256 * 1024


class HookTotals(Record):
    hook: str
    runs: int
    failures: int
    seconds: float  # the sum of their durations
    buckets: tuple[int, ...]  # cumulative counts per BUCKETS bound (le)


def _empty(hook: str) -> HookTotals:
    return HookTotals(hook=hook, runs=0, failures=0, seconds=0.0, buckets=(0,) * len(BUCKETS))


def add(totals: HookTotals, seconds: float, status: int) -> HookTotals:
    return totals.replace(runs=totals.runs + 1, failures=totals.failures + (status != 0), seconds=totals.seconds + seconds,
                          buckets=tuple(count + (seconds <= bound) for count, bound in zip(totals.buckets, BUCKETS)))


def fold_lines(text: str, totals: dict[str, HookTotals]) -> dict[str, HookTotals]:
    """The totals with the figures file's whole lines `<hook> <ms> <status>` added."""
    totals = dict(totals)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or fields[0] not in totals:
            continue
        try:
            seconds, status = float(fields[1]) / 1000.0, int(fields[2])
        except ValueError:
            continue
        totals[fields[0]] = add(totals[fields[0]], seconds, status)
    return totals


def load() -> tuple[dict[str, HookTotals], dict[str, str]]:
    """The totals per hook, and the file position they were read up to (`inode`, `offset`)."""
    fields = statefile.read_fields(HOOK_TOTALS) or {}
    totals = {}
    for hook in HOOKS:
        try:
            buckets = tuple(int(count) for count in fields.get(f"{hook}.buckets", "").split())
            totals[hook] = HookTotals(hook=hook, runs=int(fields.get(f"{hook}.runs", 0)), failures=int(fields.get(f"{hook}.failures", 0)),
                                      seconds=float(fields.get(f"{hook}.seconds", 0)), buckets=buckets if len(buckets) == len(BUCKETS) else (0,) * len(BUCKETS))
        except ValueError:
            totals[hook] = _empty(hook)
    return totals, {"inode": fields.get("inode", ""), "offset": fields.get("offset", "0")}


def _save(totals: dict[str, HookTotals], inode: int, offset: int) -> None:
    fields: dict[str, object] = {"inode": inode, "offset": offset}
    for hook, each in totals.items():
        fields.update({f"{hook}.runs": each.runs, f"{hook}.failures": each.failures, f"{hook}.seconds": f"{each.seconds:.6f}",
                       f"{hook}.buckets": " ".join(str(count) for count in each.buckets)})
    statefile.write_fields(HOOK_TOTALS, fields)


def _read_from(fd: int, offset: int) -> tuple[str, int]:
    """The whole lines from `offset` on, and the offset after them."""
    data = os.pread(fd, max(0, os.fstat(fd).st_size - offset), offset)
    whole = data[: data.rfind(b"\n") + 1]
    return whole.decode("utf-8", errors="replace"), offset + len(whole)


def fold() -> dict[str, HookTotals]:
    """Add the figures the hooks left since the last fold; make the file if missing. The totals."""
    totals, position = load()
    fd = os.open(HOOK_FIGURES, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        inode = os.fstat(fd).st_ino
        offset = int(position["offset"]) if position["inode"] == str(inode) and position["offset"].isdigit() else 0
        text, offset = _read_from(fd, offset)
        totals = fold_lines(text, totals)
        if offset >= ROTATE_BYTES:  # a new empty file takes the name at once (no moment without one)
            fresh = f"{HOOK_FIGURES}.new"
            os.close(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            os.replace(fresh, HOOK_FIGURES)
            text, _ = _read_from(fd, offset)  # what hooks appended to the old one before the rename
            totals = fold_lines(text, totals)
            inode, offset = os.stat(HOOK_FIGURES).st_ino, 0
    finally:
        os.close(fd)
    _save(totals, inode, offset)
    return totals


def stop() -> None:
    """Metrics are off: no figures file, so hooks write nothing."""
    try:
        os.unlink(HOOK_FIGURES)
    except FileNotFoundError:
        pass
