"""Boot the test VM under QEMU (TCG), run one shell command in it, and collect the result.

The guest's /init (vm_init.sh) mounts the project source read-only at /src and a results
folder at /results (both 9p), starts udevd, runs `/results/command.sh` with a time limit,
writes output.log, exit_code and dmesg.log to /results, and powers off. The host kills QEMU
(by the PID it started) when the hard timeout passes, whatever happens.

`python3 lab/vm_boot.py 'COMMAND'` runs COMMAND in a fresh VM and prints its output.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a file: make the lab importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lab.vm_image import VmImage, ensure_image  # noqa: E402

QEMU = "qemu-system-x86_64"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
KERNEL_COMMAND_LINE = (
    "console=ttyS0 quiet panic=-1 mitigations=off"
    # Bookworm's 6.1 can BUG() in nvmet_tcp_io_work on O_DIRECT buffers in huge pages
    # ("usercopy: Kernel memory exposure attempt"); all I/O then hangs.
    " hardened_usercopy=off"
    # Without this pyudev also lists the hidden nvmeXcYn1 path devices.
    " nvme_core.multipath=N"
)
# Time the guest needs around the command: boot, udev, dmesg, power-off.
BOOT_ALLOWANCE_S = 90


@dataclass(frozen=True)
class VmResult:
    exit_code: int | None  # None: the command never finished (timeout, crash, no boot)
    output: str
    console: str
    results_dir: Path
    seconds: float
    timed_out: bool

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-lines:])

    def describe_failure(self) -> str:
        if self.timed_out:
            why = f"the VM did not power off within its time limit ({self.seconds:.0f} s)"
        elif self.exit_code is None:
            why = "the VM stopped without recording the command's exit code"
        else:
            why = f"the guest command exited {self.exit_code}"
        return (f"{why}; results in {self.results_dir}\n--- output (tail) ---\n"
                f"{self.output[-4000:]}\n--- console (tail) ---\n{self.console_tail()}")


def qemu_unavailable_reason() -> str | None:
    """Why VMs cannot run here, or None when QEMU with TCG is usable."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86)"
    accels = subprocess.run([QEMU, "-accel", "help"], capture_output=True, text=True)
    if "tcg" not in accels.stdout.split():
        return f"{QEMU} has no TCG accelerator: {accels.stdout.strip()!r}"
    return None


def qemu_argv(image: VmImage, results_dir: Path, source_dir: Path,
              memory_mb: int, cpus: int, *, kernel_arguments: str = "",
              allow_reboot: bool = False, extra: list[str] | None = None) -> list[str]:
    """QEMU's command line; `allow_reboot`: a guest reboot restarts the machine (same kernel,
    initrd and disks) instead of ending QEMU; `extra`: more options (disks, shares)."""
    return [
        QEMU, "-accel", "tcg,thread=multi", "-m", str(memory_mb), "-smp", str(cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
        *([] if allow_reboot else ["-no-reboot"]),
        "-serial", f"file:{results_dir / 'console.log'}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"{KERNEL_COMMAND_LINE} {kernel_arguments}".strip(),
        "-virtfs", f"local,path={source_dir},mount_tag=src,security_model=none,readonly=on",
        "-virtfs", f"local,path={results_dir},mount_tag=results,security_model=none",
        *(extra or []),
    ]


def run_qemu(argv: list[str], timeout_s: float) -> tuple[str, bool, float]:
    """Run QEMU until it exits or `timeout_s` passed (then it is killed by its PID).
    Returns (its own output, timed out, seconds)."""
    started = time.monotonic()
    timed_out = False
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        output, _ = qemu.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        output = b""
    finally:
        if qemu.poll() is None:
            os.kill(qemu.pid, signal.SIGKILL)
            qemu.wait()
    return output.decode(errors="replace"), timed_out, time.monotonic() - started


def run_in_vm(command: str, *, timeout_s: float = 600, results_dir: Path | None = None,
              source_dir: Path = PROJECT_ROOT, memory_mb: int = 2048, cpus: int = 2,
              image: VmImage | None = None) -> VmResult:
    """Boot a fresh VM, run `command` (sh) in /results, return what happened.

    `timeout_s` bounds the command inside the guest; QEMU itself is killed
    BOOT_ALLOWANCE_S later if the guest has not powered off by then.
    """
    image = image or ensure_image()
    if results_dir is None:
        results_dir = Path(tempfile.mkdtemp(prefix="slurm-scratch-vm-"))
    results_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("exit_code", "output.log", "dmesg.log", "console.log"):
        (results_dir / stale).unlink(missing_ok=True)
    (results_dir / "command.sh").write_text(command + "\n")
    (results_dir / "timeout").write_text(f"{int(timeout_s)}\n")

    qemu_output, timed_out, seconds = run_qemu(
        qemu_argv(image, results_dir, source_dir, memory_mb, cpus), timeout_s + BOOT_ALLOWANCE_S)

    console = read_text(results_dir / "console.log")
    if qemu_output:
        console += "\n--- qemu ---\n" + qemu_output
    exit_text = read_text(results_dir / "exit_code").strip()
    return VmResult(
        exit_code=int(exit_text) if exit_text.lstrip("-").isdigit() else None,
        output=read_text(results_dir / "output.log"),
        console=console,
        results_dir=results_dir,
        seconds=seconds,
        timed_out=timed_out,
    )


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: vm_boot.py 'COMMAND'")
    result = run_in_vm(sys.argv[1])
    print(result.output, end="")
    print(f"[vm] exit {result.exit_code} after {result.seconds:.1f} s; results in "
          f"{result.results_dir}", file=sys.stderr)
    if result.exit_code != 0:
        print(result.console_tail(), file=sys.stderr)
    sys.exit(1 if result.exit_code is None else result.exit_code)
