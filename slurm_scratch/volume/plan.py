"""plan(): the steps from what exists to a mounted volume. A pure function, testable without root.

Inputs: the [volume] config, the discovered disks (candidates that passed the safety rules, and the
skipped ones), and the observed state (mount, VG/LV, md arrays, btrfs filesystems, the state file).
Output: a Plan: the backend, the device to mount, the steps (each one line of `setup --dry-run`),
or a failure that says which device is wrong and why. Rules:
- never format anything that carries a signature, except disks being wiped (foreign ones with
  `wipe = yes`, or our own members when `on_degraded = rebuild`) and a filesystem an interrupted
  build of ours made (the state file says "building" and names its UUID, given to mkfs);
- "ours" is decided by devices.assess (the state file or a mark, never a label); setup marks what
  it builds or adopts: LVM tag `slurm-scratch` on VG and LV, md name, `.slurm-scratch-volume`;
- an existing volume is completed (crash), activated and mounted (reboot), never rebuilt;
- a volume with a member missing is a failure naming the missing disk, unless on_degraded = rebuild.
"""

from __future__ import annotations


from slurm_scratch.config import VolumeConfig
from slurm_scratch.layout import MARKER_NAME, TRASH_NAME, VOLUME_RECORD
from slurm_scratch.record import Record
from slurm_scratch.volume.devices import TAG, Candidate, Discovery, Disk, is_member_disk
from slurm_scratch.volume.observe import Observed
from slurm_scratch.volume.state import Member, VolumeRecord

BACKENDS = ("lvm", "mdadm", "single", "btrfs")


class Step(Record):
    kind: str  # run, wipe, wait, mkfs_if_blank, mkdir, mount, trash, chmod, record
    args: tuple
    text: str
    check: bool = True  # run: a non-zero exit fails setup


class Plan(Record):
    backend: str
    state: str  # mounted, build, rebuild, complete, activate, mount, degraded, failed
    device: str = ""  # what gets mounted
    fstype: str = ""  # "" when it is only known once the device is active
    steps: tuple[Step, ...] = ()
    members: tuple[Disk, ...] = ()  # the disks the volume is made of
    failure: str = ""
    fs_uuid: str = ""  # the UUID mkfs gives the filesystem this plan makes (recorded while "building")
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return [step.text for step in self.steps]


def run_step(*argv: object, check: bool = True, text: str | None = None) -> Step:
    words = tuple(str(word) for word in argv)
    return Step("run", words, text or " ".join(words), check)


# ---- helpers ------------------------------------------------------------------------------------


def effective_backend(volume: VolumeConfig, discovery: Discovery, recorded: VolumeRecord | None) -> str:
    """`auto`: what the state file recorded while any of its disks is still here, else what our
    members carry, else single for one disk, else lvm (new blank disks after a stop/start are
    counted afresh)."""
    if volume.backend != "auto":
        return volume.backend
    if recorded and recorded.backend in BACKENDS and any(c.ours for c in discovery.candidates):
        return recorded.backend
    types = {c.signature.type for c in discovery.candidates if c.ours and c.signature is not None}
    if "LVM2_member" in types:
        return "lvm"
    if "linux_raid_member" in types:
        return "mdadm"
    return "single" if len(discovery.candidates) == 1 else "lvm"


def _describe_member(member: Member) -> str:
    parts = [member.path or "?"]
    if member.serial:
        parts.append(f"serial {member.serial}")
    if member.model:
        parts.append(f"model {member.model!r}")
    return ", ".join(parts)


def missing_members(recorded: VolumeRecord | None, discovery: Discovery) -> list[Member]:
    """Recorded members that are gone, when at least one recorded member is still here.

    All gone (stop/start: new blank disks) is not "missing": the volume is simply built anew.
    """
    if not recorded:
        return []
    # A skipped disk is still there (it is named in `status`), unless it has no media (size 0).
    disks = [c.disk for c in discovery.candidates] + [s.disk for s in discovery.skipped if s.disk.size_bytes > 0]
    members = recorded.members
    gone = [m for m in members if not any(is_member_disk(m, d) for d in disks)]
    here = [c for c in discovery.candidates if c.ours and any(is_member_disk(m, c.disk) for m in members)]
    return gone if gone and here else []


