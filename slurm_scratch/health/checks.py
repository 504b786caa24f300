"""The checks of the scratch volume (see the health package's docstring for the list), and
`run_checks`, which gathers what they read once and runs them: statvfs and the probe in a timed
child (they touch the filesystem and may hang), the rest from /proc, /sys and `lvs`.
"""

from __future__ import annotations

import os
import time

from slurm_scratch import mounts, timed
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.health import stuck
from slurm_scratch.health.findings import Finding, bad, ok, problems_of  # noqa: F401  (problems_of: the checks' vocabulary)
from slurm_scratch.health.recorded import expected_volume, field, recorded
from slurm_scratch.volume.state import VolumeRecord
from slurm_scratch.layout import PROBE_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only
    from collections.abc import Callable

PROBE_SIZE = 4096


def _same_device(mount: mounts.Mount, device: str) -> bool:
    try:
        rdev = os.stat(device).st_rdev
        if rdev and f"{os.major(rdev)}:{os.minor(rdev)}" == mount.major_minor:
            return True
    except OSError:
        pass
    return os.path.realpath(device) == os.path.realpath(mount.source) or device == mount.source


def check_mount(config: Config, mount: mounts.Mount | None, record: VolumeRecord | None) -> Finding:
    mount_point = config.volume.mount_point
    if mount is None:
        return bad("mount", f"{mount_point} not mounted")
    fstype = field(record, "filesystem") or config.volume.filesystem
    if mount.fstype != fstype:
        return bad("mount", f"{mount_point} is {mount.fstype}, expected {fstype}")
    backend, device, _ = expected_volume(config, record)
    if device and backend != "btrfs" and mount.source != field(record, "mount_source") and not _same_device(mount, device):
        return bad("mount", f"{mount_point} mounted from {mount.source}, expected {device}")
    return ok("mount", f"{mount_point} is {mount.fstype} on {mount.source}")


def check_writable(config: Config, mount: mounts.Mount) -> Finding:
    if "ro" in mount.options:
        return bad("writable", f"{config.volume.mount_point} read-only")
    return ok("writable", "read-write")


def _statvfs_work(mount_point: str):
    def work() -> str:
        st = os.statvfs(mount_point)
        return f"{st.f_blocks} {st.f_bavail} {st.f_files} {st.f_favail} {st.f_frsize}"

    return work


def space_findings(config: Config, numbers: str) -> list[Finding]:
    """Free space and inode findings from the statvfs child's "blocks bavail files favail [frsize]"."""
    mount_point = config.volume.mount_point
    blocks, bavail, files, favail = (int(value) for value in numbers.split()[:4])
    found = []
    if blocks > 0:
        free = 100.0 * bavail / blocks
        text = f"{mount_point} {100 - free:.0f}% full (min free {config.health.min_free_percent:g}%)"
        found.append((bad if free < config.health.min_free_percent else ok)("statvfs", text).replace(value=numbers))
    if files > 0:  # btrfs reports no inode limit
        free = 100.0 * favail / files
        text = f"{mount_point} inodes {100 - free:.0f}% used (min free {config.health.min_free_inodes_percent:g}%)"
        found.append(bad("statvfs", text) if free < config.health.min_free_inodes_percent else ok("statvfs", text))
    return found


def _probe_work(mount_point: str):
    def work() -> str:
        from slurm_scratch.layout import VolumeNotMounted, open_root, open_trash

        step = "open"
        started = time.monotonic()
        try:
            try:  # unmounted since mountinfo was read: do not write to the directory below it
                root_fd = open_root(mount_point, f"{mount_point} is no longer a mounted filesystem", consult_mountinfo=False)
            except VolumeNotMounted as exc:
                raise ScratchError(str(exc)) from None
            step = "trash dir"
            trash_fd = open_trash(root_fd, mount_point, create=True)
            assert trash_fd is not None
            name = f"{PROBE_PREFIX}{os.getpid()}.{time.time_ns()}"  # not a stuck earlier probe's file
            payload = (f"slurm-scratch health probe {os.getpid()} {time.time()}\n".encode() * 100)[:PROBE_SIZE]
            step = "create"
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=trash_fd)
            try:
                step = "write"
                if os.write(fd, payload) != len(payload):
                    raise ScratchError("short write")
                step = "fsync"
                os.fsync(fd)
                step = "read"
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read from the disk, not the page cache
                if os.pread(fd, len(payload), 0) != payload:
                    raise ScratchError("read back different data")
            finally:
                os.close(fd)
            step = "unlink"
            try:
                os.unlink(name, dir_fd=trash_fd)
            except FileNotFoundError:
                pass  # the reaper empties this directory and may have been quicker
        except OSError as exc:
            raise ScratchError(f"{step}: {exc.strerror or exc}") from None
        except ScratchError as exc:
            raise ScratchError(f"{step}: {exc}") from None
        return f"{(time.monotonic() - started) * 1000:.1f}"

    return work


