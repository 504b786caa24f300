"""Fixtures for the real-Slurm tests: one cluster per test module (see lab/cluster.py).

`cluster` (per test) hands out the module's cluster and, after the test, puts it back as it was:
leftover jobs cancelled, nodes resumed, every node's config restored and /scratch mounted, so
that one failing test does not fail the next ones.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from lab import rootfs
from lab.cluster import Cluster, HarnessError, in_private_mount_namespace, wait_for

# Build each node's /scratch with the project's own `slurm-scratch setup` (single backend on the
# node's loop device). False: harness.Cluster._setup_scratch_directly (mkfs + mount) stands in.
SETUP_BY_PROJECT = True

REPO = Path(__file__).resolve().parents[2]
HEALTH_INTERVAL = 5  # seconds; slurm.conf HealthCheckInterval
NODES = ("n1", "n2")
# The Slurm majors the tier runs against: bookworm's own, and trixie's and sid's each in a rootfs
# (lab/rootfs.py; None = the machine's). CLUSTER_SLURM=slurm-22.05,slurm-26.05 keeps only those.
SLURM_SUITES = {"slurm-22.05": None, "slurm-24.11": "trixie", "slurm-26.05": "sid"}
SLURM_FLAVOURS = tuple(f for f in SLURM_SUITES
                       if f in os.environ.get("CLUSTER_SLURM", ",".join(SLURM_SUITES)).split(","))
# The broad job/health matrix runs on this one (Debian stable's); a test marked `every_major`
# (what differs between Slurm releases: hook environments, drain reasons, resume, TmpDisk) on all.
BROAD_FLAVOUR = "slurm-24.11"
SCRATCH_SETTINGS = {
    "volume": {"mount_point": "/scratch", "backend": "single", "filesystem": "ext4"},
    "jobs": {"export": "SCRATCH"},
    "health": {"probe_timeout": "3", "check_timeout": "10"},
    "slurm": {"timeout": "10"},
}
SLURM_PROGRAMS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/sbin/munged")


def _missing_programs() -> list[str]:
    return [p for p in SLURM_PROGRAMS if not os.access(p, os.X_OK)]


@contextlib.contextmanager
def _prefix_dir(name: str):
    """An empty install prefix: a tmpfs in the session's private mount namespace (gone with it,
    however pytest ends), readable by everyone (the TaskProlog runs as the job's user)."""
    prefix = Path(tempfile.mkdtemp(prefix=f"slurm-scratch-cluster-{name}-", dir="/var/tmp"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1g", "cluster-prefix",
                        str(prefix)], check=True)
        try:
            yield prefix
        finally:
            subprocess.run(["umount", str(prefix)], check=False)
    finally:
        prefix.rmdir()


@pytest.fixture(scope="session")
def cluster_prefix():
    """`make install PREFIX=` for the nodes. Not the session's `installed` fixture: that lives
    below /tmp (private to each node here) in a root-only directory, and the TaskProlog runs
    as the job's user, who must be able to reach it (as under /usr/local on a real node)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with _prefix_dir("prefix") as prefix:
        made = subprocess.run(["make", "-s", "install", f"PREFIX={prefix}"], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert made.returncode == 0, f"make install failed:\n{made.stdout}{made.stderr}"
        yield prefix


@pytest.fixture(scope="session")
def slurm_rootfs_install():
    """suite -> (rootfs, prefix): that Debian suite's Slurm in a cached rootfs, with the project
    installed into it by the rootfs's own python3; each built on first use."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    with contextlib.ExitStack() as stack:
        made: dict[str, tuple[Path, Path]] = {}

        def install(suite: str) -> tuple[Path, Path]:
            if suite not in made:
                root = rootfs.slurm_rootfs(suite)
                prefix = stack.enter_context(_prefix_dir(f"prefix-{suite}"))
                rootfs.install_project(root, REPO, prefix)
                made[suite] = (root, prefix)
            return made[suite]

        yield install


def pytest_configure(config):
    config.addinivalue_line("markers", "every_major: a cluster test run on every Slurm major "
                            "(the others run on BROAD_FLAVOUR only)")


def pytest_collection_modifyitems(config, items):
    """Cluster tests not marked `every_major` run on BROAD_FLAVOUR only (when it is selected)."""
    broad = (BROAD_FLAVOUR,) if BROAD_FLAVOUR in SLURM_FLAVOURS else SLURM_FLAVOURS[:1]
    keep, drop = [], []
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        flavour = next((value for value in params.values()
                        if isinstance(value, str) and value in SLURM_SUITES), None)
        if flavour and flavour not in broad and item.get_closest_marker("every_major") is None:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@contextlib.contextmanager
def cluster_for(request, flavour: str, settings=SCRATCH_SETTINGS, nodes=NODES, **options):
    """A started cluster of `flavour` (a key of SLURM_SUITES), stopped when the block ends."""
    missing = _missing_programs()
    if missing:
        pytest.skip(f"Slurm/munge not installed: {', '.join(missing)} "
                    "(apt-get install slurmctld slurmd slurm-client munge)")
    if not in_private_mount_namespace():
        pytest.skip("needs tests/conftest.py's private mount namespace")
    root, prefix = slurm_install(request, flavour)
    cluster = Cluster(prefix, settings, nodes=nodes, health_interval=HEALTH_INTERVAL,
                      use_project_setup=SETUP_BY_PROJECT, rootfs=root, flavour=flavour, **options)
    cluster.start()
    try:
        yield cluster
    finally:
        problems = cluster.stop()
        assert not problems, f"cluster teardown left: {problems}"


def slurm_install(request, flavour: str) -> tuple[Path | None, Path]:
    """(rootfs or None for the machine's own Slurm, install prefix) of `flavour`."""
    suite = SLURM_SUITES[flavour]
    if suite is None:  # the machine's own (Debian bookworm)
        return None, request.getfixturevalue("cluster_prefix")
    return request.getfixturevalue("slurm_rootfs_install")(suite)


@pytest.fixture(scope="module", params=SLURM_FLAVOURS)
def cluster_module(request):
    with cluster_for(request, request.param) as cluster:
        yield cluster


@pytest.fixture
def cluster(cluster_module: Cluster):
    yield cluster_module
    restore(cluster_module)


def restore(cluster: Cluster) -> None:
    """Undo what a test may have left: jobs, drains, config overrides, a broken /scratch."""
    jobs = cluster.client(["squeue", "-h", "-o", "%A"], check=False).stdout.split()
    if jobs:
        cluster.client(["scancel", *jobs], check=False)
        wait_for("leftover jobs to end", lambda: not cluster.client(
            ["squeue", "-h", "-t", "PD,R,CG,S,CF", "-o", "%A"]).stdout.split(), 60, 0.5)
    for node in cluster.nodes:
        cluster.run_on_node(node, ["fsfreeze", "--unfreeze", "/scratch"], check=False)
        cluster.write_scratch_conf(node)
        if not cluster.scratch_mounted(node) or not _writable(cluster, node):
            cluster.run_on_node(node, ["umount", "/scratch"], check=False)
            remount_scratch(cluster, node)
        if cluster.node_drained(node):
            cluster.resume(node)
    wait_for("nodes idle after the test", lambda: all(
        cluster.node_state(n) == "IDLE" for n in cluster.nodes), 60, 0.5)


def _writable(cluster: Cluster, node: str) -> bool:
    options = cluster.run_on_node(node, ["findmnt", "-n", "-o", "OPTIONS", "/scratch"],
                                  check=False).stdout
    return options.split(",")[0] == "rw"


def remount_scratch(cluster: Cluster, node: str) -> None:
    """Mount the node's volume again (what an admin's repair would do)."""
    device = cluster.nodes[node].loop_device
    cluster.run_on_node(node, ["mount", "-o", "noatime,nodiratime", device, "/scratch"])
    if not cluster.scratch_mounted(node):
        raise HarnessError(f"{node}: /scratch did not come back")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing cluster test reports the tails of slurmctld's and each slurmd's log."""
    outcome = yield
    report = outcome.get_result()
    cluster = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(cluster, Cluster) and cluster.workdir is not None:
        try:
            report.sections.append(("slurmctld.log", _tail(cluster.slurmctld_log())))
            for node in cluster.nodes:
                report.sections.append((f"{node} slurmd.log", _tail(cluster.slurmd_log(node))))
        except Exception as exc:  # a report must not fail because a log is missing
            report.sections.append(("cluster logs", f"unavailable: {exc}"))


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