def mkfs_argv(volume: VolumeConfig, fstype: str, devices: list[str], force: bool = False, uuid: str = "") -> tuple[str, ...]:
    """`force`: over what an interrupted mkfs of ours left (ext4 -F once: never over a mounted fs).
    `uuid`: the filesystem's UUID, recorded before mkfs runs (how a later run knows the filesystem
    an interrupted build left is ours)."""
    if fstype == "ext4":
        # No discard (instance store arrives trimmed), lazy inode table and journal init, no
        # reserved blocks; and two superblock backups instead of dozens, no blocks reserved for
        # online growth (a scratch volume never grows): on 4 x 1.9 TB that is 3x less mkfs time.
        # -G 4096 packs the metadata of 4096 block groups together (flex_bg): about half the mkfs
        # time again on multi-TB volumes (measured in the VM: 4.0 -> 2.1 s at 7.6 TB).
        features = "sparse_super2,^resize_inode" + (",quota,project" if volume.quotas else "")  # project quotas: [jobs] quota
        return ("mkfs.ext4", "-q", *(("-F",) if force else ()), "-O", features, "-G", "4096",
                "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", "-m", "0", "-L", volume.label,
                *(("-U", uuid) if uuid else ()), *devices)
    if fstype == "xfs":
        return ("mkfs.xfs", "-q", *(("-f",) if force else ()), "-K", "-L", volume.label, *(("-m", f"uuid={uuid}") if uuid else ()), *devices)
    if fstype == "btrfs":
        layout = ("-d", "raid0", "-m", "raid1") if len(devices) > 1 else ("-d", "single")
        return ("mkfs.btrfs", "-q", *(("-f",) if force else ()), "-K", "-L", volume.label, *(("-U", uuid) if uuid else ()), *layout, *devices)
    raise ValueError(fstype)


def interrupted(observed: Observed, backend: str, uuid: str) -> bool:
    """A build of ours stopped before its filesystem was complete: the state file still says
    "building" (it says "formatted" once mkfs has finished, "ready" once mounted) and names the UUID
    of the filesystem it was making, and that is the one found (`uuid`). That filesystem was never
    mounted, so making it again loses nothing; any other filesystem is not the build's to redo."""
    recorded = observed.recorded or VolumeRecord()
    return (recorded.status == "building" and recorded.backend == backend
            and bool(uuid) and recorded.fs_uuid == uuid)


def _record_formatted() -> Step:
    return Step("record", ("formatted",), "record that the filesystem is made (formatted)")


def _tail(volume: VolumeConfig, device: str, fstype: str, mkfs: str, members: list[Disk], force: bool = False, uuid: str = "") -> list[Step]:
    """mkfs (never / always / only if blank), mount, trash, mark, mode, record."""
    steps: list[Step] = []
    if mkfs == "always":
        steps.append(run_step(*mkfs_argv(volume, fstype, [device], force, uuid)))
        steps.append(_record_formatted())
    elif mkfs == "if_blank":
        argv = mkfs_argv(volume, fstype, [device], uuid=uuid)
        steps.append(Step("mkfs_if_blank", (device, argv), f"{' '.join(argv)}   # only if {device} carries no signature once active"))
    steps += _mount_steps(volume, device, fstype if mkfs == "always" else "", fstype)
    return steps


def _mount_steps(volume: VolumeConfig, device: str, fstype: str, planned: str = "") -> list[Step]:
    """`fstype`: for mount -t ("" lets mount tell); `planned`: the type the volume should have."""
    mp = volume.mount_point
    options = volume.mount_options
    if volume.quotas and (fstype or planned) in ("ext4", "xfs") and "prjquota" not in options.split(","):
        options += ",prjquota"  # project quotas are enforced only so (xfs cannot add it on a remount)
    mount = ("mount",) + (("-t", fstype) if fstype else ()) + ("-o", options, device, mp)
    return [
        Step("mkdir", (mp,), f"mkdir -p {mp}"),
        Step("mount", mount, " ".join(mount)),
        Step("trash", (mp,), f"mkdir -m 0700 {mp}/{TRASH_NAME}"),
        _mark_step(mp),
        *([_quota_step(mp)] if volume.quotas else []),
        Step("chmod", (mp, volume.mount_mode), f"chmod {volume.mount_mode:04o} {mp}"),
        Step("record", ("ready",), f"record the volume in {VOLUME_RECORD}"),
    ]


