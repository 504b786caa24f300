"""The installed HealthCheckProgram on a real Slurm cluster: drain with a `scratch:` reason when a
node's volume breaks, resume once repaired, leave other reasons alone, turn a failed Prolog into
the specific reason, and send slurmctld no RPC while healthy (issue 4, "What it must show").

Faults are real: the node's /scratch (ext4 on a loop device, in its own mount namespace) is
unmounted, remounted read-only, filled, frozen (fsfreeze: every write blocks, as on a hung
disk), or its device is claimed exclusively so that it cannot be mounted again.
"""
from __future__ import annotations

import os
import time

import pytest

from cluster.conftest import HEALTH_INTERVAL, SCRATCH_SETTINGS
from lab.cluster import Cluster, wait_for
from slurm_scratch.health.slurm import RESUMED_REASON
from slurm_scratch.layout import HEALTH_LOCK, TRASH_NAME

pytestmark = pytest.mark.cluster

USER = "sstest1"
PREFIX = "scratch:"
PROBE_TIMEOUT = int(SCRATCH_SETTINGS["health"]["probe_timeout"])
# "within two health-check intervals"; plus the probe's own timeout for a hung volume, and a
# little for slurmctld and our polling
DRAIN_WITHIN = 2 * HEALTH_INTERVAL + 2
SLURM_RPCS_OF_A_HEALTH_CHECK = (  # what scontrol/squeue calls from a node would show as
    "REQUEST_NODE_INFO", "REQUEST_NODE_INFO_SINGLE", "REQUEST_UPDATE_NODE",
    "REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE", "REQUEST_JOB_USER_INFO",
    "REQUEST_PARTITION_INFO", "REQUEST_BUILD_INFO",
)


def drained_with(cluster: Cluster, node: str, words: str, within: float) -> str:
    """Wait until `node` is drained with a `scratch:` reason containing `words`; the reason."""
    def reason():
        text = cluster.node_reason(node)
        return text if cluster.node_drained(node) and text.startswith(PREFIX) and \
            words in text else None

    try:
        return wait_for(f"{node} drained with a '{PREFIX} ...{words}...' reason", reason, within,
                        0.25)
    except Exception:
        raise AssertionError(f"{node}: state {cluster.node_state(node)}, reason "
                             f"{cluster.node_reason(node)!r} after {within} s") from None


def no_reason_of_ours(cluster: Cluster, node: str) -> dict[str, str]:
    """Every place Slurm shows the node's reason; none may be ours once it is resumed. Only
    the Slurm releases that keep a reason after a resume (23.11 to 25.11 without accounting
    storage) show the resume's own note; the others show none."""
    shown = cluster.reasons_shown(node)
    assert not any(PREFIX in text for text in shown.values()), shown
    keeps = cluster.flavour == "slurm-24.11"
    assert all(text in ("", RESUMED_REASON) if keeps else text == "" for text in shown.values()), \
        shown
    return shown


def resumed(cluster: Cluster, node: str, within: float = DRAIN_WITHIN) -> None:
    def back():
        return not cluster.node_drained(node) and cluster.node_reason(node) == ""

    try:
        wait_for(f"{node} resumed", back, within, 0.25)
    except Exception:
        raise AssertionError(f"{node} not resumed after {within} s: state "
                             f"{cluster.node_state(node)}, reason {cluster.node_reason(node)!r}"
                             ) from None
    print(f"{node} resumed; reasons shown: {no_reason_of_ours(cluster, node)}")


