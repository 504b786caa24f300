"""Which local disks the scratch volume may use: discovery per cloud or explicit list, and safety.

Discovery enumerates block disks with pyudev. udev's database is optional: model and serial come
from udev properties when udevd has run (as in the VM tests and on real nodes), else from sysfs
attributes of the disk's ancestors (the NVMe controller or subsystem for a namespace, the SCSI
device for sdX). Selectors (`[volume] devices`):
- aws: model exactly "Amazon EC2 NVMe Instance Storage" (EBS, "Amazon Elastic Block Store", never);
- gcp: local SSD, model exactly "nvme_card" (NVMe; NVMe persistent disks are "nvme_card-pd", never)
  or "EphemeralDisk" (SCSI), or a /dev/disk/by-id/google-local-nvme-ssd-* / google-local-ssd-* link
  (made by Google's guest udev rules);
- azure: model "Microsoft NVMe Direct Disk" or "Microsoft NVMe Direct Disk v2";
- auto: the first of aws, gcp, azure that matches any disk;
- explicit paths or globs under /dev/ (on-prem nodes).

Safety, for every matched disk, by `assess()` (a pure function of facts gathered by `probe()`):
never a disk that holds root or swap or is mounted in our namespace outside our mount point; never
one that is not ours and is mounted in any other mount namespace (/proc/*/mountinfo, once per
namespace), is held by a device-mapper/md device (its or its partitions' holders), belongs to a
mounted btrfs, or cannot be opened exclusively (EBUSY); and, unless `[volume] wipe = yes`, never one
with partitions or a filesystem/RAID/LVM signature that is not ours. (Ours in use is our volume at
work: mounted, held by our LV or array, or a user's copy of our mount in their own namespace.)

"Ours" needs proof, never a label alone: the state file records the disk (by serial; by path for
serial-less disks) and what it carries matches the record (the filesystem UUID, the VG or md name),
or the volume carries a mark setup put on it: the LVM tag `slurm-scratch` on its VG, the md array
name `md_name`, the root-only file `.slurm-scratch-volume` holding the filesystem's UUID in the
filesystem's root (read through a private read-only mount); or it is the seed's layout (a VG
`vg_name` holding exactly one LV, `lv_name`, as ParallelCluster makes it), which setup adopts.
"""

from __future__ import annotations

import glob
import os
import stat

from slurm_scratch import log, run
from slurm_scratch.config import VolumeConfig
from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import MARKER_NAME
from slurm_scratch.record import Factory, Record
from slurm_scratch.volume import lvm
from slurm_scratch.volume.state import Member, VolumeRecord

AWS_MODELS = ("Amazon EC2 NVMe Instance Storage",)
AWS_NEVER = ("Amazon Elastic Block Store",)
GCP_MODELS = ("nvme_card", "EphemeralDisk")  # NVMe local SSD; SCSI local SSD
GCP_LINK_PREFIXES = ("google-local-nvme-ssd-", "google-local-ssd-")
AZURE_MODELS = ("Microsoft NVMe Direct Disk", "Microsoft NVMe Direct Disk v2")
CLOUDS = ("aws", "gcp", "azure")
GLOB_CHARS = frozenset("*?[")
TAG = "slurm-scratch"  # the LVM tag setup puts on its VG and LV


class Disk(Record):
    """One whole block disk as the kernel (and udev, when present) describes it."""

    path: str  # /dev/<name>
    name: str  # kernel name, e.g. nvme1n1
    devnum: str  # "major:minor"
    model: str = ""
    serial: str = ""
    size_bytes: int = 0
    by_id: tuple[str, ...] = ()  # /dev/disk/by-id links (empty without udev)
    partitions: tuple[str, ...] = ()  # kernel names of its partitions
    partition_devnums: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()  # kernel names of devices stacked on it (dm-0, md127)
    read_only: bool = False

    def describe(self) -> str:
        parts = [self.path]
        if self.model:
            parts.append(f"model {self.model!r}")
        if self.serial:
            parts.append(f"serial {self.serial}")
        return ", ".join(parts)