def _quota_step(mount_point: str) -> Step:
    return Step("quota", (mount_point,), f"check that {mount_point} enforces per-job quotas (btrfs: enable simple quotas)")


def _mark_step(mount_point: str) -> Step:
    return Step("mark", (mount_point,), f"write {mount_point}/{MARKER_NAME} (root, 0600): the filesystem's UUID")


def _wipe_steps(candidates: list[Candidate]) -> list[Step]:
    steps = []
    for c in candidates:
        for part in c.disk.partitions:
            steps.append(Step("wipe", (f"/dev/{part}",), f"wipefs -a /dev/{part}"))
        steps.append(Step("wipe", (c.disk.path,), f"wipefs -a {c.disk.path}   # {c.signature.describe() if c.signature else 'partitions'}"))
        if c.disk.partitions:
            steps.append(run_step("blockdev", "--rereadpt", c.disk.path, check=False))
    return steps


def _record_building() -> Step:
    return Step("record", ("building",), f"record the member disks in {VOLUME_RECORD} (building)")


def _no_disks(discovery: Discovery) -> str:
    selector = " ".join(discovery.selector.split())
    if discovery.skipped:
        why = "; ".join(f"{s.disk.path}: {s.reason}" for s in discovery.skipped)
        return f"no usable disk for the scratch volume (devices = {selector}): {why}"
    return f"no disk matches [volume] devices = {selector}"


def _degraded_failure(volume: VolumeConfig, what: str, missing: list[Member], count: int, present: int) -> str:
    if missing:
        gone = "; ".join(_describe_member(m) for m in missing)
    else:
        gone = f"{count - present} of {count} member(s), not named in the state file"
    return (f"scratch volume {what} is degraded: missing disk {gone} ({present} of {count} present); "
            "formatting nothing. Replace the disk, or set [volume] on_degraded = rebuild to build a new "
            "(empty) volume from the disks present")


# ---- the plan -----------------------------------------------------------------------------------


def plan(volume: VolumeConfig, discovery: Discovery, observed: Observed) -> Plan:
    backend = effective_backend(volume, discovery, observed.recorded)
    fstype = "btrfs" if backend == "btrfs" else volume.filesystem
    if observed.mount is not None:
        return _plan_mounted(volume, discovery, observed, backend)
    planner = {"lvm": _plan_lvm, "mdadm": _plan_mdadm, "single": _plan_single, "btrfs": _plan_btrfs}[backend]
    return planner(volume, discovery, observed, backend, fstype)


def _plan_mounted(volume: VolumeConfig, discovery: Discovery, observed: Observed, backend: str) -> Plan:
    mount = observed.mount
    assert mount is not None
    ours_devnums = {devnum for _, devnum in observed.device_devnums}
    ours_devnums |= {c.disk.devnum for c in discovery.candidates if c.ours}
    members = tuple(c.disk for c in discovery.candidates if c.ours)
    if mount.source_devnum not in ours_devnums and mount.devnum not in ours_devnums:
        return Plan(backend, "failed", failure=(
            f"{volume.mount_point} is already a mount of {mount.source} ({mount.fstype}), which is not the scratch "
            "volume: unmount it, or set [volume] mount_point elsewhere"))
    steps = []
    if not mount.trash_ok:
        steps.append(Step("trash", (volume.mount_point,), f"mkdir -m 0700 {volume.mount_point}/{TRASH_NAME}"))
    if not mount.marked:
        steps.append(_mark_step(volume.mount_point))
    if observed.vg is not None and TAG not in observed.vg.tags and mount.devnum in {devnum for _, devnum in observed.device_devnums}:
        steps.append(run_step("vgchange", "--addtag", TAG, volume.vg_name))  # adopted while mounted (the seed's script)
    if volume.quotas:
        steps.append(_quota_step(volume.mount_point))
    if mount.root_mode != volume.mount_mode:
        steps.append(Step("chmod", (volume.mount_point, volume.mount_mode), f"chmod {volume.mount_mode:04o} {volume.mount_point}"))
    recorded = observed.recorded or VolumeRecord()
    if recorded.status != "ready" or recorded.mount_source != mount.source or steps:
        steps.append(Step("record", ("ready",), f"record the volume in {VOLUME_RECORD}"))
    return Plan(backend, "mounted", device=mount.source, fstype=mount.fstype, steps=tuple(steps), members=members)


