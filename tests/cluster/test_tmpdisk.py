"""A node whose slurmd registered while its volume was missing (issue 10, part 3): slurmd measures
TmpFS (/scratch) only when it starts or reconfigures, so it measured the filesystem below the
mount point, which is smaller than the configured TmpDisk, and slurmctld drained the node with
"Low TmpDisk" (or the health check, which slurmd runs before it registers, drained it first with
its own reason; 22.05 keeps that one, 24.11 and 26.05 replace it). The tool owns that drain: the
repair (`slurm-scratch setup`) makes slurmd measure again (slurmctld sends no health check to a node
it found invalid at registration, 24.11 and 26.05), the health check resumes the node, and it stays
in service.

The nodes' volumes here are bigger than the machine's root filesystem (btrfs on sparse disks: a
few MB written), so that what slurmd measures without the volume is less than TmpDisk, as on a
real node whose root disk is smaller than its local NVMe.
"""
from __future__ import annotations

import os

import pytest

from cluster.conftest import HEALTH_INTERVAL, SCRATCH_SETTINGS, SLURM_FLAVOURS, cluster_for
from cluster.test_health import DRAIN_WITHIN, no_reason_of_ours, repair_by_setup, runs_a_job
from lab.cluster import Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.every_major]

SETTINGS = {**SCRATCH_SETTINGS, "volume": {"mount_point": "/scratch", "backend": "btrfs",
                                           "filesystem": "btrfs"}}
SLURM_TIMEOUT = int(SCRATCH_SETTINGS["slurm"]["timeout"])
REASONS = ("Low TmpDisk", "scratch: /scratch not mounted")


def _mib(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize // (1 << 20)


@pytest.fixture(scope="module", params=SLURM_FLAVOURS)
def big_cluster(request):
    from cluster.conftest import slurm_install

    root, _ = slurm_install(request, request.param)
    below = _mib(str(root or "/"))  # what the nodes' /scratch sits on
    with cluster_for(request, request.param, SETTINGS, disk_mib=below + below // 10) as cluster:
        cluster.below_scratch_mib = below
        yield cluster


def _measured(cluster: Cluster, node: str) -> int:
    """What the node's slurmd measured TmpFS at (`scontrol show slurmd`, asked on the node)."""
    out = cluster.run_on_node(node, ["env", f"SLURM_CONF={cluster.slurm_conf}", "scontrol",
                                     "show", "slurmd"]).stdout
    line = next(line for line in out.splitlines() if line.startswith("Actual temp disk space"))
    return int(line.split("=")[1].split()[0])


def test_slurmd_started_without_the_volume_drains_then_repair_resumes_for_good(big_cluster):
    cluster = big_cluster
    mib = cluster.tmp_disk_mib
    assert mib > cluster.below_scratch_mib and _measured(cluster, "n2") == mib

    cluster.restart_slurmd("n2", between=lambda: cluster.run_on_node("n2", ["umount", "/scratch"]))

    def drained():
        reason = cluster.node_reason("n2")
        return reason if cluster.node_drained("n2") and reason in REASONS else None

    first = wait_for("n2 drained", drained, DRAIN_WITHIN + SLURM_TIMEOUT, 0.25)
    assert _measured(cluster, "n2") == cluster.below_scratch_mib  # the filesystem below
    print(f"{cluster.flavour}: slurmd measured {cluster.below_scratch_mib} MiB for TmpDisk={mib}: "
          f"n2 drained with {first!r}")
    repair_by_setup(cluster, "n2")
    resumed_within = DRAIN_WITHIN + 2 * SLURM_TIMEOUT  # the check, slurmd measuring again, resume
    wait_for("n2 resumed", lambda: not cluster.node_drained("n2")
             and cluster.node_reason("n2") == "", resumed_within, 0.25)
    assert _measured(cluster, "n2") == mib
    print(f"{cluster.flavour}: n2 resumed, slurmd measures {mib} MiB again; reasons shown: "
          f"{no_reason_of_ours(cluster, 'n2')}")

    # its next registrations find TmpDisk met: the node stays in service and runs --tmp jobs
    since = os.stat(cluster.node_path("n2", "/scratch/.slurm-scratch-trash")).st_mtime
    wait_for("two more health checks on n2", lambda: os.stat(cluster.node_path(
        "n2", "/scratch/.slurm-scratch-trash")).st_mtime > since + HEALTH_INTERVAL,
        3 * HEALTH_INTERVAL + 5)
    assert not cluster.node_drained("n2"), cluster.node_info("n2")
    result = cluster.srun("-w", "n2", "-n1", f"--tmp={mib}M", "bash", "-c",
                          'echo "OK $(hostname) $SCRATCH"', timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("OK n2 /scratch/"), result
    runs_a_job(cluster, "n1")
