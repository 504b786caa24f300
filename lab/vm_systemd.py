"""Boot the test VM with Debian's systemd as PID 1, as a compute node boots: the host side.

The same image as lab/vm_boot.py, booted with `rdinit=` lab/vm_systemd_init.sh, which
provisions the node (lab/systemd_guest.py) and execs systemd. The node has
- local NVMe disks: QEMU's own NVMe controllers on sparse host files (they keep their data
  across boots; udev names them /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_<serial>);
- persistent state disks (virtio, ext4) for /var/lib/slurm-scratch and slurmctld's state, as a
  node's root volume keeps /var/lib across a reboot;
- the project installed by `make install PREFIX=/usr/local` (run on the host into a folder
  bound at /usr/local in a private mount namespace; shared read-only at /usr/local);
- its unit (etc/systemd/slurm-scratch-setup.service) enabled, and Debian's munge, slurmctld
  and slurmd units: a one-node cluster.
A boot's command runs from a oneshot test unit after multi-user.target; its output, exit code
and journal come back in `<results>/boot-<n>/`. A run boots once per command: the guest
reboots itself between them (same QEMU, same disks) and powers off after the last.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.vm_boot import PROJECT_ROOT, qemu_argv, read_text, run_qemu
from lab.vm_image import SYSTEMD_INIT, VmImage

NVME_MODEL_BY_ID = "nvme-QEMU_NVMe_Ctrl_"  # udev's by-id prefix of QEMU's NVMe controller
# The node's persistent disks, by filesystem label (lab/systemd_guest.py mounts them): the
# tool's /var/lib/slurm-scratch, and slurmctld's state (so that a job outlives a reboot).
STATE_LABELS = ("node-state", "ctld-state")
STATE_DISK_BYTES = 64 << 20
# Time the guest needs around its commands, per boot: kernel, systemd, shutdown.
BOOT_ALLOWANCE_S = 120


@dataclass(frozen=True)
class NvmeDisk:
    backing: Path
    serial: str

    @property
    def by_id(self) -> str:
        return f"/dev/disk/by-id/{NVME_MODEL_BY_ID}{self.serial}"


@dataclass(frozen=True)
class BootResult:
    index: int
    exit_code: int | None  # None: the boot's command never finished
    output: str
    journal: str
    boot_times: str  # multi-user.target's ActiveEnterTimestampMonotonic: boot to multi-user
    directory: Path


@dataclass(frozen=True)
class SystemdRun:
    boots: list[BootResult]
    console: str
    seconds: float
    timed_out: bool
    results_dir: Path

    def describe(self) -> str:
        lines = [f"QEMU ran {self.seconds:.0f} s{' and was killed (timeout)' if self.timed_out else ''}"
                 f"; results in {self.results_dir}"]
        for boot in self.boots:
            lines.append(f"--- boot {boot.index}: exit {boot.exit_code} ---\n{boot.output[-3000:]}")
        lines.append("--- console (tail) ---\n" + "\n".join(self.console.splitlines()[-40:]))
        return "\n".join(lines)


def make_nvme_disks(folder: Path, count: int, size_bytes: int, prefix: str = "SSNODE") -> list[NvmeDisk]:
    """`count` blank sparse disk files with serials `<prefix>01`..."""
    disks = []
    for number in range(1, count + 1):
        disk = NvmeDisk(folder / f"nvme{number}.img", f"{prefix}{number:02d}")
        with disk.backing.open("wb") as backing:
            backing.truncate(size_bytes)
        disks.append(disk)
    return disks


def make_state_disks(folder: Path) -> list[Path]:
    """Small blank ext4 images, one per STATE_LABELS: the node's persistent state."""
    made = []
    for label in STATE_LABELS:
        path = folder / f"{label}.img"
        with path.open("wb") as image:
            image.truncate(STATE_DISK_BYTES)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(path)], check=True,
                       capture_output=True, timeout=60)
        made.append(path)
    return made


def install_tree(folder: Path, repo: Path = PROJECT_ROOT) -> Path:
    """`make install PREFIX=/usr/local` into `folder`: run in a private mount namespace where
    `folder` is bound at /usr/local, so every path the install writes (the virtualenv's, the
    hooks' shebangs) is the one the guest sees."""
    folder.mkdir(parents=True, exist_ok=True)
    script = ('mount --make-rprivate / && mount --bind "$1" /usr/local && '
              'exec make -s -C "$2" install PREFIX=/usr/local')
    made = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", str(folder), str(repo)],
                          capture_output=True, text=True, timeout=600)
    if made.returncode != 0:
        raise RuntimeError(f"make install PREFIX=/usr/local failed:\n{made.stdout}{made.stderr}")
    return folder


def boot(image: VmImage, results_dir: Path, installed: Path, node: dict,
         disks: list[NvmeDisk], state_disks: list[Path], *, memory_mb: int = 2048,
         cpus: int = 2, kernel_arguments: str = "") -> SystemdRun:
    """Boot the node once per entry of `node["boots"]` (shell commands) and collect each boot's
    results. `node` also holds `tool_conf`, `tmp_disk_mb`, `users` and `timeout_s` (per boot)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "node.json").write_text(json.dumps(node, indent=2))
    extra = ["-virtfs", f"local,path={installed},mount_tag=installed,security_model=none,readonly=on"]
    for state_disk in state_disks:
        extra += ["-drive", f"file={state_disk},if=virtio,format=raw"]
    for number, disk in enumerate(disks):
        extra += ["-drive", f"file={disk.backing},if=none,id=nvme{number},format=raw",
                  "-device", f"nvme,serial={disk.serial},drive=nvme{number}"]
    argv = qemu_argv(image, results_dir, PROJECT_ROOT, memory_mb, cpus,
                     kernel_arguments=f"rdinit={SYSTEMD_INIT} {kernel_arguments}", allow_reboot=True, extra=extra)
    count = len(node["boots"])
    console_output, timed_out, seconds = run_qemu(
        argv, count * (node["timeout_s"] + BOOT_ALLOWANCE_S))
    console = read_text(results_dir / "console.log")
    if console_output:
        console += "\n--- qemu ---\n" + console_output
    boots = []
    for index in range(1, count + 1):
        folder = results_dir / f"boot-{index}"
        exit_text = read_text(folder / "exit_code").strip()
        boots.append(BootResult(
            index=index,
            exit_code=int(exit_text) if exit_text.lstrip("-").isdigit() else None,
            output=read_text(folder / "output.log"),
            journal=read_text(folder / "journal.log"),
            boot_times=read_text(folder / "boot-times.log"),
            directory=folder))
    return SystemdRun(boots, console, seconds, timed_out, results_dir)