def _usable_for_build(discovery: Discovery, volume: VolumeConfig, rebuild: bool, reusable) -> tuple[list[Candidate], list[Candidate], str]:
    """(disks to build on, disks to wipe first, failure). `reusable(c)`: an ours signature the
    backend can build on as is (an orphan PV of ours)."""
    use, wipe = [], []
    for c in discovery.candidates:
        if c.signature is None:
            use.append(c)
        elif c.wipe or (c.ours and (rebuild or volume.wipe) and not reusable(c)):
            use.append(c)
            wipe.append(c)
        elif c.ours and reusable(c):
            use.append(c)
        else:
            return [], [], (f"{c.disk.describe()} carries {c.signature.describe()} from an earlier scratch volume "
                            "that this backend cannot use as is: set [volume] backend to match it, or wipe = yes")
    return use, wipe, ""


def _build(volume: VolumeConfig, discovery: Discovery, backend: str, fstype: str, state: str,
           teardown: list[Step], reusable=lambda c: False, notes: tuple[str, ...] = (), force: bool = False, uuid: str = "") -> Plan:
    use, wipe, failure = _usable_for_build(discovery, volume, state == "rebuild", reusable)
    if failure:
        return Plan(backend, "failed", failure=failure)
    if not use:
        return Plan(backend, "failed", failure=_no_disks(discovery))
    if backend == "single" and len(use) > 1:
        return Plan(backend, "failed", failure=(
            f"[volume] backend = single uses exactly one disk, but {len(use)} are usable "
            f"({', '.join(c.disk.path for c in use)}): name one in [volume] devices, or use lvm, mdadm or btrfs"))
    paths = [c.disk.path for c in use]
    members = tuple(c.disk for c in use)
    steps = list(teardown) + _wipe_steps(wipe) + [_record_building()]
    timeout_wait = min(volume.command_timeout, 60.0)
    if backend == "lvm":
        # Orphan PVs of ours (a crash after pvcreate) are taken as they are.
        fresh = [c.disk.path for c in use if c in wipe or c.signature is None]
        if fresh:
            steps.append(run_step("pvcreate", "-y", *fresh))
        steps.append(run_step("vgcreate", "-y", "--addtag", TAG, volume.vg_name, *paths))
        steps += _lvcreate(volume, len(paths))
        device = f"/dev/{volume.vg_name}/{volume.lv_name}"
        steps.append(Step("wait", (device, timeout_wait), f"wait for {device}"))
        steps += _tail(volume, device, fstype, "always", list(members), uuid=uuid)
    elif backend == "mdadm":
        device = f"/dev/md/{volume.md_name}"
        argv = ["mdadm", "--create", device, "--run", "--metadata=1.2", "--level=0", f"--chunk={volume.stripe_kb}",
                f"--raid-devices={len(paths)}", f"--name={volume.md_name}"]
        if len(paths) == 1:
            argv.append("--force")
        steps.append(run_step(*argv, *paths))
        steps.append(Step("wait", (device, timeout_wait), f"wait for {device}"))
        # A new array over wiped members can show the old array's filesystem (same data offset,
        # same first chunk): the array was created just now, so whatever it shows is stale.
        steps.append(Step("wipe", (device,), f"wipefs -a {device}   # stale signatures seen through the new array"))
        steps += _tail(volume, device, fstype, "always", list(members), uuid=uuid)
    elif backend == "single":
        device = paths[0]
        steps += _tail(volume, device, fstype, "always", list(members), force, uuid)
    else:  # btrfs
        device = paths[0]
        steps.append(run_step(*mkfs_argv(volume, "btrfs", paths, force, uuid)))
        steps.append(_record_formatted())
        steps.append(run_step("btrfs", "device", "scan", *paths))
        steps += _mount_steps(volume, device, "btrfs")
    return Plan(backend, state, device=device, fstype=fstype, steps=tuple(steps), members=members, notes=notes, fs_uuid=uuid)


