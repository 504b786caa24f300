#!/usr/bin/python3
"""How a simulated compute node gets its /scratch: shared by the namespace cluster
(lab/cluster.py) and the docker-compose cluster's node containers (docker/entrypoint.sh).

The steps, in order (`bootstrap_node`):
1. emulate the node's local NVMe disks: N sparse image files, each on a loop device. Each device
   gets LO_FLAGS_AUTOCLEAR and is held open by the caller, so the kernel detaches it at its last
   close: whatever kills the caller (SIGKILL included), no loop device outlives both the caller
   and the mount of the volume;
2. write the node's slurm-scratch.conf: the cluster's settings plus `[volume] devices` (the
   node's loop devices) and, when given, `[slurm] slurm_conf`;
3. run `slurm-scratch setup` inside the node, as a node's boot does before slurmd;
4. check that the mount point now carries the expected filesystem on one of those devices.
`NodeDisks.detach` undoes step 1, touching only devices proven to be backed by our own images
(same device and inode as recorded at attach time).

Standard library only (and lab.process): the containers run it as a file with Debian's
/usr/bin/python3, no project on the path; the Dockerfile copies it with lab/process.py.

CLI (the node containers' entrypoint runs it before slurmd):
  node_boot.py up --image-dir DIR --disks N --disk-mib MIB --base-conf FILE --conf FILE
                       --slurm-scratch PATH --ready FILE [--slurm-conf FILE] [--make-device-nodes]
makes the device nodes a container lacks (CONTROL_DEVICES) when asked, builds the node's /scratch,
writes FILE named by --ready (the loop devices, or the error), then holds the disks until
SIGTERM/SIGINT, when it unmounts the mount point and detaches its loop devices. A failing `setup`
is reported and the disks stay held, as on a real node where slurmd still starts and the health
check drains the node until an admin repairs it.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

if not __package__:  # run as a file (the compose nodes' entrypoint): make the lab importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lab.process import LabError, run, wait_for  # noqa: E402
from lab.toolconf import Settings, read_ini, write_tool_conf  # noqa: E402

LOOP_MAJOR = 7
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_AUTOCLEAR = 4
_LOOP_INFO64_SIZE = 232
_LO_FLAGS_OFFSET = 52  # struct loop_info64: five __u64, then lo_number, encrypt type, key size
ATTACH_ATTEMPTS = 10   # another container may take the free loop device we were told about
# Character devices a node needs that a container's /dev lacks (an unprivileged container gets
# only a few): (name, major, minor, mode), made by `make_device_nodes`; the compose file's
# device_cgroup_rules allow exactly these.
CONTROL_DEVICES = (("loop-control", 10, 237, 0o660),   # a free loop device, on demand
                   ("btrfs-control", 10, 234, 0o660),  # `btrfs device scan`
                   ("kmsg", 1, 11, 0o600))             # the kernel's log, for the health check



# One error type for the node boot and every builder that uses it (lab.process.LabError).
BootstrapError = LabError


# ---------------------------------------------------------------------- loop devices
def hold_with_autoclear(device: str) -> int:
    """Open `device` and set LO_FLAGS_AUTOCLEAR: the kernel detaches it at its last close, so
    the descriptor returned (held until teardown) is what keeps it attached, even while its
    filesystem is unmounted by a test. A caller killed outright thus leaks no loop device."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    info = bytearray(_LOOP_INFO64_SIZE)
    fcntl.ioctl(fd, _LOOP_GET_STATUS64, info)
    flags = struct.unpack_from("I", info, _LO_FLAGS_OFFSET)[0]
    struct.pack_into("I", info, _LO_FLAGS_OFFSET, flags | _LO_FLAGS_AUTOCLEAR)
    fcntl.ioctl(fd, _LOOP_SET_STATUS64, info)
    return fd


