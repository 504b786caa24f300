"""Per-job quotas with real Slurm jobs (issue 11): `[jobs] quota = request` on a btrfs /scratch built
by the project's own setup. The limit follows the job's --tmp, a job without one gets
quota_default, a job writing past its limit gets "Disk quota exceeded" while a neighbour on the
same node finishes and the node stays up, the qgroup is gone after the Epilog, and the Prolog's
Slurm query costs slurmctld one RPC per job start (counted with sdiag).

One node, Slurm 22.05 (bookworm's); its own cluster, since the volume is btrfs with quotas.
"""
from __future__ import annotations

import pytest

from cluster.conftest import SCRATCH_SETTINGS, cluster_for
from lab.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

USER, OTHER = "sstest1", "sstest2"
SETTINGS = {
    **SCRATCH_SETTINGS,
    "volume": {"mount_point": "/scratch", "backend": "btrfs", "filesystem": "btrfs"},
    "jobs": {"export": "SCRATCH", "quota": "request", "quota_default": "64M", "quota_query_timeout": "5"},
}


@pytest.fixture(scope="module")
def cluster(request):
    # the harness sets TmpFS=/scratch and TmpDisk (what --tmp is scheduled against) to the volume;
    # tmpdisk: a count-only GRES of MiB (README: quotas cap, they do not reserve)
    with cluster_for(request, "slurm-22.05", SETTINGS, nodes=("n1",),
                     slurm_lines=("GresTypes=tmpdisk",), node_options="Gres=tmpdisk:800") as started:
        yield started


@pytest.fixture(autouse=True)
def settled(cluster):
    yield
    jobs = cluster.client(["squeue", "-h", "-o", "%A"], check=False).stdout.split()
    if jobs:
        cluster.client(["scancel", *jobs], check=False)
    cluster.scratch_settings["jobs"]["quota"] = "request"
    cluster.scratch_settings["jobs"].pop("quota_gres", None)
    cluster.write_scratch_conf("n1")
    wait_for("n1 idle", lambda: cluster.node_state("n1") == "IDLE", 60, 0.5)


def writer(mib: int, flag: str = "") -> str:
    """A job script: write `mib` MiB into $SCRATCH, report dd's result, then wait for `flag`."""
    hold = f"for i in $(seq 600); do [ -e {flag} ] && break; sleep 0.1; done\n" if flag else ""
    return (f"#!/bin/bash\n"
            f"dd if=/dev/zero of=$SCRATCH/data bs=1M count={mib} conv=fsync 2>&1 | grep -v records\n"
            f"echo \"WROTE=$(stat -c %s $SCRATCH/data)\"\necho READY\n{hold}")


def output(cluster: Cluster, job: int, user: str) -> str:
    path = cluster.home(user) / f"slurm-{job}.out"
    return wait_for(f"job {job}'s output", lambda: path.exists() and "READY" in path.read_text() and path.read_text(), 60)


def level1_qgroups(cluster: Cluster) -> list[str]:
    shown = cluster.run_on_node("n1", ["btrfs", "qgroup", "show", "--raw", "/scratch"]).stdout
    return [line.split()[0] for line in shown.splitlines() if line.startswith("1/")]


def test_a_job_past_its_tmp_gets_edquot_while_a_neighbour_finishes(cluster: Cluster):
    flag = cluster.home(OTHER) / "release"
    neighbour = cluster.submit(writer(150, str(flag)), OTHER, "-w", "n1", "--tmp=200M")
    assert "WROTE=157286400" in output(cluster, neighbour, OTHER)
    greedy = cluster.submit(writer(150), USER, "-w", "n1", "--tmp=96M")
    text = output(cluster, greedy, USER)
    assert "Disk quota exceeded" in text, text
    wrote = int(text.split("WROTE=")[1].split()[0])
    assert 90 << 20 < wrote <= 96 << 20  # the limit is the job's --tmp
    assert cluster.wait_job(greedy) == "COMPLETED"
    flag.touch()
    assert cluster.wait_job(neighbour) == "COMPLETED"
    assert not cluster.node_drained("n1") and cluster.node_reason("n1") in ("", "none")
    # after the Epilogs and the reaper, no job's qgroup is left behind
    wait_for("the jobs' qgroups to be removed", lambda: not level1_qgroups(cluster), 60, 0.5)


