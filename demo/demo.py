#!/usr/bin/python3
"""`make demo`: the whole slurm-scratch story, narrated with timings, on one machine.

A real Slurm cluster (munge, slurmctld, two slurmd, each node in its own network, UTS, PID and
mount namespaces: lab/cluster.py) whose nodes each get two emulated local NVMe disks
(sparse files on loop devices). Each node's boot-time `slurm-scratch setup` finds the disks and
stripes them into one volume at /scratch. This kernel has no device-mapper or md, so the demo
stripes with the `btrfs` backend (btrfs raid0 data); LVM and mdadm striping, on disks that carry
the real EC2 instance-store identity, is exercised by the VM tests (tests/vm/).

Everything runs in a private mount namespace and is undone at the end, even on failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab.cluster import Cluster, wait_for  # noqa: E402
from lab.sandbox import Sandbox  # noqa: E402

HEALTH_INTERVAL = 5
SETTINGS = {
    "volume": {"mount_point": "/scratch", "backend": "btrfs", "filesystem": "btrfs"},
    "jobs": {"export": "SCRATCH,TMPDIR", "keep_failed": "1h", "quota": "request", "quota_default": "50%"},
    "health": {"probe_timeout": "3", "check_timeout": "10"},
}
JOB_SCRIPT = """#!/bin/sh
echo "running on $(hostname) as $(id -un); SCRATCH=$SCRATCH TMPDIR=$TMPDIR"
ls -ld "$SCRATCH"
dd if=/dev/zero of="$SCRATCH/data" bs=1M count=256 status=none
mkdir "$SCRATCH/many" && (cd "$SCRATCH/many" && seq 1 20000 | xargs touch)
echo "wrote $(du -sh "$SCRATCH" | cut -f1) and $(ls "$SCRATCH/many" | wc -l) files into \\$SCRATCH"
"""


class Narrator:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.number = 0

    def step(self, title: str) -> "Step":
        self.number += 1
        return Step(self, f"{self.number}. {title}")

    def say(self, text: str = "") -> None:
        for line in text.rstrip("\n").splitlines() or [""]:
            print(f"      {line}", flush=True)


class Step:
    def __init__(self, narrator: Narrator, title: str) -> None:
        self.narrator, self.title = narrator, title

    def __enter__(self) -> "Step":
        elapsed = time.monotonic() - self.narrator.start
        print(f"\n[{elapsed:6.1f} s] {self.title}", flush=True)
        self.began = time.monotonic()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        took = time.monotonic() - self.began
        print(f"      {'done' if kind is None else 'FAILED'} in {took:.1f} s", flush=True)


class SyslogCollector:
    """The tool logs to syslog. This machine has no syslog daemon: while the demo runs, receive what
    is sent to /dev/log (only when /dev/log does not exist; removed at the end). Each line is
    tagged with the demo node it came from, by the sender's mount namespace (the kernel passes the
    sender's pid with every datagram; "?" when the sender has exited already); lines from anything
    else on the machine are dropped."""

    def __init__(self, path: Path, node_of_mount_ns) -> None:
        self.path = path
        self.node_of_mount_ns = node_of_mount_ns
        self.socket: socket.socket | None = None

    def start(self) -> str:
        if os.path.exists("/dev/log"):
            return "the tool's log lines go to this machine's syslog (identities slurm-scratch-*)"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.socket.bind("/dev/log")
        os.chmod("/dev/log", 0o666)
        threading.Thread(target=self._serve, daemon=True).start()
        return f"the tool's log lines: {self.path}"

    def _serve(self) -> None:
        credentials = struct.Struct("iII")  # struct ucred: pid, uid, gid
        with open(self.path, "a", buffering=1) as out:
            while True:
                try:
                    data, ancillary, _, _ = self.socket.recvmsg(65536, socket.CMSG_SPACE(credentials.size))
                except OSError:
                    return
                node = None
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                        pid = credentials.unpack(payload[: credentials.size])[0]
                        try:
                            node = self.node_of_mount_ns(os.readlink(f"/proc/{pid}/ns/mnt"))
                        except OSError:
                            node = "?"  # it logged its last line and exited (an Epilog does)
                if node is not None:
                    text = data.decode(errors="replace").split(">", 1)[-1]  # drop <priority>
                    out.write(f"{node}: {text[16:]}\n")  # and the timestamp

    def lines(self, node: str, needle: str = "") -> list[str]:
        if not self.path.exists():
            return []
        return [line.split(": ", 1)[1] for line in self.path.read_text().splitlines()
                if line.startswith((f"{node}: ", "?: ")) and needle in line]

    def stop(self) -> None:
        if self.socket is not None:
            self.socket.close()
            os.unlink("/dev/log")


def install(narrator: Narrator, into: Path) -> None:
    with narrator.step(f"Install slurm-scratch: make install PREFIX={into}"):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1g", "demo-prefix", str(into)], check=True)
        made = subprocess.run(["make", "-s", "install", f"PREFIX={into}"], cwd=REPO, capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"make install failed:\n{made.stdout}{made.stderr}")
        narrator.say(f"{into}/bin/slurm-scratch and {into}/libexec/slurm-scratch/{{prolog,epilog,task_prolog,healthcheck}}")


def tool(cluster: Cluster, node: str, *argv: str) -> str:
    result = cluster.run_on_node(node, [str(cluster.prefix / "bin" / "slurm-scratch"), *argv], check=False, timeout=120)
    return result.stdout + result.stderr


def story(narrator: Narrator, cluster: Cluster, syslog: SyslogCollector) -> None:
    with narrator.step("Boot a 2-node Slurm cluster; each node has 2 emulated NVMe disks, and its boot-time "
                       "`slurm-scratch setup` builds /scratch before slurmd starts"):
        cluster.start()
        narrator.say(cluster.client(["sinfo", "-N", "-o", "%N %t %E"], timeout=30).stdout)

    with narrator.step("Discovery and the striped volume on n1 (`slurm-scratch status`)"):
        narrator.say(tool(cluster, "n1", "status"))
        narrator.say(cluster.run_on_node("n1", ["btrfs", "filesystem", "show", "/scratch"], check=False).stdout)
        for line in syslog.lines("n1", "setup: "):
            narrator.say(f"log: {line}")

    with narrator.step("An ordinary user (sstest1) submits a job that writes 256 MiB and 20,000 files to $SCRATCH"):
        job = cluster.submit(JOB_SCRIPT, "sstest1", "--nodelist=n1")
        state = cluster.wait_job(job, timeout=120)
        narrator.say(f"job {job}: {state}")
        narrator.say(cluster.job_output(job))

    with narrator.step("The Epilog retired the job's directory with one rename; the reaper deleted it in the background"):
        wait_for("the job's directory to leave /scratch",
                 lambda: not cluster.node_path("n1", f"/scratch/job_{job}").exists(), 30)
        wait_for("the trash to be empty",
                 lambda: not any(cluster.node_path("n1", "/scratch/.slurm-scratch-trash").iterdir()), 60)
        narrator.say(f"/scratch/job_{job} is gone and the trash is empty")
        for line in syslog.lines("n1", f"job={job} ") + syslog.lines("n1", f"trash/job_{job}."):
            narrator.say(f"log: {line}")

    with narrator.step("Break n2's volume (unmount /scratch under it) and wait for the health check to drain n2"):
        cluster.run_on_node("n2", ["umount", "--lazy", "/scratch"])
        wait_for("n2 to be drained", lambda: cluster.node_drained("n2"), 4 * HEALTH_INTERVAL + 30)
        narrator.say(cluster.client(["sinfo", "-N", "-o", "%N %t %E"], timeout=30).stdout)
        for line in syslog.lines("n2", "healthcheck: "):
            narrator.say(f"log: {line}")
        probe = cluster.submit("#!/bin/sh\necho \"ran on $(hostname) in $SCRATCH\"\n", "sstest2")
        cluster.wait_job(probe, timeout=120)
        narrator.say(f"a job submitted meanwhile runs on the healthy node: {cluster.job_output(probe, 'sstest2').strip()}")

    with narrator.step("Repair n2 (`slurm-scratch setup`: the volume is found intact and mounted again); "
                       "the next health check resumes the node it drained"):
        narrator.say(tool(cluster, "n2", "setup"))
        wait_for("n2 to be resumed", lambda: not cluster.node_drained("n2"), 4 * HEALTH_INTERVAL + 30)
        narrator.say(cluster.client(["sinfo", "-N", "-o", "%N %t %E"], timeout=30).stdout)
        for line in syslog.lines("n2", "resumed"):
            narrator.say(f"log: {line}")

    with narrator.step("A job that fails (exit 3) keeps its directory ([jobs] keep_failed = 1h): its user reads it "
                       "from the next job, another user cannot"):
        failing = cluster.submit('#!/bin/sh\necho "step 7 diverged" > "$SCRATCH/debug.log"\nexit 3\n', "sstest1", "--nodelist=n1")
        narrator.say(f"job {failing}: {cluster.wait_job(failing, timeout=120)}")
        kept = f"/scratch/.kept/sstest1/job_{failing}"
        wait_for(f"{kept} on n1", lambda: cluster.node_path("n1", kept).is_dir(), 30)
        for user in ("sstest1", "sstest2"):
            reader = cluster.submit(f"#!/bin/sh\ncat {kept}/debug.log 2>&1\nexit 0\n", user, "--nodelist=n1")
            cluster.wait_job(reader, timeout=120)
            narrator.say(f"{user}: cat {kept}/debug.log -> {cluster.job_output(reader, user).strip()}")
        status = tool(cluster, "n1", "status")
        narrator.say("kept:" + status.split("kept:", 1)[1] if "kept:" in status else status)
        for line in syslog.lines("n1", f"job={failing} epilog"):
            narrator.say(f"log: {line}")


QUOTA_JOB = """#!/bin/sh
dd if=/dev/zero of="$SCRATCH/data" bs=1M count=150 conv=fsync 2>&1 | grep -v records
echo "$(hostname): wrote $(($(stat -c %s "$SCRATCH/data") / 1048576)) MiB into $SCRATCH"
"""


def quota_scene(narrator: Narrator, cluster: Cluster, syslog: SyslogCollector) -> None:
    with narrator.step("Per-job quotas ([jobs] quota = request): on n1 a job asks --tmp=100M and writes 150 MiB, "
                       "while a neighbour asks --tmp=300M and writes the same"):
        greedy = cluster.submit(QUOTA_JOB, "sstest1", "--nodelist=n1", "--tmp=100M")
        neighbour = cluster.submit(QUOTA_JOB, "sstest2", "--nodelist=n1", "--tmp=300M")
        for job, user in ((greedy, "sstest1"), (neighbour, "sstest2")):
            narrator.say(f"job {job} ({user}): {cluster.wait_job(job, timeout=120)}")
            narrator.say(cluster.job_output(job, user))
        narrator.say(f"n1 is {cluster.node_state('n1')}: a job past its quota fails its own writes, not the node")
        for line in syslog.lines("n1", f"job={greedy} prolog") + syslog.lines("n1", f"job={neighbour} prolog"):
            narrator.say(f"log: {line}")


def keep_logs(cluster: Cluster, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if cluster.workdir is None:
        return
    for log in cluster.workdir.rglob("*.log"):
        target = into / "-".join(log.relative_to(cluster.workdir).parts)
        shutil.copyfile(log, target)


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (loop devices, namespaces, Slurm daemons)", file=sys.stderr)
        return 1
    narrator = Narrator()
    logs = Path(tempfile.mkdtemp(prefix="slurm-scratch-demo-", dir="/var/tmp"))
    print("slurm-scratch demo: striped local scratch, per-job directories and health-driven drain on a real Slurm cluster")
    sandbox = Sandbox().open()
    prefix = Path(tempfile.mkdtemp(prefix="slurm-scratch-demo-prefix-", dir="/var/tmp"))
    cluster = Cluster(prefix, SETTINGS, nodes=("n1", "n2"), health_interval=HEALTH_INTERVAL, disks_per_node=2)
    syslog = SyslogCollector(logs / "slurm-scratch.log",
                             lambda ns: next((name for name, node in cluster.nodes.items() if node.mnt_ns == ns), None))
    print(f"      {syslog.start()}")
    failed = False
    try:
        install(narrator, prefix)
        story(narrator, cluster, syslog)
        quota_scene(narrator, cluster, syslog)
    except Exception as exc:  # the teardown below must run; the message says what failed
        failed = True
        print(f"\nthe demo failed: {exc}", file=sys.stderr)
    finally:
        with narrator.step("Tear down: jobs, daemons, mounts, loop devices, namespaces"):
            keep_logs(cluster, logs)
            problems = cluster.stop()
            subprocess.run(["umount", str(prefix)], check=False)
            prefix.rmdir()
            syslog.stop()
            sandbox.close()
            for problem in problems:
                narrator.say(f"could not undo: {problem}")
        print(f"\nLogs: {logs}/ (slurm-scratch.log: the tool; *slurmd.log, *slurmctld.log: Slurm)")
        print(f"Total: {time.monotonic() - narrator.start:.1f} s")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