def _lvcreate(volume: VolumeConfig, stripes: int) -> list[Step]:
    stripe = ("-i", stripes, "-I", volume.stripe_kb) if stripes > 1 else ()
    return [run_step("lvcreate", "-y", "-W", "y", "--addtag", TAG, *stripe, "-l", "100%FREE", "-n", volume.lv_name, volume.vg_name)]


def _degraded(volume: VolumeConfig, discovery: Discovery, backend: str, fstype: str, what: str,
              missing: list[Member], count: int, present: int, teardown: list[Step], uuid: str = "") -> Plan:
    message = _degraded_failure(volume, what, missing, count, present)
    if volume.on_degraded != "rebuild":
        return Plan(backend, "degraded", failure=message)
    note = f"rebuilding: {message.split('; formatting nothing')[0]}"
    return _build(volume, discovery, backend, fstype, "rebuild", teardown, notes=(note,), uuid=uuid)


def _first(steps: list[Step], p: Plan) -> Plan:
    """`p` with `steps` run before its own (unless it fails)."""
    return p if p.failure or not steps else p.replace(steps=tuple(steps) + p.steps)


def _plan_lvm(volume: VolumeConfig, discovery: Discovery, observed: Observed, backend: str, fstype: str) -> Plan:
    vg, lv = observed.vg, observed.lv
    uuid = observed.new_uuid
    what = f"{volume.vg_name}/{volume.lv_name}"
    missing = missing_members(observed.recorded, discovery)
    teardown = [run_step("vgchange", "-an", volume.vg_name, check=False)] if vg is not None else []
    if vg is not None and (vg.missing_pv_count > 0 or missing or (lv is not None and lv.partial)):
        count = max(vg.pv_count, len((observed.recorded or VolumeRecord()).members))
        present = vg.pv_count - vg.missing_pv_count if vg.missing_pv_count else count - len(missing)
        return _degraded(volume, discovery, backend, fstype, what, missing, count, present, teardown, uuid)
    if vg is None:
        if missing:
            count = len((observed.recorded or VolumeRecord()).members)
            return _degraded(volume, discovery, backend, fstype, what, missing, count, count - len(missing), [], uuid)
        orphan_pv = lambda c: c.signature is not None and c.signature.type == "LVM2_member" and c.signature.vg_name == ""
        has_ours = any(c.ours for c in discovery.candidates)
        return _build(volume, discovery, backend, fstype, "complete" if has_ours else "build", [], reusable=orphan_pv, uuid=uuid)
    device = f"/dev/{volume.vg_name}/{volume.lv_name}"
    members = tuple(c.disk for c in discovery.candidates if c.ours)
    notes = _unused_note(discovery)
    # Adopted (the seed's layout, or built by a release that did not tag): mark it ours.
    tag = [run_step("vgchange", "--addtag", TAG, volume.vg_name)] if TAG not in vg.tags else []
    if lv is None:
        steps = [*tag, _record_building(), *_lvcreate(volume, vg.pv_count), Step("wait", (device, min(volume.command_timeout, 60.0)), f"wait for {device}")]
        steps += _tail(volume, device, fstype, "always", list(members), uuid=uuid)
        return Plan(backend, "complete", device, fstype, tuple(steps), members, notes=notes, fs_uuid=uuid)
    if not lv.active:
        steps = [*tag, run_step("vgchange", "-ay", volume.vg_name), Step("wait", (device, min(volume.command_timeout, 60.0)), f"wait for {device}")]
        steps += _tail(volume, device, fstype, "if_blank", list(members), uuid=uuid)
        return Plan(backend, "activate", device, "", tuple(steps), members, notes=notes, fs_uuid=uuid)
    return _first(tag, _plan_existing_device(volume, observed, backend, fstype, device, members, notes))


