"""apply(): carry out a Plan's steps, each logged with its duration. The caller holds the setup lock.

It also puts our mark on the filesystem: `<mount_point>/.slurm-scratch-volume`, root's 0600 file
holding the filesystem's UUID, written before the root is opened to users (see volume/devices.py)."""

from __future__ import annotations

import errno
import os
import stat
import time

from slurm_scratch import log, run
from slurm_scratch.config import VolumeConfig
from slurm_scratch.volume.devices import Disk, probe_signature
from slurm_scratch.layout import DIR_FLAGS, MARKER_NAME, SQUATTED_PREFIX, open_trash
from slurm_scratch.errors import ScratchError
from slurm_scratch.volume import lvm, state
from slurm_scratch.volume.plan import Plan, Step



def apply(volume: VolumeConfig, plan: Plan) -> None:
    total = log.Timer()
    for step in plan.steps:
        timer = log.Timer()
        done = _do(volume, plan, step)
        log.info(f"setup: {done or step.text}", ms=timer.ms())
    log.info(f"setup: {plan.state}: {len(plan.steps)} step(s) done, {plan.device} on {volume.mount_point}", ms=total.ms())


def _do(volume: VolumeConfig, plan: Plan, step: Step) -> str | None:
    """Carry out one step; returns what to log when it differs from the step's text."""
    timeout = volume.command_timeout
    if step.kind == "run":
        run.run(list(step.args), timeout=timeout, check=step.check, env=lvm.LVM_ENV)
    elif step.kind == "wipe":
        run.run(["wipefs", "-a", step.args[0]], timeout=timeout)
    elif step.kind == "wait":
        _wait_for_device(step.args[0], step.args[1])
    elif step.kind == "mkfs_if_blank":
        device, argv = step.args
        signature = probe_signature(device, timeout)
        if signature is None:
            run.run(list(argv), timeout=timeout)
            return f"{device} was blank: {' '.join(argv)}"
        return f"{device} carries {signature.describe()}: kept as it is"
    elif step.kind == "mkdir":
        _make_mount_point(step.args[0])
    elif step.kind == "mount":
        try:
            run.run(list(step.args), timeout=timeout)
        except run.CommandError as exc:
            if volume.quotas and "prjquota" in step.args[step.args.index("-o") + 1]:
                raise ScratchError(f"{exc}: [jobs] quota needs project quotas, and this volume or kernel cannot do them "
                                   "(an adopted ext4 made without -O quota,project: `tune2fs -O quota,project` it while "
                                   "unmounted; or a kernel without ext4/xfs quota support), or set [jobs] quota = off") from None
            raise
    elif step.kind == "trash":
        root_fd = _open_root(step.args[0])
        try:
            trash_fd = open_trash(root_fd, step.args[0], create=True)
            if trash_fd is not None:
                os.close(trash_fd)
        finally:
            os.close(root_fd)
    elif step.kind == "mark":
        return mark(step.args[0], timeout)
    elif step.kind == "chmod":
        root_fd = _open_root(step.args[0])
        try:
            os.fchmod(root_fd, step.args[1])
        finally:
            os.close(root_fd)
    elif step.kind == "quota":
        return quotas(step.args[0])
    elif step.kind == "record":
        record(volume, plan, step.args[0])
    else:
        raise ScratchError(f"internal error: unknown setup step {step.kind!r}")
    return None