class Signature(Record):
    """What `blkid -p` found on a device (plus the VG name for an LVM PV)."""

    type: str = ""  # ext4, xfs, btrfs, LVM2_member, linux_raid_member, ...
    usage: str = ""  # filesystem, raid, crypto, other
    label: str = ""
    uuid: str = ""
    uuid_sub: str = ""
    pttype: str = ""  # a partition table (gpt, dos)
    ambivalent: bool = False  # more than one signature
    vg_name: str | None = None  # LVM2_member: its VG ("" = orphan PV), when known
    vg_tags: tuple[str, ...] = ()  # LVM2_member: its VG's tags
    vg_lvs: tuple[str, ...] = ()  # LVM2_member: the LVs of its VG
    md_devices: int = 0  # linux_raid_member: raid disks of its array, when known
    marker: bool = False  # a filesystem whose root holds our marker with its UUID (see `read_marker`)

    @property
    def md_name(self) -> str:
        # mdadm stores "homehost:name" in the superblock; blkid shows it as the label.
        return self.label.rsplit(":", 1)[-1]

    def describe(self) -> str:
        if self.ambivalent:
            return "more than one signature (blkid -p is ambivalent)"
        if self.pttype and not self.type:
            return f"a {self.pttype} partition table"
        what = self.type
        if self.type == "LVM2_member":
            what = f"an LVM physical volume of VG {self.vg_name!r}" if self.vg_name else "an LVM physical volume (no VG)"
            if self.vg_name and self.vg_lvs:
                what += f" (LV {', '.join(self.vg_lvs)})"
        elif self.type == "linux_raid_member":
            what = f"an md RAID member of array {self.label!r}"
        elif self.type:
            article = "an" if self.type[0].lower() in "aeiox" else "a"  # an ext4, an xfs, a btrfs
            what = f"{article} {self.type} " + ("filesystem" if self.usage == "filesystem" else "signature")
            what += f" labelled {self.label!r}" if self.label else ""
        return what


class Facts(Record):
    """What the rest of the machine says about block devices (see `probe_facts`)."""

    root_devnums: frozenset[str] = frozenset()
    swap_devnums: frozenset[str] = frozenset()
    mounts: dict = Factory(dict)  # devnum -> mount point (first seen)
    mounted_btrfs_uuids: frozenset[str] = frozenset()
    elsewhere: dict = Factory(dict)  # devnum -> (pid, mount point) in another mount namespace
    busy: frozenset[str] = frozenset()  # devnums whose exclusive open failed with EBUSY


class Candidate(Record):
    """A selected disk that passed the safety rules."""

    disk: Disk
    signature: Signature | None  # None: blank
    ours: bool  # carries a signature of our volume (or is recorded as a member)
    wipe: bool  # carries someone else's signature or partitions and [volume] wipe = yes


class Skipped(Record):
    disk: Disk
    reason: str


class Discovery(Record):
    selector: str  # aws, gcp, azure, explicit, or "auto->aws" etc.
    candidates: tuple[Candidate, ...]
    skipped: tuple[Skipped, ...]
    not_selected: tuple[Skipped, ...] = ()  # other real disks a cloud selector left out, and why


VIRTUAL_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd")


def not_selected(selector: str, all_disks: list[Disk], chosen: list[Disk]) -> list[Skipped]:
    """Why each other disk was left out by a cloud selector (for `status`: EBS, the root disk...)."""
    cloud = selector.split("->")[-1]
    left = []
    for disk in all_disks:
        if disk in chosen or disk.name.startswith(VIRTUAL_PREFIXES) or disk.size_bytes <= 0:
            continue
        if disk.model in AWS_NEVER:
            why = "is an EBS volume (never used)"
        elif disk.model.startswith("nvme_card-"):
            why = "is a GCP persistent disk (never used)"
        else:
            wanted = {"aws": "AWS instance store", "gcp": "GCP local SSD", "azure": "Azure local NVMe"}.get(cloud, "local cloud storage")
            why = f"is not {wanted} (model {disk.model!r})" if disk.model else f"is not {wanted} (no model)"
        left.append(Skipped(disk, why))
    return left


# ---- selection (pure) ---------------------------------------------------------------------------