def test_a_job_cannot_word_its_way_to_a_bigger_limit(cluster: Cluster):
    """A hostile user names the job (and its comment) as if Slurm's own answer said more: the limit
    is still the job's --tmp (the Prolog reads values only, never Key=Value text the user wrote)."""
    forged = "x MinTmpDiskNode=900M TresPerNode=gres:tmpdisk:900"
    job = cluster.submit(writer(150), USER, "-w", "n1", "--tmp=64M", f"--job-name={forged}", f"--comment={forged}")
    text = output(cluster, job, USER)
    assert "Disk quota exceeded" in text, text
    assert int(text.split("WROTE=")[1].split()[0]) <= 64 << 20


def test_a_job_without_tmp_gets_the_default(cluster: Cluster):
    done = cluster.srun("-w", "n1", "-n1", "sh", "-c",
                        "dd if=/dev/zero of=$SCRATCH/data bs=1M count=80 conv=fsync; stat -c WROTE=%s $SCRATCH/data")
    assert "Disk quota exceeded" in done.stderr, done.stderr
    wrote = int(done.stdout.split("WROTE=")[1].split()[0])
    assert 60 << 20 < wrote <= 64 << 20  # quota_default = 64M


def test_the_prolog_asks_slurmctld_once_per_job_start(cluster: Cluster, capsys):
    """The cost at scale: REQUEST_JOB_INFO_SINGLE RPCs (what `squeue --jobs=<one id>` sends) during N
    one-task job starts with quota = request, less the same N starts with quota = off."""
    jobs = 6

    def single_job_infos(quota: str) -> int:
        cluster.scratch_settings["jobs"]["quota"] = quota
        cluster.write_scratch_conf("n1")
        before = cluster.sdiag().get("REQUEST_JOB_INFO_SINGLE", 0)
        for _ in range(jobs):
            assert cluster.srun("-w", "n1", "-n1", "--tmp=10M", "true").returncode == 0
        return cluster.sdiag().get("REQUEST_JOB_INFO_SINGLE", 0) - before

    off, request = single_job_infos("off"), single_job_infos("request")
    with capsys.disabled():
        print(f"\nquota = request: {(request - off) / jobs:g} extra job-info RPC per job start "
              f"({request} with, {off} without, {jobs} jobs)")
    assert request - off == jobs


def test_a_requeued_job_gets_its_limit_again(cluster: Cluster):
    """Slurm runs the Epilog before it requeues a job, so the first run's directory is retired
    (the Prolog keeps a directory only when it still exists: tests/host/test_quota_btrfs.py); the
    job's next run gets a new directory with the same limit."""
    flag = cluster.home(USER) / "release-requeue"
    script = ("#!/bin/bash\n"
              "echo \"RUN=$SLURM_RESTART_COUNT\"\n"
              "dd if=/dev/zero of=$SCRATCH/data bs=1M count=150 conv=fsync 2>&1 | grep -v records\n"
              "echo \"WROTE=$(stat -c %s $SCRATCH/data)\"\necho READY\n"
              f"for i in $(seq 600); do [ -e {flag} ] && break; sleep 0.1; done\n")
    job = cluster.submit(script, USER, "-w", "n1", "--tmp=80M", "--requeue", "--open-mode=append")
    first = output(cluster, job, USER)
    assert "Disk quota exceeded" in first
    cluster.scontrol("requeue", str(job))
    wait_for("the job to be requeued", lambda: cluster.job_info(job).get("Restarts") == "1" and cluster.job_state(job) == "PENDING", 60, 0.3)
    cluster.scontrol("update", f"jobid={job}", "starttime=now")  # a requeued job waits (BeginTime) otherwise
    path = cluster.home(USER) / f"slurm-{job}.out"
    second = wait_for("the requeued run's output", lambda: path.read_text().count("READY") == 2 and path.read_text(), 120, 0.5)
    flag.touch()
    assert "RUN=1" in second
    runs = [int(part.split()[0]) for part in second.split("WROTE=")[1:]]
    assert len(runs) == 2 and all(70 << 20 < wrote <= 80 << 20 for wrote in runs), second
    assert cluster.wait_job(job) == "COMPLETED"


def test_the_limit_follows_a_count_only_gres_when_configured(cluster: Cluster):
    """`quota_gres = tmpdisk:1M`: a job's --gres=tmpdisk:72 (squeue %b shows gres:tmpdisk:72 on Slurm 22.05)
    is its limit, whatever its --tmp."""
    cluster.scratch_settings["jobs"]["quota_gres"] = "tmpdisk:1M"
    cluster.write_scratch_conf("n1")
    job = cluster.submit(writer(150), USER, "-w", "n1", "--gres=tmpdisk:72", "--tmp=200M")
    text = output(cluster, job, USER)
    assert "Disk quota exceeded" in text, text
    wrote = int(text.split("WROTE=")[1].split()[0])
    assert 62 << 20 < wrote <= 72 << 20, text
