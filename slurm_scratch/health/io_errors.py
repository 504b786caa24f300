"""The kernel I/O error check: I/O errors, NVMe timeouts and resets, and filesystem errors that the
kernel logged about a member disk or the volume since the last health check (a node's first
check ever starts at the log's end; after a reboot, the new boot's log is read from its start).

Each full run reads /dev/kmsg after its cursor (kmsg.py), counts the messages that name a watched
disk, and keeps those of the last `[health] io_errors_window`. More than `[health] io_errors_max`
of them about one disk make the finding `I/O errors on <disk>`, and that finding is sticky: it
stays (and keeps the node drained) on quiet runs afterwards, until `slurm-scratch healthcheck
--clear-io-errors`, a new boot, or the disk is no longer part of the volume (setup rebuilt it
without the disk: neither the volume record nor the mounted volume names it). All of it lives in layout.IO_ERRORS_STATE (STATE_DIR): the
cursor with the boot id it belongs to (kernel sequence numbers restart at boot; a container
restart keeps the boot and the kernel's log), the recent errors, the totals since boot (for the
metrics) and the sticky finding. `--report-only` reads and reports, and saves nothing.

Watched: the volume's block device and what it is built on (device-mapper and md slaves, btrfs's
devices, from sysfs), the member disks of the volume record, and the NVMe controllers of those.
Counted: messages of warning level or worse with the words of a failed request (`I/O error`,
medium/target errors, timeouts), an NVMe controller reset or timeout, or a filesystem error
(`EXT4-fs error`, `BTRFS error`, btrfs's per-device error counts, XFS I/O errors). Not counted:
`Buffer I/O error` (one line per page of a request already counted) and `operation not supported`
(a discard or write-zeroes the device does not do). A device attached anew ("detected capacity
change from 0", as a loop device whose name is reused) starts with no recent errors. The block
layer rate-limits its error lines (10 per 5 s for all devices): a dying disk still passes any
sensible threshold, but a count is a lower bound.
"""

from __future__ import annotations

import os
import time

from slurm_scratch import mounts, statefile
from slurm_scratch.config import Config
from slurm_scratch.health import kmsg
from slurm_scratch.health.findings import Finding, bad, ok
from slurm_scratch.layout import IO_ERRORS_STATE
from slurm_scratch.record import Factory, Record
from slurm_scratch.volume.state import VolumeRecord

CHECK = "io"
MAX_EVENTS = 1000  # recent errors kept (the newest)
FROM_NOW = -2  # the cursor of a node with no state at all: count from the log's end
REATTACHED = "detected capacity change from 0 to"  # a device (re)attached: a loop device's name is reused
ERROR_WORDS = (
    "i/o error", "medium error", "target error", "nexus error", "timeout error", "protection error",
    "timeout, aborting", "timeout, reset", "resetting controller", "controller is down", "disk failure",
    "ext4-fs error", "btrfs error", "btrfs critical", "errs: wr",
)
NOT_COUNTED = ("buffer i/o error", "operation not supported")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class IoState(Record):
    boot: str = ""
    seq: int = FROM_NOW  # the last kernel log record read in this boot (-1: from the boot's start)
    events: tuple[tuple[str, float], ...] = ()  # (kernel name, seconds since boot) of recent errors
    totals: dict = Factory(dict)  # kernel name -> errors counted since boot
    sticky: str = ""  # the disk of a sticky finding ("" = none)
    last: str = ""  # the newest counted message


# ---- what is watched, what counts (pure) ------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return "".join(ch if ch in _NAME_CHARS else " " for ch in text).split()


def counts(message: kmsg.KernelMessage) -> bool:
    """Whether a kernel message is an I/O error of the kinds counted (whatever device it names)."""
    if message.level > 4:
        return False
    text = message.text.lower()
    return any(word in text for word in ERROR_WORDS) and not any(word in text for word in NOT_COUNTED)


def disk_named(message: kmsg.KernelMessage, names: dict[str, str]) -> str | None:
    """The watched kernel name the message is about (the last one named: btrfs names its first
    device, then the failing one), or None."""
    found = [token for token in _tokens(message.text) if token in names]
    return found[-1] if found else None


def _sysfs_names(name: str, sysfs: str, depth: int = 0) -> list[str]:
    """A block device's kernel name and those of the devices below it (dm and md slaves)."""
    names = [name]
    try:
        slaves = os.listdir(f"{sysfs}/block/{name}/slaves")
    except OSError:
        slaves = []
    for slave in slaves if depth < 4 else ():
        names += _sysfs_names(slave, sysfs, depth + 1)
    return names


def _btrfs_names(mount: mounts.Mount, sysfs: str) -> list[str]:
    source = os.path.basename(os.path.realpath(mount.source))
    try:
        for fsid in os.listdir(f"{sysfs}/fs/btrfs"):
            devices = f"{sysfs}/fs/btrfs/{fsid}/devices"
            if os.path.isdir(devices) and source in os.listdir(devices):
                return os.listdir(devices)
    except OSError:
        pass
    return [source]


