"""Observe what exists: the mount, LVM VG/LV, md arrays, btrfs filesystems, the volume's filesystem.

Read-only: runs `pvs/vgs/lvs` (through volume/lvm.py), `mdadm --detail --export`, `btrfs filesystem show`,
`blkid -p`, and reads /proc/self/mountinfo and sysfs. Tools are asked only when the backend or a
disk's signature makes them relevant. The parsers are plain functions (unit-tested).
"""

from __future__ import annotations

import glob
import os
import stat

from slurm_scratch import log, mounts, run
from slurm_scratch.config import VolumeConfig
from slurm_scratch.layout import MARKER_NAME, TRASH_NAME
from slurm_scratch.record import Record
from slurm_scratch.volume import lvm
from slurm_scratch.volume.state import VolumeRecord
from slurm_scratch.volume.devices import Discovery, Signature, devnum_of_path, parse_blkid_export, probe_signature



class Mounted(Record):
    source: str
    fstype: str
    devnum: str  # mountinfo major:minor (0:N for btrfs)
    source_devnum: str | None  # of the source device node, when it is one
    root_mode: int | None  # permission bits of the mounted root directory
    trash_ok: bool  # <mount_point>/.slurm-scratch-trash is root's 0700 directory
    marked: bool = True  # <mount_point>/.slurm-scratch-volume is root's regular file, no access for others


class Vg(Record):
    name: str
    pv_count: int
    missing_pv_count: int
    pvs: tuple[str, ...] = ()  # PV device paths ("[unknown]" for a missing one)
    tags: tuple[str, ...] = ()


class Lv(Record):
    vg_name: str
    name: str
    path: str  # /dev/<vg>/<lv>
    attr: str
    stripes: int = 1

    @property
    def active(self) -> bool:
        return len(self.attr) > 4 and self.attr[4] == "a"

    @property
    def partial(self) -> bool:
        return len(self.attr) > 8 and self.attr[8] == "p"


class MdArray(Record):
    devnode: str  # /dev/md127
    name: str  # the name part of MD_NAME ("host:name")
    uuid: str
    level: str
    raid_disks: int
    array_state: str  # md/array_state: clean, active, inactive, ...
    members: tuple[str, ...]  # /dev/<slave>

    @property
    def running(self) -> bool:
        return self.array_state not in ("", "inactive", "clear")


class BtrfsFs(Record):
    uuid: str
    label: str
    total_devices: int
    present: tuple[str, ...]


class Observed(Record):
    mount: Mounted | None
    recorded: VolumeRecord | None
    vg: Vg | None = None
    lv: Lv | None = None
    md_arrays: tuple[MdArray, ...] = ()
    btrfs: tuple[BtrfsFs, ...] = ()
    device_signatures: tuple[tuple[str, Signature | None], ...] = ()  # existing volume devices: (path, sig)
    device_devnums: tuple[tuple[str, str], ...] = ()  # (path, major:minor)
    new_uuid: str = ""  # the UUID for a filesystem this run makes (random; "" = let mkfs choose)

    def signature_of(self, path: str) -> Signature | None:
        return dict(self.device_signatures).get(path)

    def has_signature_info(self, path: str) -> bool:
        return path in dict(self.device_signatures)

    def devnum_of(self, path: str) -> str | None:
        return dict(self.device_devnums).get(path)


# ---- parsers ------------------------------------------------------------------------------------


def _int(value: object) -> int:
    try:
        return int(str(value).strip() or 0)
    except ValueError:
        return 0


def vg_from(vgs: list[dict[str, str]], vg_name: str, pvs: list[dict[str, str]] = ()) -> Vg | None:
    """The VG `vg_name` from `vgs` rows (vg_name, pv_count, vg_missing_pv_count, vg_tags) and its
    PVs from `pvs` rows (pv_name, vg_name); see volume/lvm.py."""
    for row in vgs:
        if row.get("vg_name") == vg_name:
            names = tuple(pv.get("pv_name", "") for pv in pvs if pv.get("vg_name") == vg_name)
            return Vg(vg_name, lvm.number(row.get("pv_count")), lvm.number(row.get("vg_missing_pv_count")), names, lvm.tags(row.get("vg_tags", "")))
    return None


def lv_from(lvs: list[dict[str, str]], vg_name: str, lv_name: str) -> Lv | None:
    """The LV `vg_name/lv_name` from `lvs` rows (vg_name, lv_name, lv_attr, stripes)."""
    for row in lvs:
        if row.get("vg_name") == vg_name and row.get("lv_name") == lv_name:
            return Lv(vg_name, lv_name, f"/dev/{vg_name}/{lv_name}", row.get("lv_attr", ""), lvm.number(row.get("stripes")) or 1)
    return None


def parse_btrfs_show(text: str) -> list[BtrfsFs]:
    """`btrfs filesystem show --raw` output: one entry per filesystem."""
    found: list[BtrfsFs] = []
    label = uuid = ""
    total = 0
    present: list[str] = []

    def flush() -> None:
        if uuid:
            found.append(BtrfsFs(uuid, label, total, tuple(present)))

    for line in text.splitlines():
        words = line.split()
        if line.startswith("Label:"):
            flush()
            label = line.split("'")[1] if line.count("'") >= 2 else ""
            uuid = words[-1]
            total, present = 0, []
        elif words[:2] == ["Total", "devices"]:
            total = _int(words[2])
        elif words[:1] == ["devid"] and "path" in words:
            path = words[words.index("path") + 1]
            if path.startswith("/dev/"):
                present.append(path)
    flush()
    return found


# ---- probes -------------------------------------------------------------------------------------


