"""The project's own docker-compose.yml on a real Docker Engine, as a user runs it (README, "Try
it with Docker"): `docker compose up -d --build`, the README's command as the ordinary user,
the striped volume and Slurm's TmpDisk, the nodes' least privilege, the drain/repair/resume
story, and `docker compose down -v` leaving nothing behind on the host.

The tests of this module run in order on one compose project (the last one takes it down)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from lab.docker_engine import Engine, inspect_container, project_resources
from lab.node_boot import file_identity, loop_backing_identity
from lab.process import LabError, run, wait_for

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SLURM_CONF = REPO / "docker" / "slurm.conf"
NODES = ("n1", "n2")
README_COMMAND = ("srun", "-N2", "sh", "-c", 'echo "$(hostname) $SCRATCH"; df -h "$SCRATCH"')
NODE_CAPABILITIES = {"SYS_ADMIN", "SYS_PTRACE", "SYSLOG"}
DISKS_IN_NODE = "/var/lib/scratch-disks/"  # where the nodes' disk images are (the loop's name)
UP_TIMEOUT = 1500  # a cold build: apt and pip inside `docker build` on a loaded machine


def slurm_conf_value(key: str, line_start: str = "") -> str:
    """A `Key=value` of docker/slurm.conf, on the first line starting with `line_start`."""
    for line in SLURM_CONF.read_text().splitlines():
        if line.startswith(line_start):
            found = re.search(rf"(?:^|\s){key}=(\S+)", line.split("#", 1)[0])
            if found:
                return found.group(1)
    raise AssertionError(f"{SLURM_CONF}: no {key}= on a line starting {line_start!r}")


HEALTH_INTERVAL = int(slurm_conf_value("HealthCheckInterval"))
TMP_DISK = int(slurm_conf_value("TmpDisk", "NodeName=n2"))


def loop_devices(*names: str) -> list[str]:
    """The host's `losetup --all` lines that name one of `names` (other tests on this machine
    attach loop devices of their own meanwhile)."""
    return sorted(line for line in run(["losetup", "--all"]).stdout.splitlines()
                  if any(name in line for name in names))


def attached(identities: set[tuple[int, int, int]]) -> list[str]:
    """The host's loop devices backed by one of the files of `identities` (device, inode)."""
    return [f"/dev/{name}" for name in os.listdir("/sys/block") if name.startswith("loop")
            and loop_backing_identity(f"/dev/{name}") in identities]


def mount_points(mountinfo: str) -> list[str]:
    return sorted(line.split()[4] for line in mountinfo.splitlines())


