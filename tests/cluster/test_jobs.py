"""Real jobs of an unprivileged user on a real Slurm cluster get, use and lose their $SCRATCH.

Issue 2 (per-job directories) and issue 4 ("What it must show", first point), end to end: the
installed Prolog, TaskProlog and Epilog run by slurmd on two nodes, each with its own /scratch.
"""
from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import pytest

from cluster.conftest import HEALTH_INTERVAL
from lab.cluster import Cluster, wait_for
from slurm_scratch.layout import REAPER_LOCK, TRASH_NAME

pytestmark = pytest.mark.cluster

USER, OTHER = "sstest1", "sstest2"


def hold_until(flag: Path) -> str:
    """Shell lines that keep a job running until the test creates `flag` (at most 60 s)."""
    return f"for i in $(seq 600); do [ -e {flag} ] && break; sleep 0.1; done"


def values(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a job's output."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def wait_output(cluster: Cluster, name: str, marker: str, user: str = USER) -> str:
    path = cluster.home(user) / name

    def marked():
        text = path.read_text() if path.exists() else ""
        return text if marker in text.splitlines() else None

    return wait_for(f"{marker!r} in {path}", marked, 60)


@pytest.mark.every_major
def test_cluster_runs_the_intended_slurm_everywhere(cluster: Cluster):
    release = cluster.flavour.removeprefix("slurm-")
    versions = cluster.slurm_versions()
    assert all(v.startswith(release + ".") for v in versions.values()), versions


@pytest.mark.every_major
def test_sbatch_job_has_private_writable_scratch(cluster: Cluster):
    flag = cluster.home(USER) / "release-sbatch"
    job = cluster.submit(f"""#!/bin/bash
echo "SCRATCH=$SCRATCH"
echo "NODE=$(hostname)"
echo "STAT=$(stat -c '%a %U' "$SCRATCH")"
echo data > "$SCRATCH/file" && echo "READBACK=$(cat "$SCRATCH/file")"
echo READY
{hold_until(flag)}
""", USER, "-w", "n1")
    out = values(wait_output(cluster, f"slurm-{job}.out", "READY"))
    scratch = out["SCRATCH"]
    assert scratch.startswith("/scratch/"), out
    assert out["NODE"] == "n1"
    assert out["STAT"] == f"700 {USER}"
    assert out["READBACK"] == "data"
    on_node = cluster.node_path("n1", scratch)
    assert on_node.is_dir() and (on_node / "file").read_text() == "data\n"

    # another user's job on the same node can neither list the directory nor read its file
    other = cluster.srun("-w", "n1", "-n1", "sh", "-c",
                         f"ls {scratch}; cat {scratch}/file", user=OTHER)
    assert other.returncode != 0
    assert other.stderr.count("Permission denied") == 2, other.stderr
    assert "data" not in other.stdout

    flag.touch()
    assert cluster.wait_job(job, {"COMPLETED"}) == "COMPLETED"
    assert not on_node.exists(), f"{scratch} still on n1 after the job ended"


def test_srun_job_has_scratch_and_loses_it_afterwards(cluster: Cluster):
    result = cluster.srun("-w", "n2", "-n1", "bash", "-c",
                          'echo "SCRATCH=$SCRATCH"; echo "STAT=$(stat -c "%a %U" "$SCRATCH")"; '
                          'echo x > "$SCRATCH/f" && echo WROTE=yes; echo "NODE=$(hostname)"')
    assert result.returncode == 0, result.stderr
    out = values(result.stdout)
    assert out["SCRATCH"].startswith("/scratch/") and out["NODE"] == "n2"
    assert out["STAT"] == f"700 {USER}" and out["WROTE"] == "yes"
    # the Epilog runs once the allocation is released, after srun has returned
    wait_for(f"{out['SCRATCH']} to go from n2",
             lambda: not cluster.node_path("n2", out["SCRATCH"]).exists(), 30)


@pytest.mark.every_major
def test_two_node_job_gets_a_directory_on_each_node(cluster: Cluster):
    flag = cluster.home(USER) / "release-2node"
    job = cluster.submit(f"""#!/bin/bash
srun -N2 --ntasks-per-node=1 bash -c 'echo data > "$SCRATCH/mine.$(hostname)";
  echo "$(hostname)=$SCRATCH $(stat -c %U:%a "$SCRATCH") $(ls "$SCRATCH" | tr "\\n" " ")"'
echo READY
{hold_until(flag)}
""", USER, "-N2")
    out = values(wait_output(cluster, f"slurm-{job}.out", "READY"))
    for node in ("n1", "n2"):
        scratch, owner_mode, listing = out[node].split(" ", 2)
        assert owner_mode == f"{USER}:700"
        # each node's directory holds only what the task on that node wrote: two directories
        assert listing.split() == [f"mine.{node}"], out
        assert cluster.node_path(node, scratch).is_dir()
    dir_n1 = cluster.node_path("n1", out["n1"].split()[0])
    dir_n2 = cluster.node_path("n2", out["n2"].split()[0])
    assert os.stat(dir_n1).st_dev != os.stat(dir_n2).st_dev, "both on one filesystem"

    flag.touch()
    cluster.wait_job(job, {"COMPLETED"})
    assert not dir_n1.exists() and not dir_n2.exists()


def test_array_tasks_get_distinct_directories(cluster: Cluster):
    home = cluster.home(USER)
    job = cluster.submit("""#!/bin/bash
touch "$SCRATCH/task.$SLURM_ARRAY_TASK_ID"
echo "SCRATCH=$SCRATCH"
echo "JOB=$SLURM_JOB_ID"
echo "NODE=$(hostname)"
echo "LISTING=$(ls "$SCRATCH" | tr '\\n' ' ')"
""", USER, "--array=1-4", f"--output={home}/array-%A_%a.out")
    outputs = []
    for task in range(1, 5):
        cluster.wait_job(f"{job}_{task}", {"COMPLETED"})
        outputs.append(values((home / f"array-{job}_{task}.out").read_text()))
    dirs = [out["SCRATCH"] for out in outputs]
    assert len(set(dirs)) == 4, dirs
    assert len({out["JOB"] for out in outputs}) == 4
    for task, out in enumerate(outputs, start=1):
        assert out["LISTING"].split() == [f"task.{task}"], out  # no task saw another's files
        assert not cluster.node_path(out["NODE"], out["SCRATCH"]).exists()


def test_next_job_does_not_wait_for_deletion_of_a_big_directory(cluster: Cluster):
    """Job 1 leaves 20,000 files. While the reaper cannot delete anything (the test holds its
    lock on the node), job 1 must still end and job 2 start on the same node: the Epilog only
    renames the directory into the trash. Then the trash is emptied for real."""
    trash = cluster.node_path("n1", f"/scratch/{TRASH_NAME}")
    with cluster.flock_on_node("n1", REAPER_LOCK):
        first = cluster.submit("""#!/bin/bash
mkdir "$SCRATCH/many" && cd "$SCRATCH/many" && seq 1 20000 | xargs touch
echo "FILES=$(ls | wc -l)"
echo "SCRATCH=$SCRATCH"
""", USER, "-w", "n1", "--exclusive")
        second = cluster.submit("""#!/bin/bash
echo "STARTED=yes"
echo "NODE=$(hostname)"
""", USER, "-w", "n1", "--exclusive", f"--dependency=afterany:{first}")
        assert cluster.wait_job(first, {"COMPLETED"}) == "COMPLETED"
        assert cluster.wait_job(second, {"COMPLETED"}) == "COMPLETED"
        out1, out2 = values(cluster.job_output(first)), values(cluster.job_output(second))
        assert out1["FILES"] == "20000"
        assert out2 == {"STARTED": "yes", "NODE": "n1"}
        assert not cluster.node_path("n1", out1["SCRATCH"]).exists()
        # job 2 has run and ended, and job 1's files are all still waiting in the trash
        assert sum(len(files) for _, _, files in os.walk(trash)) >= 20000
    reaped = cluster.run_on_node("n1", [str(cluster.prefix / "bin" / "slurm-scratch"), "reap"],
                                 timeout=120)
    assert reaped.returncode == 0
    assert not trash.exists() or os.listdir(trash) == []


def test_export_scratch_and_tmpdir(cluster: Cluster):
    cluster.write_scratch_conf("n2", {"jobs": {"export": "SCRATCH,TMPDIR"}})
    command = ('echo "S=$SCRATCH"; echo "T=$TMPDIR"; '
               'echo x > "$TMPDIR/t" && echo "SEEN=$(ls "$SCRATCH")"')
    both = cluster.srun("-w", "n2", "-n1", "bash", "-c", command)
    assert both.returncode == 0, both.stderr
    out = values(both.stdout)
    assert out["S"].startswith("/scratch/") and out["T"] == out["S"]
    assert out["SEEN"] == "t"  # a file made through $TMPDIR is in $SCRATCH
    # n1 keeps the default (SCRATCH only): TMPDIR stays what Slurm sets (/tmp)
    one = values(cluster.srun("-w", "n1", "-n1", "bash", "-c", command).stdout)
    assert one["S"].startswith("/scratch/") and one["T"] != one["S"]


def test_a_squatted_next_job_directory_neither_fails_the_job_nor_drains_the_node(cluster: Cluster):
    """Issue 8: job ids are sequential, so another user can take /scratch/job_<next> on a node
    first (here a symlink to a root-owned directory outside the volume, then a directory of their
    own). The next jobs run there all the same, each in a fresh private $SCRATCH; the node is
    never drained; the squatter's entries end up in the trash, the symlink never followed."""
    assert not cluster.node_drained("n1") and cluster.node_reason("n1") == ""
    config = cluster.scontrol("show", "config").stdout
    next_id = int(next(line.split("=", 1)[1] for line in config.splitlines() if line.split("=")[0].strip() == "NEXT_JOB_ID"))
    other = pwd.getpwnam(OTHER)
    as_other = ["setpriv", f"--reuid={other.pw_uid}", f"--regid={other.pw_gid}", "--init-groups", "--"]
    etc_before = os.stat(cluster.node_path("n1", "/etc"))
    cluster.run_on_node("n1", [*as_other, "ln", "-s", "/etc", f"/scratch/job_{next_id}"])
    cluster.run_on_node("n1", [*as_other, "mkdir", "-m", "0777", f"/scratch/job_{next_id + 1}"])
    for job_id in (next_id, next_id + 1):
        result = cluster.srun("-w", "n1", "-n1", "bash", "-c",
                              'echo "JOB=$SLURM_JOB_ID"; echo "SCRATCH=$SCRATCH"; '
                              'echo "STAT=$(stat -c "%a %U %F" "$SCRATCH")"; echo x > "$SCRATCH/f" && echo WROTE=yes')
        assert result.returncode == 0, result.stderr
        out = values(result.stdout)
        assert out["JOB"] == str(job_id), (out, "another job took the id: the squat was not tested")
        assert out["SCRATCH"] == f"/scratch/job_{job_id}"
        assert out["STAT"] == f"700 {USER} directory" and out["WROTE"] == "yes"
        assert not cluster.node_drained("n1") and cluster.node_reason("n1") == "", cluster.node_info("n1")
    etc_after = os.stat(cluster.node_path("n1", "/etc"))
    assert (etc_after.st_uid, etc_after.st_mode) == (etc_before.st_uid, etc_before.st_mode)
    # Some health checks later the node is still in service (nothing recorded against it).
    time.sleep(2 * HEALTH_INTERVAL)
    assert not cluster.node_drained("n1") and cluster.node_reason("n1") == "", cluster.node_info("n1")


@pytest.mark.every_major
def test_tmpdisk_is_the_volume_and_a_bigger_tmp_request_never_runs(cluster: Cluster):
    """slurm.conf says TmpFS=/scratch and TmpDisk = what the volume holds: Slurm shows that,
    slurmd measured it at registration (the volume was mounted before slurmd started), a job
    asking `--tmp` for all of it runs, and one asking for more is never scheduled on the node:
    sbatch rejects it."""
    mib = cluster.tmp_disk_mib
    for node in cluster.nodes:
        assert cluster.scratch_mib(node) == mib
        assert int(cluster.node_info(node)["TmpDisk"]) == mib
        assert f"TmpDisk={mib} " in cluster.slurmd_log(node), "slurmd measured something else"

    home = cluster.home(USER)
    too_big = cluster.client(["sbatch", "--parsable", f"--chdir={home}", "-w", "n1", "-N1",
                              f"--tmp={mib + 1}M", f"--output={home}/slurm-%j.out"], USER,
                             input="#!/bin/bash\necho RAN\n", check=False, timeout=30)
    # 22.05, 24.11 and 26.05 all reject it at submission (none leaves it pending)
    assert too_big.returncode != 0, f"sbatch accepted job {too_big.stdout.strip()}"
    assert "Temporary disk specification can not be satisfied" in too_big.stderr, too_big.stderr
    fits = cluster.submit("#!/bin/bash\necho \"RAN $SCRATCH\"\n", USER, "-w", "n1",
                          f"--tmp={mib}M")
    assert cluster.wait_job(fits, {"COMPLETED"}) == "COMPLETED"
    assert cluster.job_output(fits).startswith("RAN /scratch/")
    print(f"{cluster.flavour}: TmpDisk={mib} MiB; --tmp={mib + 1}M rejected: "
          f"{too_big.stderr.strip().splitlines()[-1]}")

    # the tool shows both numbers, and check-config finds nothing to warn about
    tool = str(cluster.prefix / "bin" / "slurm-scratch")
    status = cluster.run_on_node("n1", [tool, "status"]).stdout
    assert f"tmpdisk:    TmpFS=/scratch TmpDisk={mib} MiB, volume {mib} MiB (node n1, " \
        f"{cluster.slurm_conf})" in status.splitlines(), status
    checked = cluster.run_on_node("n1", [tool, "check-config"])
    assert "warning" not in checked.stderr, checked.stderr