def watched(record: VolumeRecord | None, mount: mounts.Mount | None, sysfs: str = "/sys") -> dict[str, str]:
    """Kernel names to watch -> the disk a finding names (its /dev path)."""
    names: list[str] = []
    if mount is not None:
        if mount.fstype == "btrfs":
            names += _btrfs_names(mount, sysfs)
        else:
            try:
                top = os.path.basename(os.path.realpath(f"{sysfs}/dev/block/{mount.major_minor}"))
            except OSError:
                top = ""
            if top and top != mount.major_minor:
                names += _sysfs_names(top, sysfs)
    if record is not None:
        names += [os.path.basename(os.path.realpath(member.path)) for member in record.members if member.path]
    disks = {name: f"/dev/{name}" for name in names if name}
    for name in list(disks):  # nvme1n1: its controller nvme1 logs the timeouts and resets
        if name.startswith("nvme") and "n" in name[4:]:
            controller = name[: 4 + name[4:].index("n")]
            disks.setdefault(controller, disks[name])
    return disks


def recent(events: tuple[tuple[str, float], ...], now: float, window: float) -> dict[str, int]:
    """Errors per kernel name within the window before `now` (seconds since boot)."""
    per_disk: dict[str, int] = {}
    for name, seconds in events:
        if now - seconds <= window:
            per_disk[name] = per_disk.get(name, 0) + 1
    return per_disk


# ---- the state file ----------------------------------------------------------------------------


def load() -> IoState:
    fields = statefile.fields_or_empty(IO_ERRORS_STATE)
    events = []
    for item in fields.get("events", "").split():
        name, _, seconds = item.rpartition("@")
        try:
            events.append((name, float(seconds)))
        except ValueError:
            pass
    totals = {key[6:]: int(value) for key, value in fields.items() if key.startswith("total.") and value.isdigit()}
    seq = fields.get("seq", "")
    return IoState(boot=fields.get("boot", ""), seq=int(seq) if seq.lstrip("-").isdigit() else FROM_NOW, events=tuple(events),
                   totals=totals, sticky=fields.get("sticky", ""), last=fields.get("last", ""))


def save(state: IoState) -> None:
    fields: dict[str, object] = {"boot": state.boot, "seq": state.seq, "sticky": state.sticky, "last": state.last,
                                 "events": " ".join(f"{name}@{seconds:.3f}" for name, seconds in state.events)}
    fields.update((f"total.{name}", count) for name, count in sorted(state.totals.items()))
    statefile.write_fields(IO_ERRORS_STATE, fields)


def current() -> IoState:
    """The state of this boot. An older boot's counts nothing (its log is gone): this boot's log is
    read from its start. With no state at all (a node's first check), from the log's end."""
    if not os.path.exists(IO_ERRORS_STATE):
        return IoState(boot=kmsg.boot_id(), seq=FROM_NOW)
    state, boot = load(), kmsg.boot_id()
    return state if state.boot == boot else IoState(boot=boot, seq=-1)


# ---- the check -----------------------------------------------------------------------------


def check(config: Config, record: VolumeRecord | None, save_state: bool = True) -> Finding | None:
    """The I/O error finding of this run (None when [health] io_errors_window = 0)."""
    window = config.health.io_errors_window
    if window <= 0:
        return None
    state = current()
    names = watched(record, mounts.find_mount(config.volume.mount_point))
    try:
        log = kmsg.read_after(max(state.seq, -1))
    except OSError as exc:
        if state.sticky:
            return bad(CHECK, f"I/O errors on {_disk(state.sticky, names)}")
        return ok(CHECK, f"kernel log not readable ({exc.strerror}): I/O errors not watched")
    events, totals, last = list(state.events), dict(state.totals), state.last
    for message in log.messages if state.seq != FROM_NOW else ():
        if REATTACHED in message.text:
            name = disk_named(message, names)
            events = [event for event in events if event[0] != name]
            continue
        name = disk_named(message, names) if counts(message) else None
        if name is not None:
            events.append((name, message.seconds))
            totals[name] = totals.get(name, 0) + 1
            last = message.text[:300]
    now = time.monotonic()
    per_disk = {name: count for name, count in recent(tuple(events), now, window).items() if name in names}
    sticky = state.sticky if state.sticky in names else ""  # a disk no longer in the volume (rebuilt without it) lapses
    over = sorted((count, name) for name, count in per_disk.items() if count > config.health.io_errors_max)
    if not sticky and over:
        sticky = over[-1][1]
    new = IoState(boot=state.boot, seq=log.last_seq, events=tuple(event for event in events if now - event[1] <= window)[-MAX_EVENTS:],
                  totals=totals, sticky=sticky, last=last)
    if save_state and new != state:
        save(new)
    if sticky:
        return bad(CHECK, f"I/O errors on {_disk(sticky, names)}")
    if per_disk:
        count = sum(per_disk.values())
        return ok(CHECK, f"{count} kernel I/O error(s) in the last {window:g} s (drain past {config.health.io_errors_max} on one disk)")
    return ok(CHECK, "no kernel I/O errors")


def _disk(name: str, names: dict[str, str]) -> str:
    return names.get(name, f"/dev/{name}")


def clear() -> str:
    """`healthcheck --clear-io-errors`: forget the sticky finding and the recent errors (the
    cursor stays, so they are not counted again). Returns what was cleared, for the admin."""
    state = current()
    cleared = f"I/O errors on /dev/{state.sticky}" if state.sticky else "no sticky I/O error finding"
    save(state.replace(sticky="", events=()))
    return cleared
