"""NVMe disks with a chosen identity, inside the test VM (runs as root in the guest).

The kernel's NVMe target (nvmet, configured through configfs) exports sparse backing files
over TCP on 127.0.0.1, and the kernel's NVMe/TCP host driver connects them: each file becomes
a real /dev/nvmeXnY whose controller reports the model and serial we chose, so udev makes
/dev/disk/by-id/nvme-<model>_<serial> exactly as on EC2 (model "Amazon EC2 NVMe Instance
Storage", serial "AWS" + 17 hex digits). Differences from a real cloud disk: transport is
tcp and the sysfs path is under /sys/devices/virtual/nvme-fabrics/.

Only the standard library: the host imports this module when it collects the guest tests.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from lab import process

NVMET = Path("/sys/kernel/config/nvmet")
SYS_NVME = Path("/sys/class/nvme")
PORT_ID = "1"
ADDRESS = "127.0.0.1"
SERVICE = "4420"
NQN_PREFIX = "nqn.2026-11.test.slurm-scratch:"

EC2_INSTANCE_STORE = "Amazon EC2 NVMe Instance Storage"
EBS = "Amazon Elastic Block Store"
AZURE_DIRECT = "Microsoft NVMe Direct Disk"
AZURE_DIRECT_V2 = "Microsoft NVMe Direct Disk v2"
GCP_LOCAL_SSD = "nvme_card"
PLAIN = "Linux"  # nvmet's own default model: an on-prem disk with no cloud identity

MAX_SERIAL = 20  # nvmet rejects a longer attr_serial
WAIT_S = 30


def ec2_serial() -> str:
    return "AWS" + secrets.token_hex(9)[:17].upper()


def ebs_serial() -> str:
    return "vol" + secrets.token_hex(9)[:17]


def serial_for(model: str) -> str:
    if model == EBS:
        return ebs_serial()
    if model == EC2_INSTANCE_STORE:
        return ec2_serial()
    return secrets.token_hex(10)


def by_id_name(model: str, serial: str) -> str:
    """udev's name for it (60-persistent-storage.rules: spaces become underscores)."""
    return "nvme-" + "_".join(model.split()) + "_" + serial


def sh(*argv: str, check: bool = True, timeout: float = 120,
       input_text: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            input=input_text)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def settle() -> None:
    sh("udevadm", "settle", "--timeout=60")


def wait_for(what: str, condition, timeout_s: float = WAIT_S):
    """`condition()` until it is truthy (returned); TimeoutError after `timeout_s`."""
    return process.wait_for(what, condition, timeout_s, 0.05, error=TimeoutError)


class Disk:
    """One exported backing file and, while connected, the NVMe block device it appears as."""

    def __init__(self, name: str, backing: Path, model: str, serial: str, size: int) -> None:
        if len(serial) > MAX_SERIAL:
            raise ValueError(f"NVMe serial {serial!r} is longer than {MAX_SERIAL} characters")
        self.name = name
        self.nqn = NQN_PREFIX + name
        self.backing = backing
        self.model = model
        self.serial = serial
        self.size = size
        self.connected = False

    def __repr__(self) -> str:
        state = self.device() if self.connected else "disconnected"
        return f"<Disk {self.name} {self.model!r} {self.serial} {state}>"

    @property
    def subsystem(self) -> Path:
        return NVMET / "subsystems" / self.nqn

    @property
    def by_id(self) -> Path:
        return Path("/dev/disk/by-id") / by_id_name(self.model, self.serial)

    def controller(self) -> Path | None:
        for controller in sorted(SYS_NVME.glob("nvme*")):
            try:
                if (controller / "subsysnqn").read_text().strip() == self.nqn:
                    return controller
            except OSError:
                continue
        return None

    def device(self) -> Path:
        """/dev/nvmeXnY of this disk; it must be connected."""
        controller = self.controller()
        if controller is None:
            raise LookupError(f"{self.name} ({self.serial}) is not connected")
        namespaces = sorted(controller.glob(f"{controller.name}n*"))
        if not namespaces:
            raise LookupError(f"{self.name}: controller {controller.name} has no namespace")
        return Path("/dev") / namespaces[0].name

    # -- the target side ------------------------------------------------------------------
    def export(self) -> None:
        """Create the backing file (if missing) and the nvmet subsystem serving it."""
        if not self.backing.exists():
            with self.backing.open("wb") as backing:
                backing.truncate(self.size)
        self.subsystem.mkdir()
        (self.subsystem / "attr_allow_any_host").write_text("1")
        (self.subsystem / "attr_model").write_text(self.model)
        (self.subsystem / "attr_serial").write_text(self.serial)
        namespace = self.subsystem / "namespaces/1"
        namespace.mkdir()
        (namespace / "device_path").write_text(str(self.backing))
        (namespace / "buffered_io").write_text("1")  # a file on tmpfs: no O_DIRECT
        (namespace / "enable").write_text("1")
        (port_dir() / "subsystems" / self.nqn).symlink_to(self.subsystem)

    def unexport(self) -> None:
        link = port_dir() / "subsystems" / self.nqn
        if link.is_symlink():
            link.unlink()
        namespace = self.subsystem / "namespaces/1"
        if namespace.exists():
            (namespace / "enable").write_text("0")
            namespace.rmdir()
        if self.subsystem.exists():
            self.subsystem.rmdir()

    # -- the host side ---------------------------------------------------------------------
    def connect(self) -> Path:
        """Attach the disk; returns its /dev/nvmeXnY once udev has made its links."""
        sh("nvme", "connect", "-t", "tcp", "-a", ADDRESS, "-s", SERVICE, "-n", self.nqn)
        self.connected = True
        wait_for(f"{self.name}'s namespace", lambda: self._device_or_none())
        settle()
        wait_for(str(self.by_id), self.by_id.exists)
        return self.device()

    def disconnect(self) -> None:
        """Detach the disk as if it had failed or been pulled; its backing file stays."""
        if not self.connected:
            return
        sh("nvme", "disconnect", "-n", self.nqn)
        self.connected = False
        wait_for(f"{self.name} to go away", lambda: self.controller() is None)

    def _device_or_none(self) -> Path | None:
        try:
            device = self.device()
        except LookupError:
            return None
        return device if device.exists() else None