class Project:
    """A compose project of the project's own file, under a name of this test run's own."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.name = f"ss-docker-test-{os.getpid()}"
        self.down = False
        # the host before `up`: loop devices of compose nodes or of this engine, this namespace's mounts
        self.loops_before = loop_devices(DISKS_IN_NODE, str(engine.work))
        self.mounts_before = mount_points(Path("/proc/self/mountinfo").read_text())

    def compose(self, *argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.engine.compose(COMPOSE_FILE, self.name, argv, check=check, timeout=timeout)

    def exec(self, service: str, *argv: str, user: str | None = None, check: bool = True,
             timeout: float = 180) -> subprocess.CompletedProcess:
        options = ["-u", user, "-w", f"/home/{user}"] if user else []
        return self.compose("exec", "-T", *options, service, *argv, check=check, timeout=timeout)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False).stdout

    def reason(self, node: str) -> str:
        """The node's reason as `sinfo -h -o %E` shows it ("" when there is none)."""
        out = self.exec("slurmctld", "sinfo", "-h", "-N", "-n", node, "-o", "%E").stdout.strip()
        return "" if out in ("", "none") else out

    def node_states(self) -> list[str]:
        out = self.exec("slurmctld", "sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
        return sorted(out.splitlines())

    def container(self, service: str) -> str:
        return self.compose("ps", "--all", "--quiet", service).stdout.strip()


@pytest.fixture(scope="module")
def project(engine: Engine):
    project = Project(engine)
    try:
        up = project.compose("up", "--detach", "--build", check=False, timeout=UP_TIMEOUT)
        assert up.returncode == 0, f"docker compose up failed:\n{up.stderr[-5000:]}"
        try:
            wait_for("n1 and n2 idle", lambda: project.node_states() == ["n1 idle", "n2 idle"],
                     180, 1)
        except LabError as exc:
            raise AssertionError(f"{exc}\n{project.logs()}") from exc
        yield project
    finally:
        if not project.down:
            project.compose("down", "--volumes", "--timeout", "60", check=False)


def test_readme_command_sees_scratch_on_both_nodes_on_the_striped_volume(project):
    readme = (REPO / "README.md").read_text()
    assert f"docker compose exec -u alice -w /home/alice slurmctld {shlex.join(README_COMMAND)}" \
        in readme, "the README's command is not the one run here"
    out = project.exec("slurmctld", *README_COMMAND, user="alice").stdout
    jobs = dict(re.findall(r"^(n[12]) (/scratch/job_\d+)$", out, re.M))
    assert set(jobs) == set(NODES) and len(set(jobs.values())) == 1, out
    assert out.count(" /scratch\n") == 2, out  # df: the job's directory is on the volume

    for node in NODES:
        devices = project.exec(node, "btrfs", "filesystem", "show", "/scratch").stdout
        assert "Total devices 2" in devices and devices.count("path /dev/loop") == 2, devices
        profiles = project.exec(node, "btrfs", "filesystem", "df", "/scratch").stdout
        assert re.search(r"^Data, RAID0:", profiles, re.M), profiles
        status = project.exec(node, "slurm-scratch", "status").stdout
        assert "btrfs (2 disk(s))" in status, status


def test_tmpdisk_is_the_configured_value_and_fits_the_volume(project):
    assert slurm_conf_value("TmpFS") == "/scratch"
    for node in NODES:
        shown = project.exec("slurmctld", "scontrol", "show", "node", node).stdout
        assert f"TmpDisk={TMP_DISK} " in shown, shown
        assert "Low TmpDisk" not in shown and "Reason=" not in shown, shown
        # what slurmd measured on /scratch when it registered: at least the configured value
        measured = re.findall(r"slurmd-\S+: CPUs=.* TmpDisk=(\d+) ",
                              project.compose("logs", "--no-color", node).stdout)
        assert measured and int(measured[-1]) >= TMP_DISK, measured
        blocks = project.exec(node, "stat", "--file-system", "--format", "%b %S", "/scratch")
        count, size = map(int, blocks.stdout.split())
        assert int(measured[-1]) == count * size >> 20  # the volume's size, not /tmp's
    too_much = project.exec("slurmctld", "sbatch", f"--tmp={TMP_DISK + 1}M", "--wrap", "true",
                            user="alice", check=False)
    assert too_much.returncode != 0, too_much.stdout  # never scheduled on a node that lacks it
    assert "Requested node configuration is not available" in too_much.stderr, too_much.stderr
    fits = project.exec("slurmctld", "srun", f"--tmp={TMP_DISK}M", "-N2", "true", user="alice",
                        check=False)
    assert fits.returncode == 0, fits.stderr


def test_nodes_are_not_privileged_and_get_only_what_they_need(project):
    for node in NODES:
        host_config = inspect_container(project.engine, project.container(node))["HostConfig"]
        assert host_config["Privileged"] is False
        assert {cap.removeprefix("CAP_") for cap in host_config["CapAdd"]} == NODE_CAPABILITIES
        assert not host_config["Devices"], host_config["Devices"]  # cgroup rules + mknod instead
        assert "seccomp=unconfined" not in (host_config["SecurityOpt"] or [])

    # SYS_PTRACE: the Epilog reads what another user's process holds; without it root cannot
    probe = ("runuser -u alice -- sleep 120 & sleep 1; pid=$(pgrep -u alice -x sleep); "
             'readlink /proc/$pid/cwd; setpriv --bounding-set -sys_ptrace readlink /proc/$pid/cwd; '
             'echo "without: $?"; kill $pid')
    out = project.exec("n1", "sh", "-c", probe).stdout
    assert out.splitlines() == ["/", "without: 1"], out
    # SYSLOG: reading the kernel's log, which this host restricts (dmesg_restrict=1)
    if Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1":
        read = "dd if=/dev/kmsg bs=8192 count=1 status=none > /dev/null"
        assert project.exec("n1", "sh", "-c", read, check=False).returncode == 0
        without = project.exec("n1", "setpriv", "--bounding-set", "-syslog", "sh", "-c", read,
                               check=False)
        assert without.returncode != 0 and "not permitted" in without.stderr, without


def test_epilog_ends_the_job_users_process_holding_its_directory(project):
    """With the nodes' capabilities and Docker's default seccomp profile, the Epilog finds a
    process of the job's user outside the job (a login on the node) by the cwd it holds in the
    job's directory, kills it through a pidfd and retires the directory."""
    wait = ('echo "$SCRATCH" > ~/held.dir; '
            'for i in $(seq 900); do [ -e ~/held.go ] && exit 0; sleep 0.2; done; exit 1')
    job = project.exec("slurmctld", "sbatch", "--parsable", "-w", "n1", "-o", "/dev/null",
                       "--wrap", wait, user="alice").stdout.strip()
    holding = ("n1", "pgrep", "-u", "alice", "-f", "^sleep 601$")
    try:
        directory = wait_for("the job's directory", lambda: project.exec(
            "slurmctld", "sh", "-c", "cat /home/alice/held.dir 2>/dev/null", check=False)
            .stdout.strip(), 120, 0.5)
        assert directory.endswith(f"job_{job}"), directory
        project.compose("exec", "--detach", "-u", "alice", "n1", "sh", "-c",
                        f'cd "{directory}" && exec sleep 601')
        holder = wait_for("the holder", lambda: project.exec(*holding, check=False).stdout.strip(),
                          30, 0.2)
        assert project.exec("n1", "readlink", f"/proc/{holder}/cwd").stdout.strip() == directory

        project.exec("slurmctld", "touch", "/home/alice/held.go", user="alice")
        wait_for("the job to end", lambda: not project.exec(
            "slurmctld", "squeue", "-h", "-j", job, "-t", "PD,R,CG", "-o", "%A", check=False)
            .stdout.strip(), 120, 0.5)
        wait_for("the holder to be killed",
                 lambda: project.exec(*holding, check=False).returncode == 1, 30, 0.5)
        assert project.exec("n1", "test", "-e", directory, check=False).returncode == 1
        assert project.reason("n1") == ""
    finally:
        project.exec("slurmctld", "scancel", job, check=False)
        project.exec("n1", "pkill", "-u", "alice", "-f", "^sleep 601$", check=False)
        project.exec("slurmctld", "rm", "-f", "/home/alice/held.dir", "/home/alice/held.go")


def test_unmounted_scratch_drains_n2_and_setup_resumes_it(project):
    assert project.reason("n2") == ""
    # lazy: a reaper or health probe may still hold /scratch for a moment
    project.exec("n2", "umount", "--lazy", "/scratch")
    wait_for("n2 drained with a scratch: reason", lambda: project.reason("n2").startswith(
        "scratch:"), 2 * HEALTH_INTERVAL, 1, describe=project.logs)
    assert project.reason("n1") == ""

    project.exec("n2", "slurm-scratch", "setup")
    wait_for("n2 resumed", lambda: project.reason("n2") == "", 2 * HEALTH_INTERVAL, 1,
             describe=project.logs)
    shown = project.exec("slurmctld", "scontrol", "show", "node", "n2").stdout
    assert "Reason=" not in shown and "scratch:" not in shown, shown
    assert "n2" not in project.exec("slurmctld", "sinfo", "-R", "-h", "-o", "%N %E").stdout
    wait_for("n2 idle", lambda: "n2 idle" in project.node_states(), 2 * HEALTH_INTERVAL, 1)


def test_down_leaves_no_container_volume_network_loop_device_or_mount(project):
    images = []
    for node in NODES:  # each node's disk images, as the host sees them (its named volume)
        volume = f"{project.name}_{node}-disks"
        where = project.engine.docker(["volume", "inspect", "--format", "{{.Mountpoint}}", volume])
        images += sorted(Path(where.stdout.strip()).glob("disk*.img"))
    identities = {file_identity(image) for image in images}
    assert len(images) == 4 and len(attached(identities)) == 4, images
    assert len(loop_devices(DISKS_IN_NODE, str(project.engine.work))) == len(project.loops_before) + 4

    down = project.compose("down", "--volumes", "--timeout", "60", check=False, timeout=600)
    project.down = True
    assert down.returncode == 0, down.stderr
    assert project_resources(project.engine, project.name) == \
        {"containers": [], "volumes": [], "networks": []}
    assert attached(identities) == [] and not any(image.exists() for image in images)
    assert loop_devices(DISKS_IN_NODE, str(project.engine.work)) == project.loops_before
    assert mount_points(Path("/proc/self/mountinfo").read_text()) == project.mounts_before
    assert str(project.engine.work) not in Path("/proc/1/mountinfo").read_text()