def _plan_existing_device(volume, observed: Observed, backend, fstype, device, members, notes) -> Plan:
    """An active LV / running md array: mkfs when it is blank (a crash before mkfs), else mount what it holds."""
    uuid = observed.new_uuid
    signature = observed.signature_of(device)
    if not observed.has_signature_info(device):
        steps = _tail(volume, device, fstype, "if_blank", list(members), uuid=uuid)
        return Plan(backend, "mount", device, "", tuple(steps), members, notes=notes, fs_uuid=uuid)
    if signature is None:
        steps = [_record_building(), *_tail(volume, device, fstype, "always", list(members), uuid=uuid)]
        return Plan(backend, "complete", device, fstype, tuple(steps), members, notes=notes, fs_uuid=uuid)
    if signature.usage != "filesystem":
        return Plan(backend, "failed", failure=f"{device} carries {signature.describe()}, not a filesystem: formatting nothing; wipe it by hand")
    if interrupted(observed, backend, signature.uuid):
        note = f"an interrupted setup left {signature.describe()} on {device}, never mounted: making it again"
        steps = [_record_building(), *_tail(volume, device, fstype, "always", list(members), force=True, uuid=uuid)]
        return Plan(backend, "complete", device, fstype, tuple(steps), members, notes=notes + (note,), fs_uuid=uuid)
    if signature.type != fstype:
        notes = notes + (f"{device} holds {signature.type}, not [volume] filesystem = {fstype}: mounting it as it is",)
    steps = _mount_steps(volume, device, signature.type)
    return Plan(backend, "mount", device, signature.type, tuple(steps), members, notes=notes)


def _hex(uuid: str) -> str:
    """An md UUID without separators: blkid writes 8-4-4-4-12, mdadm --detail 8:8:8:8."""
    return "".join(ch for ch in uuid.lower() if ch in "0123456789abcdef")


def _unused_note(discovery: Discovery) -> tuple[str, ...]:
    unused = [c.disk.path for c in discovery.candidates if not c.ours]
    return (f"not used by the existing volume: {', '.join(unused)}",) if unused else ()


def _plan_mdadm(volume: VolumeConfig, discovery: Discovery, observed: Observed, backend: str, fstype: str) -> Plan:
    device = f"/dev/md/{volume.md_name}"
    ours_members = [c for c in discovery.candidates if c.ours and c.signature is not None and c.signature.type == "linux_raid_member"]
    member_uuids = {_hex(c.signature.uuid) for c in ours_members}
    arrays = [a for a in observed.md_arrays if a.name == volume.md_name or a.uuid and _hex(a.uuid) in member_uuids]
    missing = missing_members(observed.recorded, discovery)
    stop = [run_step("mdadm", "--stop", a.devnode, check=False) for a in arrays]
    members = tuple(c.disk for c in ours_members)
    notes = _unused_note(discovery)
    running = [a for a in arrays if a.running and len(a.members) == a.raid_disks]
    if running and not missing:
        array = running[0]
        return _plan_existing_device(volume, observed, backend, fstype, array.devnode, members, notes)
    uuids = {_hex(c.signature.uuid): c.signature.uuid for c in ours_members}
    if len(uuids) > 1:
        return Plan(backend, "failed", failure=f"disks {', '.join(c.disk.path for c in ours_members)} belong to {len(uuids)} different md arrays named {volume.md_name!r}: wipe the stale ones")
    if ours_members:
        count = max([c.signature.md_devices for c in ours_members] + [a.raid_disks for a in arrays] + [len(ours_members)])
        if missing or len(ours_members) < count:
            return _degraded(volume, discovery, backend, fstype, device, missing, max(count, len(ours_members) + len(missing)), len(ours_members), stop, observed.new_uuid)
        uuid = next(iter(uuids.values()))
        steps = stop + [run_step("mdadm", "--assemble", device, f"--uuid={uuid}", "--run", *[c.disk.path for c in ours_members]),
                        Step("wait", (device, min(volume.command_timeout, 60.0)), f"wait for {device}")]
        steps += _tail(volume, device, fstype, "if_blank", list(members))
        return Plan(backend, "activate", device, "", tuple(steps), members, notes=notes)
    if missing:
        count = len((observed.recorded or VolumeRecord()).members)
        return _degraded(volume, discovery, backend, fstype, device, missing, count, count - len(missing), stop, observed.new_uuid)
    return _build(volume, discovery, backend, fstype, "build", stop, uuid=observed.new_uuid)


