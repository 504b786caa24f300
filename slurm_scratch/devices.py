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
never a disk that holds root or swap, is mounted (outside our own mount point), is held by a
device-mapper/md device that is not ours, or belongs to a mounted btrfs; and, unless
`[volume] wipe = yes`, never one with partitions or a filesystem/RAID/LVM signature that is not
ours. "Ours": recorded as a member in the state file, an LVM PV of `vg_name`, an md member named
`md_name`, or a filesystem labelled `label`.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field

from slurm_scratch import log, run
from slurm_scratch.config import VolumeConfig
from slurm_scratch.errors import ScratchError

AWS_MODELS = ("Amazon EC2 NVMe Instance Storage",)
AWS_NEVER = ("Amazon Elastic Block Store",)
GCP_MODELS = ("nvme_card", "EphemeralDisk")  # NVMe local SSD; SCSI local SSD
GCP_LINK_PREFIXES = ("google-local-nvme-ssd-", "google-local-ssd-")
AZURE_MODELS = ("Microsoft NVMe Direct Disk", "Microsoft NVMe Direct Disk v2")
CLOUDS = ("aws", "gcp", "azure")
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Disk:
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


@dataclass(frozen=True)
class Signature:
    """What `blkid -p` found on a device (plus the VG name for an LVM PV)."""

    type: str = ""  # ext4, xfs, btrfs, LVM2_member, linux_raid_member, ...
    usage: str = ""  # filesystem, raid, crypto, other
    label: str = ""
    uuid: str = ""
    uuid_sub: str = ""
    pttype: str = ""  # a partition table (gpt, dos)
    ambivalent: bool = False  # more than one signature
    vg_name: str | None = None  # LVM2_member: its VG ("" = orphan PV), when known
    md_devices: int = 0  # linux_raid_member: raid disks of its array, when known

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
        elif self.type == "linux_raid_member":
            what = f"an md RAID member of array {self.label!r}"
        elif self.type:
            article = "an" if self.type[0].lower() in "aeiox" else "a"  # an ext4, an xfs, a btrfs
            what = f"{article} {self.type} " + ("filesystem" if self.usage == "filesystem" else "signature")
            what += f" labelled {self.label!r}" if self.label else ""
        return what


@dataclass(frozen=True)
class Facts:
    """What the rest of the machine says about block devices (see `probe_facts`)."""

    root_devnums: frozenset[str] = frozenset()
    swap_devnums: frozenset[str] = frozenset()
    mounts: dict = field(default_factory=dict)  # devnum -> mount point (first seen)
    mounted_btrfs_uuids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Candidate:
    """A selected disk that passed the safety rules."""

    disk: Disk
    signature: Signature | None  # None: blank
    ours: bool  # carries a signature of our volume (or is recorded as a member)
    wipe: bool  # carries someone else's signature or partitions and [volume] wipe = yes


@dataclass(frozen=True)
class Skipped:
    disk: Disk
    reason: str


@dataclass(frozen=True)
class Discovery:
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


def is_ours(volume: VolumeConfig, disk: Disk, signature: Signature | None, recorded: dict | None) -> bool:
    """Whether the disk belongs to our volume, by the state file or by our names/label."""
    if signature is not None and not signature.ambivalent:
        if signature.type == "LVM2_member" and signature.vg_name == volume.vg_name:
            return True
        if signature.type == "linux_raid_member" and signature.md_name == volume.md_name:
            return True
        if signature.usage == "filesystem" and signature.label and signature.label == volume.label:
            return True
    return recorded_member(disk, signature, recorded) is not None


def recorded_member(disk: Disk, signature: Signature | None, recorded: dict | None) -> dict | None:
    """The state file's member entry for this disk: by serial; by path only for serial-less disks
    (loop devices) whose signature is blank or the recorded filesystem's."""
    if not recorded:
        return None
    for member in recorded.get("members", []):
        if member.get("serial"):
            if disk.serial and member["serial"] == disk.serial:
                return member
        elif not disk.serial and member.get("path") == disk.path:
            if signature is None or signature.type == "LVM2_member" and signature.vg_name == "":
                return member
            if signature.uuid and signature.uuid == recorded.get("fs_uuid"):
                return member
    return None


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


def assess(volume: VolumeConfig, disk: Disk, signature: Signature | None, facts: Facts, recorded: dict | None) -> Candidate | Skipped:
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
    if signature is not None and signature.type == "btrfs" and signature.uuid in facts.mounted_btrfs_uuids and not ours:
        return Skipped(disk, f"is a member of the mounted btrfs filesystem {signature.uuid}")
    if disk.holders and not ours:
        return Skipped(disk, f"is in use by {', '.join(disk.holders)}")
    foreign = []
    if disk.partitions:
        foreign.append(f"has partitions ({', '.join(disk.partitions)})")
    if signature is not None and not ours:
        foreign.append(f"carries {signature.describe()}")
    if foreign:
        if not volume.wipe:
            return Skipped(disk, " and ".join(foreign) + " that is not ours ([volume] wipe = yes would wipe it)")
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


def _devnum_of_path(path: str) -> str | None:
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
            devnum = _devnum_of_path(mount.source)
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
                devnum = _devnum_of_path(line.split()[0].replace("\\040", " ")) if line.split() else None
                if devnum:
                    swaps.add(devnum)
    except OSError:
        pass
    try:
        btrfs = frozenset(name for name in os.listdir("/sys/fs/btrfs") if len(name) == 36)
    except OSError:
        btrfs = frozenset()
    return Facts(root_devnums=frozenset(root), swap_devnums=frozenset(swaps), mounts=mounted, mounted_btrfs_uuids=btrfs)


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


def pv_vg_names(timeout: float) -> dict[str, str]:
    """{PV device (realpath): VG name ("" for an orphan PV)} from `pvs`."""
    import json

    result = run.run(
        ["pvs", "--reportformat", "json", "-o", "pv_name,vg_name", "--config", "log/command_names=0"],
        timeout=timeout, check=False, quiet=True, env={"LVM_SUPPRESS_FD_WARNINGS": "1"},
    )
    if result.returncode != 0:
        log.warning(f"pvs failed (exit {result.returncode}): {result.stderr.strip()}")
        return {}
    names = {}
    for report in json.loads(result.stdout or "{}").get("report", []):
        for pv in report.get("pv", []):
            if pv.get("pv_name", "").startswith("/dev/"):
                names[os.path.realpath(pv["pv_name"])] = pv.get("vg_name", "")
    return names


def md_examine_devices(path: str, timeout: float) -> int:
    """Raid disks of the md array whose member `path` is (0 when unknown)."""
    result = run.run(["mdadm", "--examine", "--export", path], timeout=timeout, check=False, quiet=True)
    values = parse_blkid_export(result.stdout)
    try:
        return int(values.get("MD_DEVICES", "0"))
    except ValueError:
        return 0


def discover(volume: VolumeConfig, recorded: dict | None) -> Discovery:
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
        vg_of = pv_vg_names(volume.command_timeout)
        for path, sig in signatures.items():
            if sig is not None and sig.type == "LVM2_member":
                signatures[path] = _with(sig, vg_name=vg_of.get(os.path.realpath(path)))
    for path, sig in signatures.items():
        if sig is not None and sig.type == "linux_raid_member":
            signatures[path] = _with(sig, md_devices=md_examine_devices(path, volume.command_timeout))
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


def _with(signature: Signature, **changes: object) -> Signature:
    from dataclasses import replace

    return replace(signature, **changes)