def observe_mount(mount_point: str) -> Mounted | None:
    mount = mounts.find_mount(mount_point)
    if mount is None:
        return None
    source_devnum = None
    if mount.source.startswith("/dev/"):
        try:
            st = os.stat(mount.source)
            if stat.S_ISBLK(st.st_mode):
                source_devnum = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        except OSError:
            pass
    root_mode = trash_ok = None
    try:
        root_mode = stat.S_IMODE(os.lstat(mount_point).st_mode)
        trash = os.lstat(os.path.join(mount_point, TRASH_NAME))
        trash_ok = stat.S_ISDIR(trash.st_mode) and trash.st_uid == 0 and not trash.st_mode & 0o077
    except OSError:
        trash_ok = False
    try:
        marker = os.lstat(os.path.join(mount_point, MARKER_NAME))
        marked = stat.S_ISREG(marker.st_mode) and marker.st_uid == 0 and not marker.st_mode & 0o077 and marker.st_size > 0
    except OSError:
        marked = False
    return Mounted(mount.source, mount.fstype, mount.major_minor, source_devnum, root_mode, bool(trash_ok), marked)


def observe_lvm(volume: VolumeConfig) -> tuple[Vg | None, Lv | None]:
    timeout = volume.command_timeout
    vgs = lvm.report("vgs", "vg_name,pv_count,vg_missing_pv_count,vg_tags", timeout=timeout)
    vg = vg_from(vgs, volume.vg_name, lvm.report("pvs", "pv_name,vg_name", timeout=timeout) or []) if vgs else None
    if vg is None:
        return None, None
    return vg, lv_from(lvm.report("lvs", "vg_name,lv_name,lv_attr,stripes", timeout=timeout) or [], volume.vg_name, volume.lv_name)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read().strip()
    except OSError:
        return ""


def observe_md(volume: VolumeConfig) -> tuple[MdArray, ...]:
    arrays = []
    links = {}
    for link in glob.glob("/dev/md/*"):
        links[os.path.realpath(link)] = os.path.basename(link)
    for sys_dir in sorted(glob.glob("/sys/block/md*")):
        name = os.path.basename(sys_dir)
        devnode = f"/dev/{name}"
        members = tuple(f"/dev/{slave}" for slave in sorted(os.listdir(os.path.join(sys_dir, "slaves"))))
        detail = run.run(["mdadm", "--detail", "--export", devnode], timeout=volume.command_timeout, check=False, quiet=True)
        values = parse_blkid_export(detail.stdout)
        md_name = values.get("MD_NAME", "").rsplit(":", 1)[-1] or links.get(devnode, "")
        arrays.append(MdArray(
            devnode=devnode,
            name=md_name,
            uuid=values.get("MD_UUID", ""),
            level=values.get("MD_LEVEL", "") or _read(f"{sys_dir}/md/level"),
            raid_disks=_int(values.get("MD_DEVICES") or _read(f"{sys_dir}/md/raid_disks")),
            array_state=_read(f"{sys_dir}/md/array_state"),
            members=members,
        ))
    return tuple(arrays)


def observe_btrfs(volume: VolumeConfig, uuids: set[str]) -> tuple[BtrfsFs, ...]:
    found = []
    for uuid in sorted(uuids):
        result = run.run(["btrfs", "filesystem", "show", "--raw", uuid], timeout=volume.command_timeout, check=False, quiet=True)
        found.extend(fs for fs in parse_btrfs_show(result.stdout) if fs.uuid == uuid)
    return tuple(found)


def observe(volume: VolumeConfig, discovery: Discovery, recorded: VolumeRecord | None, backend: str) -> Observed:
    """Everything plan() needs to know about the current state, for the given backend."""
    timer = log.Timer()
    mount = observe_mount(volume.mount_point)
    # Our VG / md array can only be on disks that carry our PV / md member signature: without one,
    # LVM and mdadm are not asked at all (each LVM command scans every disk).
    signature_types = {c.signature.type for c in discovery.candidates if c.signature is not None and c.ours}
    vg = lv = None
    if "LVM2_member" in signature_types:
        vg, lv = observe_lvm(volume)
    md_arrays: tuple[MdArray, ...] = ()
    if "linux_raid_member" in signature_types and glob.glob("/sys/block/md*"):
        md_arrays = observe_md(volume)
    btrfs_uuids = {c.signature.uuid for c in discovery.candidates if c.signature is not None and c.ours and c.signature.type == "btrfs"}
    btrfs = observe_btrfs(volume, btrfs_uuids) if btrfs_uuids else ()
    # The filesystem of each existing volume device (an active LV, a running md array).
    devices = []
    if lv is not None and lv.active:
        devices.append(lv.path)
    devices.extend(array.devnode for array in md_arrays if array.running and array.name == volume.md_name)
    signatures, devnums = [], []
    for path in devices:
        devnum = devnum_of_path(path)
        if devnum is None:
            continue
        devnums.append((path, devnum))
        signatures.append((path, probe_signature(path, volume.command_timeout)))
    new_uuid = os.urandom(16).hex()
    new_uuid = f"{new_uuid[:8]}-{new_uuid[8:12]}-4{new_uuid[13:16]}-{'89ab'[int(new_uuid[16], 16) % 4]}{new_uuid[17:20]}-{new_uuid[20:]}"
    observed = Observed(mount, recorded, vg, lv, md_arrays, btrfs, tuple(signatures), tuple(devnums), new_uuid)
    log.info(f"setup: observed mount={'yes' if mount else 'no'} vg={'yes' if vg else 'no'} lv={lv.attr if lv else 'no'} "
             f"md={len(md_arrays)} btrfs={len(btrfs)}", ms=timer.ms())
    return observed