def _block_name(major_minor: str) -> str | None:
    try:
        return os.path.basename(os.path.realpath(f"/sys/dev/block/{major_minor}"))
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read().strip()
    except OSError:
        return None


def check_fs_errors(config: Config, mount: mounts.Mount, sysfs: str = "/sys") -> Finding | None:
    if mount.fstype != "ext4":
        return None
    name = _block_name(mount.major_minor)
    count = _read(f"{sysfs}/fs/ext4/{name}/errors_count") if name else None
    if count is None or not count.isdigit():
        return None
    if int(count):
        return bad("errors", f"{config.volume.mount_point} has {count} ext4 errors")
    return ok("errors", "no ext4 errors")


def check_md(sysfs_block: str, name: str, members: list[str] | None) -> list[Finding]:
    """An md array from its sysfs directory (e.g. /sys/block/md127)."""
    state = _read(f"{sysfs_block}/md/array_state")
    if state is None:
        return [bad("layers", f"md array {name} not found")]
    if state in ("clear", "inactive", "suspended", "readonly", "broken"):
        return [bad("layers", f"md array {name} {state}")]
    degraded = _read(f"{sysfs_block}/md/degraded")
    if degraded and degraded.isdigit() and int(degraded):
        return [bad("layers", f"md array {name} degraded ({degraded} disks missing)")]
    try:
        present = [entry for entry in os.listdir(f"{sysfs_block}/md") if entry.startswith("dev-")]
    except OSError:
        present = []
    raid_disks = _read(f"{sysfs_block}/md/raid_disks")
    if members is not None and len(present) != len(members):
        return [bad("layers", f"md array {name} has {len(present)} disks, {len(members)} recorded")]
    if raid_disks and raid_disks.isdigit() and len(present) < int(raid_disks):
        return [bad("layers", f"md array {name} has {len(present)} of {raid_disks} disks")]
    return [ok("layers", f"md array {name} {state}, {len(present)} disks")]


def lv_findings(row: dict[str, str] | None, lv: str, members: list[str] | None) -> list[Finding]:
    """Findings from the LV's `lvs` row (lv_attr, pv_count, vg_missing_pv_count; see volume/lvm.py)."""
    attr = (row or {}).get("lv_attr", "")
    if len(attr) < 9:
        return [bad("layers", f"LV {lv} not found")]
    pv_count, missing = row.get("pv_count", ""), row.get("vg_missing_pv_count", "")
    if attr[8] == "p" or (missing.isdigit() and int(missing)):
        return [bad("layers", f"LV {lv} partial (a disk is missing)")]
    # `lvs --readonly` does not ask device-mapper, so bookworm's LVM shows the state as 'X'
    # (unknown): then whether the LV is active is the mount check's answer (mounted from the LV's
    # device) and sysfs's (not suspended), not this one's.
    if attr[4] not in ("a", "X"):
        return [bad("layers", f"LV {lv} not active")]
    if members is not None and pv_count.isdigit() and int(pv_count) != len(members):
        return [bad("layers", f"LV {lv} has {pv_count} disks, {len(members)} recorded")]
    return [ok("layers", f"LV {lv} active, {pv_count} disks")]


def check_lvm(config: Config, mount: mounts.Mount | None, record: VolumeRecord, members: list[str] | None) -> list[Finding]:
    from slurm_scratch.volume import lvm

    lv = f"{record.vg_name or config.volume.vg_name}/{record.lv_name or config.volume.lv_name}"
    found = []
    if mount is not None:  # sysfs first: every disk of the mounted LV still there
        name = _block_name(mount.major_minor)
        if name and os.path.isdir(f"/sys/block/{name}/dm"):
            if _read(f"/sys/block/{name}/dm/suspended") == "1":
                found.append(bad("layers", f"LV {lv} suspended"))
    try:
        rows = lvm.report("lvs", "lv_attr,pv_count,vg_missing_pv_count", lv, timeout=config.health.check_timeout, readonly=True)
    except ScratchError as exc:
        return found + [bad("hung" if "timed out" in str(exc) else "layers", f"lvs: {exc}")]
    return found + lv_findings(rows[0] if rows else None, lv, members)