def matches_cloud(cloud: str, disk: Disk) -> bool:
    if cloud == "aws":
        return disk.model in AWS_MODELS and disk.model not in AWS_NEVER
    if cloud == "gcp":
        if disk.model.startswith("nvme_card-"):  # nvme_card-pd: a persistent disk
            return False
        links = [os.path.basename(link) for link in disk.by_id]
        return disk.model in GCP_MODELS or any(link.startswith(GCP_LINK_PREFIXES) and "-part" not in link for link in links)
    if cloud == "azure":
        return disk.model in AZURE_MODELS
    raise ValueError(cloud)


def select_cloud(selector: str, disks: list[Disk]) -> tuple[str, list[Disk]]:
    """The disks matching a cloud selector; `auto` takes the first cloud with any match."""
    clouds = CLOUDS if selector == "auto" else (selector,)
    for cloud in clouds:
        chosen = [disk for disk in disks if matches_cloud(cloud, disk)]
        if chosen:
            return (f"auto->{cloud}" if selector == "auto" else cloud), chosen
    return selector, []


def our_mark(volume: VolumeConfig, signature: Signature | None) -> str:
    """Which mark of ours the disk's content carries ("" for none): a label is never one."""
    if signature is None or signature.ambivalent:
        return ""
    if signature.type == "LVM2_member" and signature.vg_name and signature.vg_name == volume.vg_name:
        if TAG in signature.vg_tags:
            return f"VG {volume.vg_name} tagged {TAG}"
        if signature.vg_lvs == (volume.lv_name,):
            return f"the seed layout {volume.vg_name}/{volume.lv_name}"
    if signature.type == "linux_raid_member" and signature.md_name == volume.md_name:
        return f"md array named {volume.md_name}"
    if signature.usage == "filesystem" and signature.marker:
        return f"{MARKER_NAME} in its root"
    return ""


def is_ours(volume: VolumeConfig, disk: Disk, signature: Signature | None, recorded: VolumeRecord | None) -> bool:
    """Whether the disk belongs to our volume: by the state file or by a mark we put on the volume."""
    if signature is not None and signature.ambivalent:
        return False
    return bool(our_mark(volume, signature)) or recorded_member(disk, signature, recorded) is not None


def recorded_member(disk: Disk, signature: Signature | None, recorded: VolumeRecord | None) -> Member | None:
    """The state file's member entry for this disk (by serial; by path only for serial-less disks
    such as loop devices), when what the disk carries is what the record says: nothing, a PV
    (orphan, or of the recorded VG), a member of the recorded md array, or the recorded filesystem
    (its UUID). A recorded disk that now carries anything else is not ours."""
    if not recorded:
        return None
    for member in recorded.members:
        if is_member_disk(member, disk) and _matches_record(signature, recorded):
            return member
    return None


def is_member_disk(member: Member, disk: Disk) -> bool:
    """Whether a recorded member entry names this disk: by serial; by path only for serial-less
    disks such as loop devices. The one membership rule, for discovery and for the plan."""
    if member.serial:
        return member.serial == disk.serial
    return not disk.serial and member.path == disk.path


def _matches_record(signature: Signature | None, recorded: VolumeRecord) -> bool:
    if signature is None:
        return True
    if signature.ambivalent:
        return False
    if signature.type == "LVM2_member":
        return signature.vg_name == "" or bool(signature.vg_name) and signature.vg_name == recorded.vg_name
    if signature.type == "linux_raid_member":
        return bool(recorded.md_name) and signature.md_name == recorded.md_name
    return bool(signature.uuid) and signature.uuid == recorded.fs_uuid


def never_reason(disk: Disk, facts: Facts) -> str:
    """Why the disk can never be used, whatever it carries ("" when none of these hold)."""
    devnums = (disk.devnum, *disk.partition_devnums)
    if any(devnum in facts.root_devnums for devnum in devnums):
        return "holds the root filesystem"
    if any(devnum in facts.swap_devnums for devnum in devnums):
        return "holds active swap"
    if disk.read_only:
        return "is read-only"
    if disk.size_bytes <= 0:
        return "has no media (size 0)"
    return ""


