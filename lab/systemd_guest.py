"""The test VM as a node booted by systemd: the guest side of lab/vm_systemd.py. Runs as root
inside the VM only.

`provision` runs before systemd, from lab/vm_systemd_init.sh, on every boot (the root
filesystem is the initramfs, fresh at each boot): it does what an admin's configuration
management does on a compute node, from `/results/node.json` (written by the host):
/etc/slurm/slurm.conf with `TmpFS=/scratch` and a `TmpDisk=` that fits the volume, the
tool's config, the project's unit from /src/etc/systemd installed and enabled, the node's
persistent state disks in /etc/fstab (/var/lib/slurm-scratch; slurmctld's state, so that a
pending job outlives a reboot), the job users, and the test unit. Debian's munge, slurmctld
and slurmd units are enabled by their packages.

`run` is the test unit (vm-test.service, after multi-user.target): it runs this boot's command,
writes its output, exit code and the boot's journal to `/results/boot-<n>/`, then reboots the
VM when node.json names another boot, else powers it off.

Standard library only (the guest's bare python3).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

if not __package__:  # run as a file by the guest's init or the test unit
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lab.slurmconf import make_controller_dir, slurm_conf_text  # noqa: E402
from lab.toolconf import write_tool_conf  # noqa: E402

RESULTS = Path("/results")
NODE_FILE = RESULTS / "node.json"
BOOT_INDEX = Path("/etc/vm-boot-index")  # this boot's number (the initramfs is new each boot)
NODE_NAME = "vm"  # vm_image.py writes /etc/hostname
ADDRESS = "127.0.0.1"
# glibc's getaddrinfo(AI_ADDRCONFIG), which slurmctld uses for its listening socket, answers
# nothing while 127.0.0.1 is the only IPv4 address.
EXTRA_LOOPBACK = "127.0.0.2/32"
SLURM_CONF = Path("/etc/slurm/slurm.conf")  # where Debian's units look (ConditionPathExists)
SLURM_DIR = Path("/var/lib/slurm-vm")  # slurmctld's state, slurmd's spool, their logs
SLURMD_LOG = SLURM_DIR / "slurmd" / "slurmd.log"
TOOL_CONF = Path("/etc/slurm-scratch/slurm-scratch.conf")
HOOKS = Path("/usr/local/libexec/slurm-scratch")  # the installed tree (make install PREFIX=/usr/local)
UNIT_SOURCE = Path("/src/etc/systemd/slurm-scratch-setup.service")
UNIT_DIR = Path("/etc/systemd/system")
SETUP_UNIT = "slurm-scratch-setup.service"
TEST_UNIT = "vm-test.service"
# The persistent state disks (made by lab/vm_systemd.py), by filesystem label: where they are
# mounted, and who must own that directory (systemd-tmpfiles sets it once it is mounted).
STATE_MOUNTS = (("node-state", Path("/var/lib/slurm-scratch"), "root"),
                ("ctld-state", SLURM_DIR / "ctld" / "state", "slurm"))
TMPFILES = Path("/etc/tmpfiles.d/vm-state.conf")
HOMES = Path("/home")
# Units that need a terminal or hardware this VM does not have: masked.
MASKED = ("getty@.service", "serial-getty@.service", "systemd-timesyncd.service")
GUEST_PATH = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

TEST_UNIT_TEXT = f"""\
[Unit]
Description=slurm-scratch VM test: run this boot's command, then reboot or power off
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 -I {Path(__file__).resolve()} run
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""


def node_description() -> dict:
    return json.loads(NODE_FILE.read_text())


def boot_dir(index: int) -> Path:
    return RESULTS / f"boot-{index}"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