def port_dir() -> Path:
    """The one nvmet TCP port on 127.0.0.1:4420, created on first use."""
    port = NVMET / "ports" / PORT_ID
    if not port.exists():
        port.mkdir()
        (port / "addr_trtype").write_text("tcp")
        (port / "addr_adrfam").write_text("ipv4")
        (port / "addr_traddr").write_text(ADDRESS)
        (port / "addr_trsvcid").write_text(SERVICE)
    return port


class DiskRig:
    """The disks of one test. Everything it made is undone by `destroy()`."""

    def __init__(self, backing_dir: Path) -> None:
        self.backing_dir = backing_dir
        self.disks: list[Disk] = []
        self._count = 0

    def create(self, count: int, model: str = EC2_INSTANCE_STORE, size: str | int = "1G",
               serials: list[str] | None = None, connect: bool = True) -> list[Disk]:
        """`count` new blank disks of `model`; connected unless told otherwise."""
        nbytes = parse_size(size)
        made = []
        for index in range(count):
            self._count += 1
            name = f"d{self._count}"
            serial = serials[index] if serials else serial_for(model)
            disk = Disk(name, self.backing_dir / f"{name}.img", model, serial, nbytes)
            disk.export()
            self.disks.append(disk)
            made.append(disk)
        if connect:
            for disk in made:
                disk.connect()
        return made

    def connected(self) -> list[Disk]:
        return [disk for disk in self.disks if disk.connected]

    def disconnect_all(self) -> None:
        for disk in self.disks:
            disk.disconnect()

    def reconnect_all(self) -> None:
        """The same backing files come back (data kept), as after a reboot."""
        for disk in self.disks:
            if not disk.connected:
                disk.connect()

    def replace_all(self, model: str | None = None) -> list[Disk]:
        """Every disk is swapped for a new blank one with a new serial (EC2 stop/start)."""
        old = list(self.disks)
        for disk in old:
            disk.disconnect()
            disk.unexport()
            disk.backing.unlink(missing_ok=True)
            self.disks.remove(disk)
        groups: dict[tuple[str, int], int] = {}
        for disk in old:
            key = (model or disk.model, disk.size)
            groups[key] = groups.get(key, 0) + 1
        fresh = []
        for (disk_model, size), count in groups.items():
            fresh += self.create(count, model=disk_model, size=size)
        return fresh

    def destroy(self) -> list[str]:
        """Disconnect and remove every disk; returns what could not be undone."""
        problems = []
        for disk in self.disks:
            for step in (disk.disconnect, disk.unexport):
                try:
                    step()
                except Exception as error:  # keep going: undo as much as possible
                    problems.append(f"{disk.name}: {step.__name__}: {error}")
            disk.backing.unlink(missing_ok=True)
        self.disks.clear()
        return problems


def parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    size = size.strip().upper()
    if size[-1] in units:
        return int(float(size[:-1]) * units[size[-1]])
    return int(size)


def mount_backing_tmpfs(path: Path, size: str = "1200m") -> None:
    path.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(path):
        sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))


def tool_exists(name: str) -> bool:
    return shutil.which(name) is not None