def loop_backing_file(device: str) -> str | None:
    try:
        return Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def loop_backing_identity(device: str) -> tuple[int, int, int] | None:
    """(major, minor, inode) of the file backing loop `device`, or None when it is not attached.
    Unlike the backing file's path this cannot be mistaken for another container's image."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = bytearray(_LOOP_INFO64_SIZE)
        fcntl.ioctl(fd, _LOOP_GET_STATUS64, info)
    except OSError:  # ENXIO: not attached
        return None
    finally:
        os.close(fd)
    encoded, inode = struct.unpack_from("QQ", info, 0)  # the kernel's new_encode_dev()
    return (encoded & 0xFFF00) >> 8, (encoded & 0xFF) | ((encoded >> 12) & 0xFFF00), inode


def file_identity(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def free_loop_device() -> str:
    """A free loop device, its node made when /dev lacks it (a container's /dev is a copy made
    when it started; the kernel makes new loop devices on demand through /dev/loop-control)."""
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
    finally:
        os.close(control)
    device = f"/dev/loop{number}"
    if not os.path.exists(device):
        os.mknod(device, stat.S_IFBLK | 0o660, os.makedev(LOOP_MAJOR, number))
    return device


def make_device_nodes(dev: Path = Path("/dev")) -> list[str]:
    """Make each of CONTROL_DEVICES that `dev` lacks; what could not be made, and why (the step
    that needs it then fails with its own error, as on a host without that driver)."""
    problems = []
    for name, major, minor, mode in CONTROL_DEVICES:
        path = dev / name
        if os.path.lexists(path):
            continue
        try:
            os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
        except OSError as exc:
            problems.append(f"could not make {path} ({major}:{minor}): {exc.strerror}")
    return problems


def attach_loop(image: Path) -> str:
    last = ""
    for _ in range(ATTACH_ATTEMPTS):
        device = free_loop_device()
        result = run(["losetup", device, str(image)], check=False)
        if result.returncode == 0:
            return device
        last = result.stderr.strip()  # taken meanwhile by someone else: ask for another
        time.sleep(0.1)
    raise BootstrapError(f"could not attach {image} to a loop device: {last}")


class NodeDisks:
    """A node's emulated local disks: sparse images in `directory`, on loop devices held open
    with autoclear. Lists grow as each disk is made, so a failure half-way leaves a record
    that `detach` undoes."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.images: list[Path] = []
        self.devices: list[str] = []
        self.fds: list[int] = []
        self._identities: list[tuple[int, int, int]] = []

    def attach(self, count: int, size_mib: int) -> None:
        """Make `count` disks of `size_mib` MiB. An image of that size already there is reused
        with its data (a container restarted on its volume: the disks survive, as a reboot)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for index in range(len(self.images), count):
            image = self.directory / f"disk{index}.img"
            if not image.exists() or image.stat().st_size != size_mib << 20:
                with open(image, "wb") as sparse:
                    sparse.truncate(size_mib << 20)
            self.images.append(image)
            device = attach_loop(image)
            self.devices.append(device)
            self._identities.append(file_identity(image))
            self.fds.append(hold_with_autoclear(device))

    def release(self) -> None:
        """Close the descriptors: each device detaches as soon as nothing else holds it."""
        while self.fds:
            os.close(self.fds.pop())

    def detach(self, timeout: float = 10) -> list[str]:
        """Release, then detach every device still backed by our image (a mount namespace may
        take a moment to release it). Returns what could not be undone."""
        self.release()
        problems = []
        for device, image, identity in zip(self.devices, self.images, self._identities):
            def ours(device: str = device, identity: tuple[int, int, int] = identity) -> bool:
                return loop_backing_identity(device) == identity

            if ours():
                try:
                    wait_for(f"{device} to detach", lambda: not ours() or run(
                        ["losetup", "-d", device], check=False).returncode == 0, timeout)
                except BootstrapError:
                    pass
            if ours():
                problems.append(f"{device} ({image}) is still attached")
        self.devices = []
        self._identities = []
        return problems


# ---------------------------------------------------------------------- the node's config
def node_settings(settings: Settings, devices: Sequence[str], slurm_conf: str | None = None,
                  overrides: Settings | None = None) -> Settings:
    """The cluster's settings plus the node's own devices (and slurm.conf), then `overrides`."""
    merged = {section: dict(keys) for section, keys in settings.items()}
    merged.setdefault("volume", {})["devices"] = " ".join(devices)
    if slurm_conf:
        merged.setdefault("slurm", {})["slurm_conf"] = slurm_conf
    for section, keys in (overrides or {}).items():
        merged.setdefault(section, {}).update(keys)
    return merged


def expected_filesystem(settings: Settings) -> str:
    volume = settings.get("volume", {})
    return "btrfs" if volume.get("backend") == "btrfs" else volume.get("filesystem", "ext4")


# ---------------------------------------------------------------------- setup and its check
def mount_source(mountinfo: str, mount_point: str) -> tuple[str, str] | None:
    """(filesystem type, device) of the topmost mount at `mount_point` in a mountinfo text."""
    found = None
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        if fields.split()[4] == mount_point:
            found = tuple(tail.split()[:2])
    return found


def run_setup(run_in_node: Callable[[list[str]], subprocess.CompletedProcess],
              slurm_scratch: str) -> None:
    result = run_in_node([slurm_scratch, "setup"])
    if result.returncode != 0:
        raise BootstrapError(f"slurm-scratch setup exited {result.returncode}: "
                             f"{result.stderr.strip()}")


def check_scratch(mountinfo: str, mount_point: str, fstype: str, devices: Sequence[str]) -> None:
    source = mount_source(mountinfo, mount_point)
    if source is None or source[0] != fstype or source[1] not in devices:
        raise BootstrapError(f"slurm-scratch setup exited 0 but {mount_point} is {source}, "
                             f"not {fstype} on {' '.join(devices)}")


def bootstrap_node(disks: NodeDisks, disk_count: int, disk_mib: int, conf_path: Path,
                   settings: Settings, slurm_conf: str | None, slurm_scratch: str,
                   run_in_node: Callable[[list[str]], subprocess.CompletedProcess],
                   read_mountinfo: Callable[[], str], mount_point_seen: str | None = None) -> None:
    """Disks, config, `slurm-scratch setup`, check (module docstring). `run_in_node` runs a
    command as the node (its namespaces, its root); `read_mountinfo` returns the node's
    mountinfo, in which the mount point shows as `mount_point_seen` (default: as configured)."""
    disks.attach(disk_count, disk_mib)
    write_tool_conf(conf_path, node_settings(settings, disks.devices, slurm_conf))
    run_setup(run_in_node, slurm_scratch)
    mount_point = settings.get("volume", {}).get("mount_point", "/scratch")
    check_scratch(read_mountinfo(), mount_point_seen or mount_point,
                  expected_filesystem(settings), disks.devices)


def unmount_all(mount_point: str, attempts: int = 5) -> bool:
    """Unmount every mount stacked on `mount_point` (lazily when busy: a job may still hold it).
    True when nothing is mounted there any more."""
    for _ in range(attempts):
        if mount_source(Path("/proc/self/mountinfo").read_text(), mount_point) is None:
            return True
        if run(["umount", mount_point], check=False, timeout=30).returncode != 0:
            run(["umount", "--lazy", mount_point], check=False, timeout=30)
    return mount_source(Path("/proc/self/mountinfo").read_text(), mount_point) is None


# ---------------------------------------------------------------------- CLI (node containers)
def _up(args: argparse.Namespace) -> int:
    settings = read_ini(args.base_conf)
    mount_point = settings.get("volume", {}).get("mount_point", "/scratch")
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stop.append(number))
    disks = NodeDisks(args.image_dir)
    ready = Path(args.ready)
    status = 0
    for problem in make_device_nodes() if args.make_device_nodes else ():
        print(f"node_bootstrap: {problem}", file=sys.stderr, flush=True)
    try:
        started = time.monotonic()
        try:
            bootstrap_node(disks, args.disks, args.disk_mib, args.conf, settings, args.slurm_conf,
                           args.slurm_scratch,
                           lambda argv: run(argv, check=False, timeout=600,
                                            env={"SLURM_SCRATCH_CONF": str(args.conf)}),
                           lambda: Path("/proc/self/mountinfo").read_text())
            outcome = (f"{mount_point} ready on {' '.join(disks.devices)} "
                       f"in {time.monotonic() - started:.1f} s")
        except BootstrapError as exc:
            if not disks.fds:
                raise  # no disks: nothing a node could run on
            outcome = f"{exc} (disks held; repair with: slurm-scratch setup)"
        print(f"node_bootstrap: {outcome}", flush=True)
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.write_text(outcome + "\n")
        while not stop:  # the handlers interrupt the sleep
            time.sleep(1)
    except BootstrapError as exc:
        print(f"node_bootstrap: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        if not unmount_all(mount_point):
            print(f"node_bootstrap: {mount_point} is still mounted", file=sys.stderr)
            status = 1
        problems = disks.detach()
        for problem in problems:
            print(f"node_bootstrap: {problem}", file=sys.stderr)
        if not problems:
            print(f"node_bootstrap: unmounted {mount_point}, detached "
                  f"{' '.join(map(str, disks.images)) or 'nothing'}", flush=True)
        ready.unlink(missing_ok=True)
    return 1 if status or problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="node_boot.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build /scratch on emulated disks, hold them until SIGTERM")
    up.add_argument("--image-dir", type=Path, required=True, help="where the disk images live")
    up.add_argument("--disks", type=int, default=2, help="how many disks (default 2)")
    up.add_argument("--disk-mib", type=int, default=2048, help="size of each, MiB (sparse)")
    up.add_argument("--base-conf", type=Path, required=True,
                    help="the cluster's slurm-scratch settings (INI), without [volume] devices")
    up.add_argument("--conf", type=Path, default=Path("/etc/slurm-scratch/slurm-scratch.conf"),
                    help="the node's slurm-scratch.conf to write")
    up.add_argument("--slurm-conf", default=None, help="[slurm] slurm_conf to set, if any")
    up.add_argument("--slurm-scratch", default="/usr/local/bin/slurm-scratch")
    up.add_argument("--ready", required=True, help="file written once /scratch is set up")
    up.add_argument("--make-device-nodes", action="store_true",
                    help="first make the device nodes a container's /dev lacks (CONTROL_DEVICES)")
    args = parser.parse_args(argv)
    if args.disks < 1 or args.disk_mib < 64:
        parser.error("--disks must be at least 1 and --disk-mib at least 64")
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