def runs_a_job(cluster: Cluster, node: str) -> None:
    result = cluster.srun("-w", node, "-n1", "bash", "-c",
                          'echo x > "$SCRATCH/f" && echo "OK $(hostname) $SCRATCH"', timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK {node} /scratch/"), result.stdout


def fill(cluster: Cluster, node: str) -> None:
    """Leave 1% free (the threshold is 3%): fallocate, so nothing is written."""
    stats = os.statvfs(cluster.node_path(node, "/scratch"))
    size = stats.f_bavail * stats.f_frsize - stats.f_blocks * stats.f_frsize // 100
    cluster.run_on_node(node, ["fallocate", "-l", str(size), "/scratch/filled-by-test"])


def repair_by_setup(cluster: Cluster, node: str) -> None:
    """An admin's repair: the project's own, idempotent setup mounts the volume again."""
    cluster.run_on_node(node, [str(cluster.prefix / "bin" / "slurm-scratch"), "setup"],
                        timeout=120)
    assert cluster.scratch_mounted(node)


FAULTS = {
    # name: (break it, words the reason must contain, repair it)
    "unmounted": (lambda c, n: c.run_on_node(n, ["umount", "/scratch"]), "not mounted",
                  repair_by_setup),
    "read-only": (lambda c, n: c.run_on_node(n, ["mount", "-o", "remount,ro", "/scratch"]),
                  "read-only",
                  lambda c, n: c.run_on_node(n, ["mount", "-o", "remount,rw", "/scratch"])),
    "full": (fill, "full",
             lambda c, n: c.run_on_node(n, ["rm", "/scratch/filled-by-test"])),
    "hung": (lambda c, n: c.run_on_node(n, ["fsfreeze", "--freeze", "/scratch"]),
             "probe timed out",
             lambda c, n: c.run_on_node(n, ["fsfreeze", "--unfreeze", "/scratch"])),
}


def assert_healthy(cluster: Cluster) -> None:
    for node in cluster.nodes:
        assert cluster.node_state(node) == "IDLE", (node, cluster.node_state(node))
        assert cluster.node_reason(node) == ""


def _on_every_major(names, *every):
    """Parameters for the names, those in `every` marked to run on every Slurm major."""
    return [pytest.param(name, marks=pytest.mark.every_major) if name in every else name
            for name in names]


@pytest.mark.parametrize("fault", _on_every_major(FAULTS, "unmounted"))
def test_broken_volume_drains_only_its_node_and_repair_resumes_it(cluster: Cluster, fault: str):
    break_it, words, repair = FAULTS[fault]
    assert_healthy(cluster)
    break_it(cluster, "n1")
    broke = time.monotonic()
    within = DRAIN_WITHIN + (PROBE_TIMEOUT if fault == "hung" else 0)
    reason = drained_with(cluster, "n1", words, within)
    print(f"{fault}: drained after {time.monotonic() - broke:.1f} s: {reason!r}")

    # the other node keeps its state and runs jobs meanwhile
    runs_a_job(cluster, "n2")
    assert not cluster.node_drained("n2") and cluster.node_reason("n2") == ""

    repair(cluster, "n1")
    repaired = time.monotonic()
    resumed(cluster, "n1", within)
    print(f"{fault}: resumed {time.monotonic() - repaired:.1f} s after the repair")
    runs_a_job(cluster, "n1")


def test_node_drained_by_an_admin_is_never_resumed(cluster: Cluster):
    """n1 drained by an admin and n2 not; both volumes break, then are repaired. n2 (the
    witness that health checks ran meanwhile) is drained and resumed by the tool; n1 keeps
    the admin's reason throughout and stays drained."""
    admin_reason = "admin: firmware update"
    cluster.drain("n1", admin_reason)
    for node in ("n1", "n2"):
        cluster.run_on_node(node, ["mount", "-o", "remount,ro", "/scratch"])
    drained_with(cluster, "n2", "read-only", DRAIN_WITHIN)
    assert cluster.node_reason("n1") == admin_reason  # nothing replaced, nothing appended

    for node in ("n1", "n2"):
        cluster.run_on_node(node, ["mount", "-o", "remount,rw", "/scratch"])
    resumed(cluster, "n2")
    # at least one more round of health checks on both nodes (they run in the same second)
    resumed_at = cluster.node_path("n2", f"/scratch/{TRASH_NAME}").stat().st_mtime
    wait_for("a health check on n1 after the repair", lambda: cluster.node_path(
        "n1", f"/scratch/{TRASH_NAME}").stat().st_mtime > resumed_at, 3 * HEALTH_INTERVAL)
    assert cluster.node_drained("n1")
    assert cluster.node_reason("n1") == admin_reason


def _requeued_held(cluster: Cluster, job: int) -> dict[str, str] | None:
    info = cluster.job_info(job)
    held = info["JobState"] == "PENDING" and "held" in info.get("Reason", "").lower()
    return info if held and info.get("Restarts") == "1" else None


JOB_START_FAULTS = {
    # name: (break it, words of the specific reason, repair it)
    # the classic ext4 failure (errors=remount-ro): mounted, but nothing can be created
    "read-only": FAULTS["read-only"],
    # not mounted, and the Prolog's own attempt to mount it fails: the device is claimed
    "unmountable": (None, "not mounted", None),
}


@pytest.mark.parametrize("fault", _on_every_major(JOB_START_FAULTS, "unmountable"))
def test_volume_broken_at_job_start_requeues_job_and_drains_with_specific_reason(
        cluster: Cluster, fault: str):
    """The volume breaks between two health checks (the test holds the health-check lock on
    n1 so that no check runs before the job starts), so the Prolog is first to find out."""
    break_it, words, repair = JOB_START_FAULTS[fault]
    claim = None
    try:
        with cluster.flock_on_node("n1", HEALTH_LOCK):
            if fault == "unmountable":
                cluster.run_on_node("n1", ["umount", "/scratch"])
                # an exclusive open (as a mount, md or LVM would hold it): mount gets EBUSY
                claim = os.open(cluster.nodes["n1"].loop_device, os.O_RDONLY | os.O_EXCL)
            else:
                break_it(cluster, "n1")
            job = cluster.submit("#!/bin/bash\necho \"RAN=$(hostname) $SCRATCH\"\n", USER,
                                 "-w", "n1")
            info = wait_for(f"job {job} requeued and held",
                            lambda: _requeued_held(cluster, job), 60, 0.5)
            assert cluster.node_drained("n1")
            print(f"{fault}: job {job} {info['JobState']} ({info['Reason']}), n1 reason "
                  f"{cluster.node_reason('n1')!r} before any health check")
        # health checks run again: "Prolog error" becomes the specific reason
        reason = drained_with(cluster, "n1", words, DRAIN_WITHIN)
        print(f"{fault}: n1 drained with {reason!r}")
        assert _requeued_held(cluster, job), "the job was lost"
    finally:
        if claim is not None:
            os.close(claim)

    if fault == "unmountable":
        repair_by_setup(cluster, "n1")
    else:
        repair(cluster, "n1")
    resumed(cluster, "n1")
    # a requeued job may not start again before its old launch credential expires (CredExpire,
    # 120 s): the admin releases it and lets it start now
    cluster.scontrol("release", str(job))
    cluster.scontrol("update", f"jobid={job}", "starttime=now")
    cluster.wait_job(job, {"COMPLETED"})
    assert cluster.job_output(job).startswith("RAN=")

def test_healthy_nodes_send_no_rpc_to_slurmctld(cluster: Cluster):
    """Over three health-check intervals on two healthy nodes, slurmctld receives none of the
    RPCs scontrol or squeue would send, while the checks demonstrably run (each probe writes
    in the trash directory, moving its mtime)."""
    assert_healthy(cluster)
    trash = {node: cluster.node_path(node, f"/scratch/{TRASH_NAME}") for node in cluster.nodes}
    # the first check after a change may ask Slurm once; let that pass
    since = time.time()
    wait_for("a health check on every node", lambda: all(
        t.stat().st_mtime > since for t in trash.values()), 3 * HEALTH_INTERVAL)
    before = cluster.sdiag()

    window_start = time.time()
    time.sleep(3 * HEALTH_INTERVAL)  # the observation window itself, not a synchronisation
    after = cluster.sdiag()
    for node, path in trash.items():
        assert path.stat().st_mtime > window_start, f"no health check ran on {node}"
    sent = {rpc: after.get(rpc, 0) - before.get(rpc, 0) for rpc in SLURM_RPCS_OF_A_HEALTH_CHECK}
    print(f"RPCs to slurmctld over {3 * HEALTH_INTERVAL} s of health checks on 2 healthy "
          f"nodes: {sum(sent.values())}; all RPC types: "
          f"{ {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} }")
    assert not any(sent.values()), f"RPCs during the window: {sent}"

    # the counters do show such a call when one is made from a node
    probe = cluster.nodes["n1"].run(["env", f"SLURM_CONF={cluster.slurm_conf}", "scontrol",
                                     "show", "node", "n1"])
    assert "NodeName=n1" in probe.stdout
    final = cluster.sdiag()
    assert sum(final.get(rpc, 0) - after.get(rpc, 0) for rpc in SLURM_RPCS_OF_A_HEALTH_CHECK) >= 1


def _remount_read_only(cluster: Cluster, node: str) -> None:
    """`mount -o remount,ro` fails with EBUSY while a file is open for writing: retry briefly."""
    def done():
        result = cluster.run_on_node(node, ["mount", "-o", "remount,ro", "/scratch"], check=False)
        return result.returncode == 0

    wait_for(f"{node}: /scratch remounted read-only", done, 30, 0.5)


@pytest.mark.every_major
def test_epilog_on_a_faulty_volume_drains_with_epilog_error_then_our_reason_then_resumes(
        cluster: Cluster):
    """/scratch turns read-only while a job runs (ext4's errors=remount-ro): the job's Epilog
    cannot retire the directory, records the finding and fails; slurmctld drains the node with
    "Epilog error". The health check (held off by the test until Slurm has shown that) replaces
    it with its own `scratch:` reason and, once the volume is repaired, resumes the node."""
    assert_healthy(cluster)
    script = ("#!/bin/bash\n"
              "echo x > \"$SCRATCH/f\" && echo \"WROTE $SCRATCH\"\n"
              "for i in $(seq 240); do\n"  # until the test has made /scratch read-only (<= 60 s)
              "  awk '$2 == \"/scratch\" && $4 ~ /^ro(,|$)/ {f = 1} END {exit !f}' /proc/self/mounts"
              " && break\n"
              "  sleep 0.25\n"
              "done\n")
    with cluster.flock_on_node("n1", HEALTH_LOCK):  # no health check reconciles meanwhile
        job = cluster.submit(script, USER, "-w", "n1")
        cluster.wait_job(job, {"RUNNING", "COMPLETED"}, timeout=60)
        wait_for(f"job {job} wrote into $SCRATCH", lambda: (
            cluster.home(USER) / f"slurm-{job}.out").exists() and "WROTE /scratch/" in
            cluster.job_output(job), 60, 0.25)
        _remount_read_only(cluster, "n1")
        cluster.wait_job(job, {"COMPLETED"}, timeout=90)
        wait_for("n1 drained with 'Epilog error'", lambda: cluster.node_drained("n1") and
                 cluster.node_reason("n1") == "Epilog error", 60, 0.5)
        finding = cluster.run_on_node("n1", ["cat", "/run/slurm-scratch/hook-finding"]).stdout
        assert "hook=epilog" in finding.splitlines() and "Read-only file system" in finding, finding
        print(f"job {job}: n1 drained with 'Epilog error'; the Epilog recorded: {finding!r}")

    reason = drained_with(cluster, "n1", "read-only", DRAIN_WITHIN)
    print(f"n1 drained with {reason!r}")
    cluster.run_on_node("n1", ["mount", "-o", "remount,rw", "/scratch"])
    resumed(cluster, "n1")
    runs_a_job(cluster, "n1")
    assert cluster.run_on_node("n1", ["test", "-e", "/run/slurm-scratch/hook-finding"],
                               check=False).returncode != 0  # dealt with: nothing pending