def _plan_single(volume: VolumeConfig, discovery: Discovery, observed: Observed, backend: str, fstype: str) -> Plan:
    ours = [c for c in discovery.candidates if c.ours and c.signature is not None and c.signature.usage == "filesystem"]
    recorded_uuid = (observed.recorded or VolumeRecord()).fs_uuid
    if len(ours) > 1 and recorded_uuid:
        ours = [c for c in ours if c.signature.uuid == recorded_uuid] or ours
    if len(ours) > 1:
        return Plan(backend, "failed", failure=f"more than one disk carries our filesystem ({', '.join(c.disk.path for c in ours)}): "
                                                "name the one to use in [volume] devices")
    if ours and interrupted(observed, backend, ours[0].signature.uuid):
        note = f"an interrupted setup left {ours[0].signature.describe()} on {ours[0].disk.path}, never mounted: making it again"
        return _build(volume, discovery, backend, fstype, "complete", [], reusable=lambda c: c in ours, notes=(note,), force=True, uuid=observed.new_uuid)
    if ours:
        c = ours[0]
        notes = () if c.signature.type == fstype else (f"{c.disk.path} holds {c.signature.type}, not [volume] filesystem = {fstype}: mounting it as it is",)
        return Plan(backend, "mount", c.disk.path, c.signature.type, tuple(_mount_steps(volume, c.disk.path, c.signature.type)), (c.disk,), notes=notes)
    return _build(volume, discovery, backend, fstype, "build", [], uuid=observed.new_uuid)


def _plan_btrfs(volume: VolumeConfig, discovery: Discovery, observed: Observed, backend: str, fstype: str) -> Plan:
    ours = [c for c in discovery.candidates if c.ours and c.signature is not None and c.signature.type == "btrfs"]
    uuids = sorted({c.signature.uuid for c in ours})
    recorded_uuid = (observed.recorded or VolumeRecord()).fs_uuid
    if len(uuids) > 1 and recorded_uuid in uuids:
        uuids = [recorded_uuid]
    if len(uuids) > 1:
        return Plan(backend, "failed", failure=f"disks carry {len(uuids)} different btrfs filesystems labelled {volume.label!r}: "
                                                f"{', '.join(c.disk.path for c in ours)}; wipe the stale ones")
    missing = missing_members(observed.recorded, discovery)
    if uuids and interrupted(observed, backend, uuids[0]):
        note = f"an interrupted setup left btrfs {uuids[0]} on {', '.join(c.disk.path for c in ours)}, never mounted: making it again"
        return _build(volume, discovery, backend, fstype, "complete", [], reusable=lambda c: c in ours, notes=(note,), force=True, uuid=observed.new_uuid)
    if uuids:
        members = [c for c in ours if c.signature.uuid == uuids[0]]
        shown = [fs for fs in observed.btrfs if fs.uuid == uuids[0]]
        total = max([fs.total_devices for fs in shown] + [len(members)])
        if missing or len(members) < total:
            return _degraded(volume, discovery, backend, fstype, f"btrfs {uuids[0]}", missing, max(total, len(members) + len(missing)), len(members), [], observed.new_uuid)
        paths = [c.disk.path for c in members]
        steps = [run_step("btrfs", "device", "scan", *paths)] + _mount_steps(volume, paths[0], "btrfs")
        return Plan(backend, "mount", paths[0], "btrfs", tuple(steps), tuple(c.disk for c in members), notes=_unused_note(discovery))
    if missing:
        count = len((observed.recorded or VolumeRecord()).members)
        return _degraded(volume, discovery, backend, fstype, "btrfs", missing, count, count - len(missing), [], observed.new_uuid)
    return _build(volume, discovery, backend, fstype, "build", [], uuid=observed.new_uuid)