def assess(volume: VolumeConfig, disk: Disk, signature: Signature | None, facts: Facts, recorded: VolumeRecord | None) -> Candidate | Skipped:
    """Apply the safety rules to one selected disk."""
    reason = never_reason(disk, facts)
    if reason:
        return Skipped(disk, reason)
    devnums = (disk.devnum, *disk.partition_devnums)
    ours = is_ours(volume, disk, signature, recorded)
    for devnum in devnums:
        where = facts.mounts.get(devnum)
        if where is not None and not (ours and where == volume.mount_point):
            return Skipped(disk, f"is mounted at {where}")
    # Our own volume shows up in other namespaces too: copies of ours (every user can make one
    # with `unshare -Urm`, bind it anywhere, and keep it after we unmount) must not make it foreign.
    for devnum in devnums:
        if devnum in facts.elsewhere and not ours:
            pid, where = facts.elsewhere[devnum]
            return Skipped(disk, f"is mounted in another mount namespace (pid {pid}, at {where})")
    if signature is not None and signature.type == "btrfs" and signature.uuid in facts.mounted_btrfs_uuids and not ours:
        return Skipped(disk, f"is a member of the mounted btrfs filesystem {signature.uuid}")
    if disk.holders and not ours:
        return Skipped(disk, f"is in use by {', '.join(disk.holders)}")
    # Ours and busy is our volume in use (mounted, held by our LV/array), or udev assembling it:
    # skipping it would make the volume look degraded. The tools' own exclusive opens guard it.
    if disk.devnum in facts.busy and not ours:
        return Skipped(disk, "cannot be opened exclusively (EBUSY): another program or the kernel is using it")
    foreign = []
    if disk.partitions:
        foreign.append(f"has partitions ({', '.join(disk.partitions)})")
    if signature is not None and not ours:
        foreign.append(f"carries {signature.describe()}")
    if foreign:
        if not volume.wipe:
            why = ""
            if signature is not None and signature.usage == "filesystem" and signature.label and signature.label == volume.label:
                why = f": a label is no proof, and the state file does not record it nor is {MARKER_NAME} in its root"
            elif signature is not None and signature.type == "LVM2_member" and signature.vg_name == volume.vg_name:
                why = f": its VG is neither tagged {TAG} nor the seed layout {volume.vg_name}/{volume.lv_name} alone"
            return Skipped(disk, " and ".join(foreign) + f" that is not ours{why} ([volume] wipe = yes would wipe it)")
        return Candidate(disk, signature, ours=False, wipe=True)
    return Candidate(disk, signature, ours=ours and signature is not None, wipe=False)


# ---- reading the machine ------------------------------------------------------------------------


