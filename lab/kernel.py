"""Loop devices, filesystems and mounts for tests: every helper records what it made so that
teardown can undo exactly that (never by name or pattern)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-K"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}


def sh(*argv: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=ENV, timeout=timeout, check=check, capture_output=True, text=True, **kwargs)


def make_image(path: Path, size_mb: int) -> Path:
    with open(path, "wb") as image:
        image.truncate(size_mb * 1024 * 1024)
    return path


def attach_loop(image: Path) -> str:
    return sh("losetup", "--find", "--show", str(image)).stdout.strip()


def detach_loop(device: str) -> None:
    sh("losetup", "--detach", device, check=False)


def mkfs(device: str, fstype: str) -> None:
    sh(*MKFS[fstype], device)


def mount(source: str, target: str, fstype: str | None = None, options: str | None = None) -> None:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", options]
    sh(*argv, source, target)


def umount(target: str) -> None:
    if sh("umount", target, check=False).returncode != 0:
        sh("umount", "--lazy", target, check=False)


def is_mounted(target: str) -> bool:
    with open("/proc/self/mountinfo") as stream:
        return any(line.split()[4] == target for line in stream)


class LoopFilesystem:
    """A real filesystem on a loop device, mounted at `mount_point`."""

    def __init__(self, image: Path, device: str, fstype: str, mount_point: str) -> None:
        self.image, self.device, self.fstype, self.mount_point = image, device, fstype, mount_point


class LoopFactory:
    """Makes loop filesystems and undoes exactly what it made, in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.devices: list[str] = []
        self.mount_points: list[str] = []

    def device(self, size_mb: int = 256, name: str | None = None) -> str:
        image = make_image(self.workdir / (name or f"disk{len(self.devices)}.img"), size_mb)
        device = attach_loop(image)
        self.devices.append(device)
        return device

    def filesystem(self, fstype: str = "ext4", size_mb: int = 256, mount_point: str | None = None, options: str | None = None) -> LoopFilesystem:
        device = self.device(size_mb)
        mkfs(device, fstype)
        target = mount_point or str(self.workdir / f"mnt{len(self.devices)}")
        os.makedirs(target, exist_ok=True)
        mount(device, target, fstype, options)
        self.mount_points.append(target)
        return LoopFilesystem(Path(self.workdir), device, fstype, target)

    def cleanup(self) -> None:
        for target in reversed(self.mount_points):
            while is_mounted(target):
                umount(target)
        # Mounts made by the code under test (e.g. `setup`) on our devices: unmount those too.
        with open("/proc/self/mountinfo") as stream:
            stacked = [line.split() for line in stream]
        for fields in reversed(stacked):
            dash = fields.index("-")
            if fields[dash + 2] in self.devices:
                umount(fields[4])
        for device in reversed(self.devices):
            detach_loop(device)
        self.devices.clear()
        self.mount_points.clear()
