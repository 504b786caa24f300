"""The cluster harness leaves the machine as it found it: after a normal stop, and when its start
fails half-way (here: the nodes' `slurm-scratch setup` rejects their config)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.conftest import NODES, SCRATCH_SETTINGS, _missing_programs
from lab.cluster import Cluster, HarnessError, Host, in_private_mount_namespace, \
    process_alive

pytestmark = pytest.mark.cluster


@pytest.fixture
def prefix(cluster_prefix: Path) -> Path:
    if _missing_programs() or not in_private_mount_namespace():
        pytest.skip("needs Slurm, munge and the session's private mount namespace")
    return cluster_prefix


class Footprint:
    """What a cluster holds on the machine, looked up from what it recorded while running."""

    def __init__(self, cluster: Cluster):
        self.hosts: list[Host] = list(cluster.nodes.values()) + (
            [cluster.controller] if cluster.controller else [])
        self.images = {str(image) for host in self.hosts for image in host.disk_images}
        self.munged = cluster.munged.pid if cluster.munged else None
        self.workdir = cluster.workdir

    def now(self) -> dict[str, object]:
        pids = [pid for host in self.hosts for pid in host.processes() if process_alive(pid)]
        if self.munged is not None and process_alive(self.munged):
            pids.append(self.munged)
        loops = [dev for dev in os.listdir("/sys/block")
                 if dev.startswith("loop") and _backing(dev) in self.images]
        mounts = [point for point in _mount_points()
                  if point.startswith(f"{self.workdir}/") or point in (str(self.workdir),
                                                                        "/run/munge")]
        return {"processes": pids, "loops": loops, "mounts": mounts,
                "workdir": self.workdir is not None and self.workdir.exists()}


NOTHING = {"processes": [], "loops": [], "mounts": [], "workdir": False}


def _mount_points() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _backing(device: str) -> str | None:
    try:
        return Path(f"/sys/block/{device}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def test_stop_leaves_nothing_behind(prefix: Path):
    cluster = Cluster(prefix, SCRATCH_SETTINGS, nodes=NODES)
    try:
        cluster.start()
        footprint = Footprint(cluster)
        running = footprint.now()
        assert len(running["loops"]) == len(NODES) and running["processes"] and running["mounts"]
    finally:
        assert cluster.stop() == []
    assert footprint.now() == NOTHING


def test_failed_start_is_undone(prefix: Path):
    broken = {**SCRATCH_SETTINGS, "volume": {**SCRATCH_SETTINGS["volume"], "no_such_key": "1"}}
    cluster = Cluster(prefix, broken, nodes=NODES)
    seen = {}
    stop = cluster.stop

    def look_then_stop():  # what start() holds at the moment it gives up
        seen["footprint"] = Footprint(cluster)
        seen["held"] = seen["footprint"].now()
        return stop()

    cluster.stop = look_then_stop
    with pytest.raises(HarnessError, match="slurm-scratch setup exited"):
        cluster.start()
    assert seen["held"]["processes"] and seen["held"]["loops"], "it failed before building"
    assert seen["footprint"].now() == NOTHING