# -- before systemd ------------------------------------------------------------------------
def provision() -> None:
    node = node_description()
    index = len(list(RESULTS.glob("boot-*"))) + 1
    boot_dir(index).mkdir()
    BOOT_INDEX.write_text(f"{index}\n")
    Path("/etc/hosts").write_text(f"127.0.0.1 localhost\n{ADDRESS} {NODE_NAME}\n")
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "addr", "add", EXTRA_LOOPBACK, "dev", "lo")
    write_slurm_conf(node["tmp_disk_mb"])
    write_tool_conf(TOOL_CONF, {section: dict(keys) for section, keys in node["tool_conf"].items()})
    for name, uid in node["users"]:
        add_user(name, uid)
    with open("/etc/fstab", "a") as fstab:
        for label, directory, _ in STATE_MOUNTS:
            directory.mkdir(parents=True, exist_ok=True)
            fstab.write(f"LABEL={label} {directory} ext4 defaults 0 0\n")
    TMPFILES.write_text("".join(f"d {directory} 0755 {owner} {owner} -\n"
                                for _, directory, owner in STATE_MOUNTS))
    for unit in MASKED:
        (UNIT_DIR / unit).symlink_to("/dev/null")
    # As the README tells an admin: copy the unit, enable it (systemctl works offline here).
    (UNIT_DIR / SETUP_UNIT).write_bytes(UNIT_SOURCE.read_bytes())
    (UNIT_DIR / TEST_UNIT).write_text(TEST_UNIT_TEXT)
    sh("systemctl", "--quiet", "enable", SETUP_UNIT, TEST_UNIT)


def write_slurm_conf(tmp_disk_mb: int) -> None:
    ctld, slurmd = SLURM_DIR / "ctld", SLURM_DIR / "slurmd"
    for folder in (ctld, slurmd, slurmd / "spool"):
        folder.mkdir(mode=0o755, parents=True)
    make_controller_dir(ctld)
    text = slurm_conf_text(
        cluster_name="systemd", controller=(NODE_NAME, ADDRESS), nodes=[(NODE_NAME, ADDRESS)],
        controller_dir=ctld, node_dir=str(slurmd), hooks=HOOKS, health_interval=5,
        tmp_fs="/scratch", tmp_disk_mib=tmp_disk_mb)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(text)
    SLURM_CONF.chmod(0o644)


def add_user(name: str, uid: int) -> None:
    home = HOMES / name
    with open("/etc/group", "a") as group:
        group.write(f"{name}:x:{uid}:\n")
    with open("/etc/passwd", "a") as passwd:
        passwd.write(f"{name}:x:{uid}:{uid}::{home}:/bin/sh\n")
    home.mkdir(mode=0o755, parents=True)
    os.chown(home, uid, uid)


# -- the test unit ---------------------------------------------------------------------------
def run() -> None:
    node = node_description()
    index = int(BOOT_INDEX.read_text())
    results = boot_dir(index)
    boots = node["boots"]
    status = "no command for this boot"
    if index <= len(boots):
        env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "VM_BOOT": str(index), "VM_RESULTS": str(results)}
        with open(results / "output.log", "wb") as output:
            done = subprocess.run(["timeout", "-k", "10", str(node["timeout_s"]), "sh", "-c",
                                   boots[index - 1]], stdin=subprocess.DEVNULL, stdout=output,
                                  stderr=subprocess.STDOUT, cwd=results, env=env)
        status = str(done.returncode)
    for name, argv in (("journal.log", ["journalctl", "-b", "-o", "short-monotonic", "--no-pager"]),
                       ("boot-times.log", ["systemctl", "show", "-p",
                                           "ActiveEnterTimestampMonotonic", "multi-user.target"]),
                       ("dmesg.log", ["dmesg"])):
        with open(results / name, "wb") as out:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    (results / "exit_code.tmp").write_text(status + "\n")
    os.replace(results / "exit_code.tmp", results / "exit_code")
    os.sync()
    sh("systemctl", "--no-block", "reboot" if index < len(boots) else "poweroff")


if __name__ == "__main__":
    {"provision": provision, "run": run}[sys.argv[1]]()