def _decode(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()


def _ancestor_attribute(device, name: str) -> str:
    node = device.parent
    while node is not None:
        value = _decode(node.attributes.get(name))
        if value:
            return value
        node = node.parent
    return ""


def _udev_model(properties) -> str:
    encoded = properties.get("ID_MODEL_ENC")
    if encoded:
        # udev escapes bytes as \xNN (spaces as \x20)
        return bytes(encoded, "utf-8").decode("unicode_escape", "replace").strip()
    return (properties.get("ID_MODEL") or "").replace("_", " ").strip()


def disk_from_udev(device) -> Disk:
    """A Disk from a pyudev Device of DEVTYPE disk (udev data when present, else sysfs)."""
    properties = device.properties
    name = device.sys_name
    model = _ancestor_attribute(device, "model") or _udev_model(properties)
    serial = _decode(properties.get("ID_SERIAL_SHORT")) or _ancestor_attribute(device, "serial")
    partitions, partition_devnums, holders = [], [], []
    for child in device.children:
        if child.device_type == "partition" and child.subsystem == "block":
            partitions.append(child.sys_name)
            partition_devnums.append(f"{os.major(child.device_number)}:{os.minor(child.device_number)}")
            holders += [f"{held} (on {child.sys_name})" for held in _holders(child.sys_path)]
    holders = _holders(device.sys_path) + holders
    try:
        size = int(_decode(device.attributes.get("size")) or 0) * 512
    except ValueError:
        size = 0
    return Disk(
        path=device.device_node or f"/dev/{name}",
        name=name,
        devnum=f"{os.major(device.device_number)}:{os.minor(device.device_number)}",
        model=model,
        serial=serial,
        size_bytes=size,
        by_id=tuple(sorted(link for link in device.device_links if link.startswith("/dev/disk/by-id/"))),
        partitions=tuple(sorted(partitions)),
        partition_devnums=tuple(partition_devnums),
        holders=tuple(holders),
        read_only=_decode(device.attributes.get("ro")) == "1",
    )


def _holders(sys_path: str) -> list[str]:
    """Devices stacked on this one (dm-0, md127), from sysfs."""
    try:
        return sorted(os.listdir(os.path.join(sys_path, "holders")))
    except OSError:
        return []


def _context():
    try:
        import pyudev
    except ImportError:
        raise ScratchError("python module pyudev is missing (Debian: python3-pyudev)") from None
    return pyudev, pyudev.Context()


def list_disks() -> list[Disk]:
    """Every whole disk with a device node (no partitions, no nvme hidden path devices)."""
    pyudev, context = _context()
    disks = []
    for device in context.list_devices(subsystem="block", DEVTYPE="disk"):
        if not device.device_node and not os.path.exists(f"/dev/{device.sys_name}"):
            continue  # nvmeXcYnZ multipath paths have no node
        disks.append(disk_from_udev(device))
    return sorted(disks, key=lambda disk: _natural_key(disk.name))


def _natural_key(name: str) -> list:
    key, digits = [], ""
    for char in name + "\0":
        if char.isdigit():
            digits += char
            continue
        if digits:
            key.append((1, int(digits)))
            digits = ""
        key.append((0, char))
    return key


def resolve_explicit(patterns: tuple[str, ...]) -> tuple[list[Disk], list[Skipped]]:
    """Disks named by explicit paths/globs; names that are not whole block disks are skipped."""
    pyudev, context = _context()
    disks: list[Disk] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for pattern in patterns:
        paths = sorted(glob.glob(pattern), key=_natural_key) if GLOB_CHARS & set(pattern) else [pattern]
        if not paths:
            log.warning(f"setup: [volume] devices: {pattern} matches nothing")
        for path in paths:
            try:
                st = os.stat(path)
            except OSError as exc:
                skipped.append(Skipped(Disk(path=path, name=os.path.basename(path), devnum=""), f"cannot be used: {exc.strerror}"))
                continue
            if not stat.S_ISBLK(st.st_mode):
                skipped.append(Skipped(Disk(path=path, name=os.path.basename(path), devnum=""), "is not a block device"))
                continue
            device = pyudev.Devices.from_device_number(context, "block", st.st_rdev)
            if device.device_type != "disk":
                skipped.append(Skipped(Disk(path=path, name=device.sys_name, devnum=f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"),
                                       f"is a {device.device_type or 'non-disk device'}, not a whole disk"))
                continue
            disk = disk_from_udev(device)
            if disk.devnum not in seen:
                seen.add(disk.devnum)
                disks.append(disk)
    return disks, skipped


def devnum_of_path(path: str) -> str | None:
    """The major:minor of the block device node at `path` (followed), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISBLK(st.st_mode) else None


def probe_facts() -> Facts:
    """Root, swap and mounted block devices, and mounted btrfs filesystems."""
    from slurm_scratch import mounts

    mounted: dict[str, str] = {}
    root: set[str] = set()
    for mount in mounts.list_mounts():
        devnums = {mount.major_minor}
        if mount.source.startswith("/dev/"):
            devnum = devnum_of_path(mount.source)
            if devnum:
                devnums.add(devnum)
        for devnum in devnums:
            if devnum.startswith("0:"):
                continue  # anonymous (tmpfs, proc, btrfs subvolumes)
            mounted.setdefault(devnum, mount.mount_point)
            if mount.mount_point == "/":
                root.add(devnum)
    swaps: set[str] = set()
    try:
        with open("/proc/swaps", encoding="utf-8") as stream:
            for line in stream.read().splitlines()[1:]:
                devnum = devnum_of_path(line.split()[0].replace("\\040", " ")) if line.split() else None
                if devnum:
                    swaps.add(devnum)
    except OSError:
        pass
    try:
        btrfs = frozenset(name for name in os.listdir("/sys/fs/btrfs") if len(name) == 36)
    except OSError:
        btrfs = frozenset()
    return Facts(root_devnums=frozenset(root), swap_devnums=frozenset(swaps), mounts=mounted, mounted_btrfs_uuids=btrfs,
                 elsewhere=other_namespace_mounts())


def other_namespace_mounts(budget: float = 10.0) -> dict[str, tuple[int, str]]:
    """Block devices mounted in any mount namespace but ours: {major:minor: (a pid in it, mount point)}.

    /proc is read once: one mountinfo per namespace (by the inode of /proc/PID/ns/mnt). Users choose
    how many processes and namespaces there are, so the scan stops after `budget` seconds; what it
    misses the exclusive open still catches (a mounted device cannot be opened with O_EXCL)."""
    import time

    from slurm_scratch import mounts

    found: dict[str, tuple[int, str]] = {}
    try:
        seen = {os.stat("/proc/self/ns/mnt").st_ino}
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return found
    deadline = time.monotonic() + budget
    for pid in pids:
        if time.monotonic() > deadline:
            log.warning(f"setup: reading the mounts of every mount namespace took over {budget:g} s; stopped at pid {pid}")
            break
        try:
            namespace = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if namespace in seen:
                continue
            with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as stream:
                text = stream.read()
        except (OSError, ValueError):
            continue  # gone, or a kernel thread
        seen.add(namespace)
        for mount in mounts.parse_mountinfo(text):
            if not mount.major_minor.startswith("0:"):
                found.setdefault(mount.major_minor, (pid, mount.mount_point))
    return found


def exclusively_busy(disks: list[Disk]) -> frozenset[str]:
    """Devnums of the disks an exclusive open refuses (EBUSY): mounted anywhere, held by dm/md, or
    opened with O_EXCL by another program (mkfs, another setup's tools, a partitioner)."""
    import errno

    busy = set()
    for disk in disks:
        try:
            fd = os.open(disk.path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                busy.add(disk.devnum)
            continue
        os.close(fd)
    return frozenset(busy)


MARKER_MOUNT_OPTIONS = {"ext4": "noload", "xfs": "norecovery", "btrfs": "rescue=nologreplay"}
# In a private mount namespace that dies with the shell: a killed setup leaves no mount behind.
# Journals are not replayed (noload/norecovery/nologreplay): a filesystem that is not ours is not
# written to. The marker must be root's, not a symlink, not accessible to others, hold the UUID.
_MARKER_SCRIPT = """
t=$1 o=$2 d=$3 m=$4; shift 4
if [ $# -gt 0 ]; then btrfs device scan "$@" >/dev/null || exit 4; fi
mount -n -t "$t" -o "ro,nosuid,nodev,noexec,$o" "$d" "$m" || exit 5
f="$m/%s"
if [ -L "$f" ] || [ ! -f "$f" ]; then exit 3; fi
stat -c '%%u %%a %%s' "$f"
head -c 200 "$f"
""" % MARKER_NAME


def marker_matches(stat_line: str, content: str, uuid: str) -> bool:
    """The marker's `uid mode size` and content: root's, no access for others, the filesystem's UUID."""
    words = stat_line.split()
    if len(words) != 3 or not uuid:
        return False
    try:
        uid, mode = int(words[0]), int(words[1], 8)
    except ValueError:
        return False
    return uid == 0 and not mode & 0o077 and content.strip() == uuid


def read_marker(path: str, signature: Signature, timeout: float, scan: tuple[str, ...] = ()) -> bool:
    """Whether the filesystem on `path` carries our marker (a private read-only mount, then gone)."""
    options = MARKER_MOUNT_OPTIONS.get(signature.type)
    if options is None or not signature.uuid:
        return False
    where = next((d for d in ("/mnt", "/tmp", "/media") if os.path.isdir(d) and not os.path.islink(d)), "/tmp")
    argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _MARKER_SCRIPT, "sh",
            signature.type, options, path, where, *scan]
    try:
        result = run.run(argv, timeout=timeout, check=False, quiet=True)
    except ScratchError as exc:
        log.warning(f"setup: {path}: cannot look for {MARKER_NAME}: {exc}")
        return False
    if result.returncode != 0:
        return False
    stat_line, _, content = result.stdout.partition("\n")
    return marker_matches(stat_line, content, signature.uuid)


def read_mounted_marker(mount_point: str, uuid: str) -> bool:
    """The marker in the root of the filesystem mounted at `mount_point` (never a symlink)."""
    try:
        root_fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fd = os.open(MARKER_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=root_fd)
    except OSError:
        return False
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        content = os.read(fd, 200).decode("utf-8", "replace")
    except OSError:
        return False
    finally:
        os.close(fd)
    return marker_matches(f"{st.st_uid} {stat.S_IMODE(st.st_mode):o} {st.st_size}", content, uuid)


def parse_blkid_export(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def signature_from_blkid(returncode: int, stdout: str) -> Signature | None:
    """`blkid -p -o export` output as a Signature; None when the device is blank (exit 2)."""
    if returncode == 2:
        return None
    if returncode == 8:
        return Signature(ambivalent=True)
    values = parse_blkid_export(stdout)
    return Signature(
        type=values.get("TYPE", ""),
        usage=values.get("USAGE", ""),
        label=values.get("LABEL", ""),
        uuid=values.get("UUID", ""),
        uuid_sub=values.get("UUID_SUB", ""),
        pttype=values.get("PTTYPE", ""),
    )


def probe_signature(path: str, timeout: float) -> Signature | None:
    result = run.run(["blkid", "-p", "-o", "export", path], timeout=timeout, check=False, quiet=True)
    # Exit 2 means "nothing found", but blkid also exits 2 when it cannot open the device: that is
    # not a blank disk.
    if result.returncode not in (0, 2, 8) or result.stderr.strip():
        raise ScratchError(f"{path}: blkid -p failed (exit {result.returncode}): {result.stderr.strip() or 'no output'}")
    return signature_from_blkid(result.returncode, result.stdout)


def _probe_all(paths: list[str], timeout: float) -> dict[str, Signature | ScratchError | None]:
    """blkid -p on every disk at once (8 disks: one probe's time, not eight)."""
    import threading

    results: dict[str, Signature | ScratchError | None] = {}

    def probe(path: str) -> None:
        try:
            results[path] = probe_signature(path, timeout)
        except ScratchError as exc:
            results[path] = exc
        except Exception as exc:  # noqa: BLE001 - never let a failed probe pass for a blank disk
            results[path] = ScratchError(f"{path}: {exc}")

    threads = [threading.Thread(target=probe, args=(path,), daemon=True) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def pv_facts(timeout: float, vg_name: str) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """{PV device (realpath): (VG name ("" for an orphan PV), the VG's tags, the VG's LVs)} from
    `pvs` (and `lvs`, only when a PV is in a VG named `vg_name`)."""
    names: dict[str, tuple[str, tuple[str, ...]]] = {}
    for pv in lvm.report("pvs", "pv_name,vg_name,vg_tags", timeout=timeout) or []:
        if pv.get("pv_name", "").startswith("/dev/"):
            names[os.path.realpath(pv["pv_name"])] = (pv.get("vg_name", ""), lvm.tags(pv.get("vg_tags", "")))
    lvs: dict[str, list[str]] = {}
    if any(vg == vg_name for vg, _ in names.values()):
        for lv in lvm.report("lvs", "vg_name,lv_name", timeout=timeout) or []:
            lvs.setdefault(lv.get("vg_name", ""), []).append(lv.get("lv_name", ""))
    return {path: (vg, tags, tuple(sorted(lvs.get(vg, ())))) for path, (vg, tags) in names.items()}


def md_examine_devices(path: str, timeout: float) -> int:
    """Raid disks of the md array whose member `path` is (0 when unknown)."""
    result = run.run(["mdadm", "--examine", "--export", path], timeout=timeout, check=False, quiet=True)
    values = parse_blkid_export(result.stdout)
    try:
        return int(values.get("MD_DEVICES", "0"))
    except ValueError:
        return 0


def discover(volume: VolumeConfig, recorded: VolumeRecord | None) -> Discovery:
    """Select disks per `[volume] devices` and sort them into candidates and skipped (with why)."""
    timer = log.Timer()
    selector = volume.devices[0] if len(volume.devices) == 1 and volume.devices[0] in ("auto", *CLOUDS) else "explicit"
    ignored: list[Skipped] = []
    if selector == "explicit":
        selected, skipped = resolve_explicit(volume.devices)
    else:
        all_disks = list_disks()
        selector, selected = select_cloud(selector, all_disks)
        ignored = not_selected(selector, all_disks, selected)
        skipped = []
    facts = probe_facts()
    facts = _with(facts, busy=exclusively_busy([disk for disk in selected if not never_reason(disk, facts)]))
    signatures = {}
    probed = []
    to_probe = [disk.path for disk in selected if not never_reason(disk, facts)]
    results = _probe_all(to_probe, volume.command_timeout)
    for disk in selected:
        result = results.get(disk.path, ScratchError("not probed") if disk.path in to_probe else None)
        if isinstance(result, ScratchError):
            skipped.append(Skipped(disk, f"cannot be probed for signatures ({result})"))
            continue
        signatures[disk.path] = result  # None: blank, or never usable (assess() says why)
        probed.append(disk)
    selected = probed
    if any(sig is not None and sig.type == "LVM2_member" for sig in signatures.values()):
        pvs = pv_facts(volume.command_timeout, volume.vg_name)
        for path, sig in signatures.items():
            if sig is not None and sig.type == "LVM2_member":
                vg, tags, lvs = pvs.get(os.path.realpath(path), (None, (), ()))
                signatures[path] = _with(sig, vg_name=vg, vg_tags=tags, vg_lvs=lvs)
    for path, sig in signatures.items():
        if sig is not None and sig.type == "linux_raid_member":
            signatures[path] = _with(sig, md_devices=md_examine_devices(path, volume.command_timeout))
    _look_for_markers(volume, selected, signatures, facts, recorded)
    candidates = []
    for disk in selected:
        verdict = assess(volume, disk, signatures[disk.path], facts, recorded)
        if isinstance(verdict, Skipped):
            skipped.append(verdict)
        else:
            candidates.append(verdict)
    for skip in skipped:
        log.warning(f"skipping {skip.disk.describe()}: {skip.reason}")
    log.info(f"setup: devices = {' '.join(volume.devices)} ({selector}): {len(candidates)} usable, {len(skipped)} skipped", ms=timer.ms())
    return Discovery(selector=selector, candidates=tuple(candidates), skipped=tuple(skipped), not_selected=tuple(ignored))


def _look_for_markers(volume: VolumeConfig, disks: list[Disk], signatures: dict, facts: Facts, recorded: VolumeRecord | None) -> None:
    """Set `marker` on the filesystems labelled like ours that the state file does not vouch for.

    The label only says where to look: a filesystem mounted at our mount point is read there; one
    mounted or held anywhere else is left alone (it is skipped anyway); any other gets a private
    read-only mount (a btrfs once per filesystem, its disks registered first)."""
    checked: dict[str, bool] = {}
    for disk in disks:
        sig = signatures.get(disk.path)
        if (sig is None or sig.ambivalent or sig.usage != "filesystem" or sig.label != volume.label or not sig.uuid
                or never_reason(disk, facts) or recorded_member(disk, sig, recorded) is not None):
            continue
        if facts.mounts.get(disk.devnum) == volume.mount_point:
            marked = read_mounted_marker(volume.mount_point, sig.uuid)
        elif disk.devnum in facts.mounts or disk.devnum in facts.elsewhere or disk.devnum in facts.busy or disk.holders:
            continue
        elif sig.uuid in checked:
            marked = checked[sig.uuid]
        else:
            scan: tuple[str, ...] = ()
            if sig.type == "btrfs":
                scan = tuple(d.path for d in disks if (other := signatures.get(d.path)) is not None and other.uuid == sig.uuid)
            marked = checked[sig.uuid] = read_marker(disk.path, sig, volume.command_timeout, scan)
        if marked:
            signatures[disk.path] = _with(sig, marker=True)


def _with(record, **changes: object):
    return record.replace(**changes)