def _wait_for_device(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if stat.S_ISBLK(os.stat(path).st_mode):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ScratchError(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.05)


def _make_mount_point(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.makedirs(path, mode=0o755)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise ScratchError(f"[volume] mount_point {path} exists and is not a directory (a symlink or file): remove it or choose another")


def _open_root(path: str) -> int:
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as exc:
        raise ScratchError(f"{path}: cannot open the mounted volume: {exc.strerror}") from None


def mark(mount_point: str, timeout: float) -> str:
    """Write the marker (a private temporary name, then renamed over whatever a user may have put
    at its name; a directory there is moved into the trash first)."""
    from slurm_scratch import mounts

    mount = mounts.find_mount(mount_point)
    signature = probe_signature(mount.source, timeout) if mount is not None and mount.source.startswith("/dev/") else None
    if signature is None or not signature.uuid:
        raise ScratchError(f"{mount_point}: cannot mark the volume: no filesystem UUID found on {mount.source if mount else 'its device'}")
    root_fd = _open_root(mount_point)
    temporary = ""
    try:
        for _ in range(100):
            temporary = f"{MARKER_NAME}.{os.getpid()}.{os.urandom(4).hex()}"
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=root_fd)
                break
            except FileExistsError:
                continue
        else:
            raise ScratchError(f"{mount_point}: cannot create a temporary name for {MARKER_NAME}")
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o600)
            os.write(fd, f"{signature.uuid}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(temporary, MARKER_NAME, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except (IsADirectoryError, FileExistsError, OSError) as exc:
            if not isinstance(exc, IsADirectoryError) and exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # A directory squats the name: move it aside, into the trash.
            trash_fd = open_trash(root_fd, mount_point, create=True)
            if trash_fd is None:
                raise
            try:
                aside = f"{SQUATTED_PREFIX[:-1]}{MARKER_NAME}.{time.time_ns()}"
                os.rename(MARKER_NAME, aside, src_dir_fd=root_fd, dst_dir_fd=trash_fd)
            finally:
                os.close(trash_fd)
            log.warning(f"setup: {mount_point}/{MARKER_NAME} was taken by something else: moved into the trash as {aside}")
            os.rename(temporary, MARKER_NAME, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        temporary = ""
        os.fsync(root_fd)
    except OSError as exc:
        raise ScratchError(f"{mount_point}/{MARKER_NAME}: cannot mark the volume: {exc.strerror}") from None
    finally:
        if temporary:
            try:
                os.unlink(temporary, dir_fd=root_fd)
            except OSError:
                pass
        os.close(root_fd)
    return f"marked {mount_point} as ours: {MARKER_NAME} = {signature.uuid}"


def member_entry(disk: Disk) -> state.Member:
    return state.Member(path=disk.path, serial=disk.serial, model=disk.model, size_bytes=disk.size_bytes, by_id=tuple(disk.by_id))


def record(volume: VolumeConfig, plan: Plan, status: str) -> None:
    from slurm_scratch import mounts

    previous = state.read()
    same_device = previous is not None and previous.device == plan.device
    built = state.VolumeRecord(
        status=status,
        backend=plan.backend,
        filesystem=plan.fstype or volume.filesystem,
        device=plan.device,
        mount_point=volume.mount_point,
        members=tuple(member_entry(disk) for disk in plan.members),
        vg_name=volume.vg_name,
        lv_name=volume.lv_name,
        md_name=volume.md_name,
        label=volume.label,
        stripe_kb=volume.stripe_kb,
        created=previous.created if same_device and previous.created else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if status in ("building", "formatted"):
        # The UUID mkfs is given (or gave): proof that what a crash leaves behind is ours.
        built = built.replace(fs_uuid=plan.fs_uuid or ((previous.fs_uuid or "") if same_device else ""))
    if status == "ready":
        mount = mounts.find_mount(volume.mount_point)
        if mount is None:
            raise ScratchError(f"{volume.mount_point} is not mounted after setup")
        signature = probe_signature(mount.source, volume.command_timeout) if mount.source.startswith("/dev/") else None
        built = built.replace(mount_source=mount.source, filesystem=mount.fstype, fs_uuid=signature.uuid if signature is not None else "")
        if not built.members and previous is not None and previous.members:
            built = built.replace(members=previous.members)
    state.write(built)


BTRFS_QUOTA_CTL = 3 << 30 | 16 << 16 | 0x94 << 8 | 40
BTRFS_QUOTA_CTL_ENABLE_SIMPLE = 4


def quotas(mount_point: str) -> str:
    """Make the mounted volume enforce per-job quotas ([jobs] quota), or say clearly why it cannot.

    btrfs: simple quotas (Linux 6.7+), enabled here: with them a subvolume a job nests inside its own
    is charged to the job; full qgroups (an adopted volume's) would let it escape, so they are refused.
    ext4/xfs: mounted with prjquota (the mount step asks for it; an adopted volume may lack it)."""
    import fcntl
    import struct

    from slurm_scratch import mounts

    mount = mounts.find_mount(mount_point)
    if mount is None:
        raise ScratchError(f"{mount_point} is not mounted: cannot set up per-job quotas")
    if mount.fstype in ("ext4", "xfs"):
        if not {"prjquota", "pquota"} & set(mount.options):
            raise ScratchError(f"{mount_point} ({mount.fstype}) is mounted without prjquota: [jobs] quota needs it "
                               f"(unmount it and run setup again, which mounts it so; xfs cannot add it on a remount)")
        return f"{mount_point}: {mount.fstype} project quotas enforced (prjquota)"
    if mount.fstype != "btrfs":
        raise ScratchError(f"{mount_point} is {mount.fstype}: [jobs] quota needs btrfs, ext4 or xfs")
    root_fd = _open_root(mount_point)
    try:
        mode = _btrfs_quota_mode(mounts.btrfs_fs_uuid(root_fd))
        if mode == "squota":
            return f"{mount_point}: btrfs simple quotas already enabled"
        if mode:
            raise ScratchError(f"{mount_point}: btrfs full qgroups are enabled; with them a subvolume a job nests in its "
                               "directory escapes its quota. `btrfs quota disable` it and run setup again (it enables "
                               "simple quotas), or set [jobs] quota = off")
        if not os.path.exists("/sys/fs/btrfs/features/simple_quota"):
            raise ScratchError(f"{mount_point}: this kernel has no btrfs simple quotas (Linux 6.7 or later): [jobs] quota "
                               "cannot be enforced on btrfs here; set [jobs] quota = off, or use ext4/xfs")
        fcntl.ioctl(root_fd, BTRFS_QUOTA_CTL, struct.pack("QQ", BTRFS_QUOTA_CTL_ENABLE_SIMPLE, 0))
    finally:
        os.close(root_fd)
    return f"{mount_point}: enabled btrfs simple quotas"


def _btrfs_quota_mode(fs_uuid: str) -> str:
    """"squota", "qgroup" (full qgroups) or "" (quotas off), from sysfs."""
    base = f"/sys/fs/btrfs/{fs_uuid}/qgroups"
    try:
        with open(f"{base}/mode", encoding="ascii") as stream:
            return stream.read().strip()
    except FileNotFoundError:
        return "qgroup" if os.path.isdir(base) else ""