def check_btrfs(config: Config, mount: mounts.Mount, fsid: str, members: list[str] | None, sysfs: str = "/sys") -> list[Finding]:
    """A btrfs volume striped by btrfs itself: not mounted degraded, every recorded disk present."""
    mount_point = config.volume.mount_point
    if "degraded" in mount.options:
        return [bad("layers", f"btrfs on {mount_point} mounted degraded")]
    devices = None
    if fsid:
        try:
            devices = os.listdir(f"{sysfs}/fs/btrfs/{fsid}/devices")
        except OSError:
            devices = None
    if devices is None:  # find the filesystem by its mounted device
        source = os.path.basename(os.path.realpath(mount.source))
        try:
            for candidate in os.listdir(f"{sysfs}/fs/btrfs"):
                listed = f"{sysfs}/fs/btrfs/{candidate}/devices"
                if os.path.isdir(listed) and source in os.listdir(listed):
                    devices = os.listdir(listed)
                    break
        except OSError:
            pass
    if devices is None:
        return []
    if members is not None and len(devices) != len(members):
        return [bad("layers", f"btrfs on {mount_point} has {len(devices)} disks, {len(members)} recorded")]
    return [ok("layers", f"btrfs on {len(devices)} disks")]


def check_layers(config: Config, mount: mounts.Mount | None, record: VolumeRecord | None) -> list[Finding]:
    """The layers below the filesystem, for the backend the volume was recorded with."""
    if record is None:
        return []
    backend, device, members = expected_volume(config, record)
    if backend == "lvm":
        return check_lvm(config, mount, record, members)
    if backend == "mdadm":
        name = _block_name(mount.major_minor) if mount is not None else None
        if name is None and device:
            name = os.path.basename(os.path.realpath(device))
        if not name:
            return [bad("layers", f"md array {config.volume.md_name} not found")]
        return check_md(f"/sys/block/{name}", name, members)
    if backend == "btrfs" and mount is not None and mount.fstype == "btrfs":
        return check_btrfs(config, mount, record.fs_uuid or "", members)
    return []


def run_checks(config: Config, meanwhile: Callable[[], list[Finding]] | None = None) -> list[Finding]:
    """The checks' findings. `meanwhile` (a callable returning more findings, e.g. the kernel log's
    I/O errors) runs in this process while the child touches the filesystem."""
    mount_point = config.volume.mount_point
    record = recorded(config)
    mount = mounts.find_mount(mount_point)
    findings = [check_mount(config, mount, record)]
    if mount is None:
        return findings + check_layers(config, mount, record) + (meanwhile() if meanwhile else [])
    writable = check_writable(config, mount)
    findings.append(writable)
    stuck_text = stuck.still_stuck()
    child = None
    if stuck_text is None:  # statvfs and the probe run in one child, while this process goes on
        steps = [_statvfs_work(mount_point)]
        if writable.healthy and findings[0].healthy:
            steps.append(_probe_work(mount_point))
        child = timed.Child(steps)
    findings += check_layers(config, mount, record)
    errors = check_fs_errors(config, mount)
    if errors is not None:
        findings.append(errors)
    if meanwhile is not None:
        findings += meanwhile()
    if child is None:
        return findings + [bad("hung", stuck_text)]
    timeouts = [config.health.check_timeout, config.health.probe_timeout]
    texts = [f"statvfs timed out after {timeouts[0]:g} s", f"probe timed out after {timeouts[1]:g} s"]
    for index, result in enumerate(child.results(timeouts[: child.count])):
        if result.status == "timeout":
            stuck.remember(result.pid, texts[index])
            findings.append(bad("hung", texts[index]))
        elif index == 0:
            if result.status == "ok":
                findings += space_findings(config, result.text)
            elif result.status == "error":
                findings.append(bad("statvfs", f"{mount_point} statvfs failed: {result.text}"))
        elif result.status == "ok":
            findings.append(ok("probe", f"probe {result.text} ms").replace(value=result.text))
        elif result.status == "error":
            findings.append(bad("probe", f"{mount_point} probe failed: {result.text}"))
    return findings
