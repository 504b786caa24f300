"""apply(): carry out a Plan's steps, each logged with its duration. The caller holds the setup lock."""

from __future__ import annotations

import os
import stat
import time

from slurm_scratch import log, run
from slurm_scratch.cleanup import DIR_FLAGS, open_trash
from slurm_scratch.config import VolumeConfig
from slurm_scratch.devices import Disk, probe_signature
from slurm_scratch.errors import ScratchError
from slurm_scratch.volume import state
from slurm_scratch.volume.plan import Plan, Step

LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


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
        run.run(list(step.args), timeout=timeout, check=step.check, env=LVM_ENV)
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
        run.run(list(step.args), timeout=timeout)
    elif step.kind == "trash":
        root_fd = _open_root(step.args[0])
        try:
            trash_fd = open_trash(root_fd, step.args[0], create=True)
            if trash_fd is not None:
                os.close(trash_fd)
        finally:
            os.close(root_fd)
    elif step.kind == "chmod":
        root_fd = _open_root(step.args[0])
        try:
            os.fchmod(root_fd, step.args[1])
        finally:
            os.close(root_fd)
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


def member_entry(disk: Disk) -> dict:
    return {"path": disk.path, "serial": disk.serial, "model": disk.model, "size_bytes": disk.size_bytes, "by_id": list(disk.by_id)}


def record(volume: VolumeConfig, plan: Plan, status: str) -> None:
    from slurm_scratch import mounts

    data = {
        "status": status,
        "backend": plan.backend,
        "filesystem": plan.fstype or volume.filesystem,
        "device": plan.device,
        "mount_point": volume.mount_point,
        "members": [member_entry(disk) for disk in plan.members],
        "vg_name": volume.vg_name,
        "lv_name": volume.lv_name,
        "md_name": volume.md_name,
        "label": volume.label,
        "stripe_kb": volume.stripe_kb,
    }
    previous = state.read() or {}
    data["created"] = previous.get("created") if previous.get("device") == plan.device and previous.get("created") else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if status == "ready":
        mount = mounts.find_mount(volume.mount_point)
        if mount is None:
            raise ScratchError(f"{volume.mount_point} is not mounted after setup")
        data["mount_source"] = mount.source
        data["filesystem"] = mount.fstype
        signature = probe_signature(mount.source, volume.command_timeout) if mount.source.startswith("/dev/") else None
        data["fs_uuid"] = signature.uuid if signature is not None else ""
        if not data["members"] and previous.get("members"):
            data["members"] = previous["members"]
    state.write(data)
