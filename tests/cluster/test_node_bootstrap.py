"""lab/node_boot.py's CLI, as the docker-compose nodes run it (docker/entrypoint.sh), for real,
each run in its own mount namespace with empty state dirs, like a fresh container: two sparse
disks on loop devices striped by `slurm-scratch setup` (btrfs backend), held while the volume is
broken, unmounted and detached on SIGTERM; run again on the same images (a container re-created
on its disk volume) the volume is adopted with its data; killed outright (`docker kill`), its
mount namespace goes with it and autoclear detaches the disks."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from lab.node_boot import loop_backing_file, mount_source, wait_for

pytestmark = pytest.mark.cluster
BOOTSTRAP = Path(__file__).resolve().parents[2] / "lab" / "node_boot.py"


def _loops_backed_by(directory: Path) -> list[str]:
    return sorted(f"/dev/{name}" for name in os.listdir("/sys/block") if name.startswith("loop")
                  and (loop_backing_file(name) or "").startswith(f"{directory}/"))


def _mounted(pid: int, mount_point: Path) -> tuple[str, str] | None:
    return mount_source(Path(f"/proc/{pid}/mountinfo").read_text(), str(mount_point))


class Node:
    """`node_boot.py up` in a mount namespace of its own, as in a fresh container."""

    def __init__(self, work: Path, prefix: Path):
        self.work, self.prefix = work, prefix
        self.scratch = work / "scratch"
        self.ready = work / "ready"
        self.proc: subprocess.Popen | None = None

    def up(self) -> str:
        base = self.work / "base.conf"
        base.write_text(f"[volume]\nmount_point = {self.scratch}\nbackend = btrfs\n"
                        "filesystem = btrfs\n\n[jobs]\nexport = SCRATCH\n")
        self.scratch.mkdir(exist_ok=True)
        up = ["/usr/bin/python3", str(BOOTSTRAP), "up", "--image-dir", str(self.work / "disks"),
              "--disks", "2", "--disk-mib", "512", "--base-conf", str(base),
              "--conf", str(self.work / "slurm-scratch.conf"),
              "--slurm-scratch", str(self.prefix / "bin" / "slurm-scratch"),
              "--ready", str(self.ready)]
        private_state = "".join(f"mount -t tmpfs -o mode=0755 node-state {d}\n"
                                for d in ("/run/slurm-scratch", "/var/lib/slurm-scratch"))
        self.proc = subprocess.Popen(  # sh execs python: self.proc.pid is node_boot.py
            ["unshare", "--mount", "--propagation", "private", "--",
             "sh", "-euc", f"{private_state}exec {shlex.join(up)}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/")
        wait_for("node_boot.py up", lambda: self.ready.exists() or self.proc.poll() is not None,
                 120)
        assert self.ready.exists(), self.proc.communicate(timeout=30)[0]
        return self.ready.read_text()

    def mounted(self) -> tuple[str, str] | None:
        return _mounted(self.proc.pid, self.scratch)

    def in_node(self, *argv: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "--", *argv],
                              check=True, capture_output=True, text=True, **kw)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out = self.proc.communicate(timeout=90)[0]
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def node(cluster_prefix: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    work = Path(subprocess.run(["mktemp", "-d", "/var/tmp/node-bootstrap-test.XXXXXX"],
                               capture_output=True, text=True, check=True).stdout.strip())
    node = Node(work, cluster_prefix)
    try:
        yield node
    finally:
        node.kill()  # its mount namespace, and the volume's mount in it, go with it
        for device in _loops_backed_by(work / "disks"):
            subprocess.run(["losetup", "-d", device], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def test_up_builds_holds_and_stop_detaches(node: Node):
    outcome = node.up()
    loops = _loops_backed_by(node.work / "disks")
    assert len(loops) == 2 and f"ready on {' '.join(loops)}" in outcome
    fstype, device = node.mounted()
    assert fstype == "btrfs" and device in loops
    conf = (node.work / "slurm-scratch.conf").read_text()
    assert f"devices = {' '.join(loops)}" in conf
    node.in_node("sh", "-c", f"printf data > {node.scratch}/kept")

    # a broken volume (unmounted under the node) keeps its disks: `setup` can repair it
    node.in_node("umount", str(node.scratch))
    assert node.mounted() is None and _loops_backed_by(node.work / "disks") == loops
    node.in_node(str(node.prefix / "bin" / "slurm-scratch"), "setup",
                 env={"SLURM_SCRATCH_CONF": str(node.work / "slurm-scratch.conf"),
                      "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert node.in_node("cat", str(node.scratch / "kept")).stdout == "data"

    status, out = node.stop()
    assert status == 0, out
    assert f"unmounted {node.scratch}" in out
    assert _loops_backed_by(node.work / "disks") == []
    assert not node.ready.exists()

    # restarted on the same images (a container restarted on its volume): adopted, data kept
    assert "ready on" in node.up()
    assert node.in_node("cat", str(node.scratch / "kept")).stdout == "data"
    # killed outright: no teardown ran, yet the disks go with its mount namespace (autoclear)
    assert len(_loops_backed_by(node.work / "disks")) == 2
    node.stop(signal.SIGKILL)
    wait_for("autoclear to detach the disks",
             lambda: not _loops_backed_by(node.work / "disks"), 10)
