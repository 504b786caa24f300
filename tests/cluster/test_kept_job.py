"""Issue 11, part 3, end to end: with `[jobs] keep_failed` set on a node, a real sbatch job of an
unprivileged user that fails (a non-zero exit) keeps its directory at /scratch/.kept/<user>/job_<id>,
where the user's next job reads it and another user's cannot; a job that succeeds, or is cancelled
(Slurm gives its Epilog exit codes of 0), loses its directory as always. slurmd runs the installed Epilog with Slurm's own
exit-code variables. (Named test_kept_job.py: test module basenames are unique across tests/.)
"""
from __future__ import annotations

import json

import pytest

from cluster.conftest import HEALTH_INTERVAL
from lab.cluster import Cluster, wait_for
from slurm_scratch.layout import TRASH_NAME

pytestmark = pytest.mark.cluster

USER, OTHER = "sstest1", "sstest2"


def keep_on(cluster: Cluster, node: str = "n1") -> None:
    cluster.write_scratch_conf(node, {"jobs": {"keep_failed": "1h"}})  # restored after the test (conftest.restore)


def kept_path(job: int, user: str = USER) -> str:
    return f"/scratch/.kept/{user}/job_{job}"


def failed_job_kept(cluster: Cluster, script: str):
    """Keeping on, a job of USER on n1 that fails: (its id, its kept directory once there)."""
    keep_on(cluster)
    job = cluster.submit(script, USER, "-w", "n1")
    assert cluster.wait_job(job, {"FAILED"}) == "FAILED"
    kept = cluster.node_path("n1", kept_path(job))
    wait_for(f"{kept_path(job)} on n1", lambda: kept.is_dir(), 30)
    return job, kept


def test_a_failed_sbatch_job_keeps_its_directory_for_its_user_only(cluster: Cluster):
    job, kept = failed_job_kept(cluster, '#!/bin/sh\necho "step 7 diverged" > "$SCRATCH/debug.log"\nexit 3\n')
    assert not cluster.node_path("n1", f"/scratch/job_{job}").exists()
    assert (kept.stat().st_uid, kept.stat().st_mode & 0o777) == (4201, 0o700)

    reader = cluster.submit(f'#!/bin/sh\ncat {kept_path(job)}/debug.log\n', USER, "-w", "n1")
    assert cluster.wait_job(reader, {"COMPLETED"}) == "COMPLETED"
    assert cluster.job_output(reader) == "step 7 diverged\n"

    snoop = cluster.submit(f'#!/bin/sh\ncat {kept_path(job)}/debug.log 2>&1; ls {kept_path(job)} 2>&1; '
                           f'mkdir /scratch/.kept/{USER}/mine 2>&1; exit 0\n', OTHER, "-w", "n1")
    assert cluster.wait_job(snoop, {"COMPLETED"}) == "COMPLETED"
    assert cluster.job_output(snoop, OTHER).count("Permission denied") == 3

    status = cluster.run_on_node("n1", [str(cluster.prefix / "bin" / "slurm-scratch"), "status", "--json"], check=False)
    (entry,) = json.loads(status.stdout)["kept"]["dirs"]
    assert (entry["path"], entry["user"], entry["job_id"], entry["due"]) == (kept_path(job), USER, job, False)


def test_a_job_that_succeeded_or_was_cancelled_is_not_kept(cluster: Cluster):
    """Slurm 22.05 and 24.11 give a cancelled job's Epilog exit codes of 0 (seen here): it counts
    as succeeded, and its directory goes to the trash like a successful job's."""
    keep_on(cluster)
    fine = cluster.submit('#!/bin/sh\necho fine > "$SCRATCH/out"\n', USER, "-w", "n1")
    assert cluster.wait_job(fine, {"COMPLETED"}) == "COMPLETED"
    running = cluster.submit('#!/bin/sh\necho partial > "$SCRATCH/out"\nexec sleep 120\n', USER, "-w", "n1")
    cluster.wait_job(running, {"RUNNING"})
    wait_for("the job's output", lambda: cluster.node_path("n1", f"/scratch/job_{running}/out").exists(), 30)
    cluster.client(["scancel", str(running)])
    assert cluster.wait_job(running, {"CANCELLED"}) == "CANCELLED"
    for job in (fine, running):
        wait_for(f"/scratch/job_{job} to leave n1", lambda: not cluster.node_path("n1", f"/scratch/job_{job}").exists(), 30)
        assert not cluster.node_path("n1", kept_path(job)).exists()
    wait_for("the trash to be empty", lambda: not any(cluster.node_path("n1", f"/scratch/{TRASH_NAME}").iterdir()), 60)


def test_the_health_check_expires_kept_directories(cluster: Cluster):
    job, kept = failed_job_kept(cluster, "#!/bin/sh\ntouch \"$SCRATCH/x\"\nexit 1\n")
    cluster.write_scratch_conf("n1", {"jobs": {"keep_failed": "1s"}})  # slurmd's next health check finds it past its time
    wait_for(f"{kept_path(job)} to go", lambda: not kept.exists(), 4 * HEALTH_INTERVAL + 30)
    assert not cluster.node_drained("n1")
