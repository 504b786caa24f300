"""The guest as a node: run the project's CLI, write its config, take volumes down as a
shutdown would, and reset the node between tests. Runs as root inside the test VM only.

Only the standard library: the host imports this module when it collects the guest tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from lab.nvme_disks import DiskRig, sh
from lab.toolconf import write_tool_conf

SOURCE = Path(__file__).resolve().parents[1]  # the project checkout (/src in the guest)
STATE_DIRS = (Path("/var/lib/slurm-scratch"), Path("/run/slurm-scratch"))
RUN_STATE = Path("/run/slurm-scratch")
# LVM's and mdadm's own runtime state (pvs_online, vgs_online, map), lost at a real reboot.
BOOT_CLEARED_RUN_DIRS = (Path("/run/lvm"), Path("/run/mdadm"))
# Kept in /var/lib but tied to one boot: the I/O error check's kernel-log cursor and counts carry
# the boot id, which a simulated reboot keeps (a real one changes it, and the check starts anew).
BOOT_TIED_FILES = (Path("/var/lib/slurm-scratch/io-errors"),)
VM_MARKER = Path("/etc/slurm-scratch-test-vm")
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
VOLUME_SOURCES = ("/dev/mapper/", "/dev/md", "/dev/nvme", "/dev/dm-")


def in_test_vm() -> bool:
    return VM_MARKER.exists()


def write_config(path: Path, volume: dict[str, str] | None = None,
                 sections: dict[str, dict[str, str]] | None = None) -> Path:
    """An INI file for SLURM_SCRATCH_CONF, root-owned and 0644 as the tool requires."""
    return write_tool_conf(path, {"volume": dict(volume or {}), **(sections or {})})


def tool_env(conf: Path) -> dict[str, str]:
    return {"PATH": TOOL_PATH, "HOME": "/root", "LANG": "C.UTF-8",
            "PYTHONPATH": str(SOURCE), "PYTHONDONTWRITEBYTECODE": "1",
            "SLURM_SCRATCH_CONF": str(conf)}


def slurm_scratch_argv(*args: str) -> list[str]:
    return ["/usr/bin/python3", "-m", "slurm_scratch", *args]


def slurm_scratch(conf: Path, *args: str, timeout: float = 300,
                  extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python3 -m slurm_scratch ARGS` from the shared source, as the guest's root."""
    env = dict(tool_env(conf), **(extra_env or {}))
    return subprocess.run(slurm_scratch_argv(*args), env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_slurm_scratch(conf: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(slurm_scratch_argv(*args), env=tool_env(conf),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def status_json(conf: Path) -> dict:
    result = slurm_scratch(conf, "status", "--json")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise AssertionError(f"status --json printed no JSON (exit {result.returncode}): "
                             f"{result.stdout!r} {result.stderr!r}") from error


def describe(result: subprocess.CompletedProcess) -> str:
    return (f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n"
            f"--- stderr ---\n{result.stderr}")


# -- what is on the node ---------------------------------------------------------------------
def mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, fstype) of every mount, from /proc/self/mountinfo."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        point = fields[4].encode().decode("unicode_escape")
        found.append((fields[separator + 2], point, fields[separator + 1]))
    return found


def mount_of(point: str) -> tuple[str, str, str] | None:
    for mount in reversed(mounts()):
        if mount[1] == point:
            return mount
    return None


def lvm_report(command: str, fields: str, *args: str) -> list[dict[str, str]]:
    result = sh(command, "--reportformat", "json", "-o", fields, *args, check=False)
    if result.returncode != 0 and not result.stdout.strip():
        return []
    report = json.loads(result.stdout)["report"][0]
    return next(iter(report.values()), [])


def md_arrays() -> list[str]:
    return sorted(str(Path("/dev") / entry.name) for entry in Path("/sys/block").glob("md*"))


def fs_type(device: str | Path) -> str:
    return sh("blkid", "-p", "-s", "TYPE", "-o", "value", str(device), check=False).stdout.strip()


# -- taking things down ----------------------------------------------------------------------
def release_volumes() -> list[str]:
    """Unmount every volume mount and stop every LV/array, as a clean shutdown does.
    Returns what could not be undone."""
    problems = []
    for source, point, _ in sorted(mounts(), key=lambda m: -len(m[1])):
        if os.path.realpath(source).startswith(VOLUME_SOURCES):
            result = sh("umount", point, check=False)
            if result.returncode != 0:
                result = sh("umount", "-l", point, check=False)
                problems.append(f"umount {point}: busy, detached lazily")
    if Path("/dev/mapper/control").exists():
        for vg in lvm_report("vgs", "vg_name"):
            sh("vgchange", "-an", vg["vg_name"], check=False)
        remaining = sh("dmsetup", "ls", check=False).stdout
        if remaining.strip() and "No devices found" not in remaining:
            sh("dmsetup", "remove_all", "--force", check=False)
    for array in md_arrays():
        result = sh("mdadm", "--stop", array, check=False)
        if result.returncode != 0:
            problems.append(f"mdadm --stop {array}: {result.stderr.strip()}")
    sh("udevadm", "settle", "--timeout=60", check=False)
    return problems


def clear_boot_state() -> None:
    """What a new boot forgets: /run (the tool's, LVM's and mdadm's), and the files of /var/lib that
    belong to the old boot."""
    for directory in (RUN_STATE, *BOOT_CLEARED_RUN_DIRS):
        clear_dir(directory)
    for path in BOOT_TIED_FILES:
        path.unlink(missing_ok=True)


def reboot(rig: DiskRig, autoactivate: bool = True) -> None:
    """What a reboot does to the node: volumes stopped, disks gone and back with their data,
    /run emptied (the tool's state and LVM's and mdadm's), /var/lib kept.

    As on a real boot, udev then assembles md arrays and LVM's udev rule auto-activates a
    complete VG (69-lvm.rules runs `vgchange -aay` when there is no systemd). With
    `autoactivate=False` the VGs are deactivated again: a node whose boot does not activate
    them (event_activation=0, an activation list, or a slow udev)."""
    release_volumes()
    rig.disconnect_all()
    clear_boot_state()
    rig.reconnect_all()
    sh("udevadm", "settle", "--timeout=60")
    if not autoactivate:
        for vg in lvm_report("vgs", "vg_name"):
            sh("vgchange", "-q", "-an", vg["vg_name"], check=False)


def stop_start(rig: DiskRig) -> list:
    """EC2 stop/start: volumes stopped, every instance-store disk new and blank, /run emptied;
    /var/lib (on the root volume) kept."""
    release_volumes()
    for directory in (RUN_STATE, *BOOT_CLEARED_RUN_DIRS):
        clear_dir(directory)
    return rig.replace_all()


def clear_dir(directory: Path) -> None:
    if not directory.exists():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def reset_node(mount_points: tuple[str, ...] = ("/scratch",)) -> list[str]:
    """After a test: nothing mounted, no LV/array, no tool state."""
    problems = release_volumes()
    for directory in STATE_DIRS:
        clear_dir(directory)
    for point in mount_points:
        if os.path.isdir(point) and not os.path.ismount(point):
            shutil.rmtree(point, ignore_errors=True)
    return problems


# -- the scratch volume as the tests see it --------------------------------------------------
def setup_ok(conf: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`setup` that must succeed (the assertion message carries its output)."""
    result = slurm_scratch(conf, "setup", *args, timeout=timeout)
    assert result.returncode == 0, "setup failed: " + describe(result)
    return result


def mount_options(point: str) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == point:
            return set(fields[5].split(","))
    return set()


def fs_uuid(device: str | Path) -> str:
    return sh("blkid", "-p", "-s", "UUID", "-o", "value", str(device), check=False).stdout.strip()


def fs_label(device: str | Path) -> str:
    return sh("blkid", "-p", "-s", "LABEL", "-o", "value", str(device), check=False).stdout.strip()


def lv_layout(vg: str, lv: str) -> dict[str, str]:
    rows = lvm_report("lvs", "lv_name,stripes,stripe_size,lv_attr,devices", "--units", "k", vg)
    segments = [row for row in rows if row["lv_name"] == lv]
    assert len(segments) == 1, f"{vg}/{lv}: expected one segment, lvs says {rows}"
    return segments[0]


def md_detail(device: str | Path) -> dict[str, str]:
    export = sh("mdadm", "--detail", "--export", str(device)).stdout
    values = dict(line.split("=", 1) for line in export.splitlines() if "=" in line)
    detail = sh("mdadm", "--detail", str(device)).stdout
    for line in detail.splitlines():
        key, _, value = line.partition(" : ")
        if key.strip() == "Chunk Size":
            values["CHUNK"] = value.strip()
    return values


def read_state() -> dict | None:
    path = Path("/var/lib/slurm-scratch/volume.json")
    return json.loads(path.read_text()) if path.exists() else None


def descendants(pid: int) -> list[int]:
    """PIDs of every process below `pid` (from /proc; the tool runs each command in its own
    session, so a process group does not reach them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_text = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat_text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class StoppingCommand:
    """While active, the command at `path` stops (sleeps until killed) when its arguments
    contain `match`: just before doing its work (`when="before"`) or just after it
    (`when="after"`), and then touches `self.flag`. Other calls run normally (udev also runs
    mdadm and lvm). The original is put back on exit. Guest only: it changes /usr/sbin."""

    def __init__(self, path: str, when: str, match: str = "") -> None:
        assert when in ("before", "after")
        self.path = Path(path)
        self.real = Path(path + ".real")
        self.when = when
        self.match = match
        self.flag = Path("/run") / f"stopped-{self.path.name}"

    def __enter__(self) -> "StoppingCommand":
        self.flag.unlink(missing_ok=True)
        os.rename(self.path, self.real)
        name = self.path.name
        work = f'exec -a {name} {self.real} "$@"'
        stop = f"touch {self.flag}; exec sleep 3600"
        if self.when == "before":
            matched = stop
        else:
            matched = f'(exec -a {name} {self.real} "$@"); {stop}'
        body = f'case "$*" in\n  *{self.match}*) {matched};;\n  *) {work};;\nesac\n'
        self.path.write_text("#!/bin/bash\n" + body)
        self.path.chmod(0o755)
        return self

    def __exit__(self, *exc: object) -> None:
        os.rename(self.real, self.path)
        self.flag.unlink(missing_ok=True)
