"""docker-compose.yml, run for real without a Docker engine (docker/rehearse.py stands in for one):
the image built from docker/Dockerfile, the munge key made once, slurmctld and two privileged
nodes whose boot stripes two loop-file disks into /scratch before slurmd; the README's command
(srun -N2 as alice) sees its $SCRATCH on both nodes; the README's drain/repair/resume story;
`stop` unmounts and detaches the disks. Also with a cgroup2 at /sys/fs/cgroup, as on a cgroup v2
Docker host, where slurmd would fail without docker/cgroup.conf."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from lab.node_boot import BootstrapError, loop_backing_identity, wait_for

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
README_COMMAND = ("srun", "-N2", "sh", "-c", 'echo "$(hostname) $SCRATCH"; df -h "$SCRATCH"')


def _rehearse():
    spec = importlib.util.spec_from_file_location("rehearse", REPO / "docker" / "rehearse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _loops_backed_by(images: list[Path]) -> list[str]:
    identities = {(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
                  for st in (os.stat(image) for image in images)}
    return [f"/dev/{name}" for name in os.listdir("/sys/block") if name.startswith("loop")
            and loop_backing_identity(f"/dev/{name}") in identities]


@pytest.fixture(params=[False, True], ids=["machine-cgroups", "cgroup2-at-sys-fs-cgroup"])
def compose(request):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for program in ("mmdebstrap", "unshare", "nsenter"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed")
    pytest.importorskip("yaml")
    rehearse = _rehearse()
    work = Path(tempfile.mkdtemp(prefix="compose-rehearsal-", dir="/var/tmp"))
    compose = rehearse.Compose(REPO / "docker-compose.yml", work, cgroup_v2=request.param)
    try:
        yield compose
    finally:
        compose.down(grace=60)
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def test_compose_cluster_runs_the_readme_command_and_stops_clean(compose):
    compose.build()
    compose.up()
    ctl, n1, n2 = (compose.containers[name] for name in ("slurmctld", "n1", "n2"))
    keygen_log = compose.containers["keygen"].log()
    assert "made the cluster's munge key" in keygen_log, keygen_log

    def nodes_idle():
        out = ctl.exec(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout
        return sorted(out.splitlines()) == ["n1 idle", "n2 idle"]
    try:
        wait_for("n1 and n2 idle", nodes_idle, 180, 1)
    except BootstrapError as exc:  # say why: every container's output
        raise AssertionError(f"{exc}\n" + "\n".join(
            f"--- {name}\n{c.log()[-3000:]}" for name, c in compose.containers.items())) from exc

    for node in (n1, n2):
        assert "/scratch ready on /dev/loop" in node.log(), node.log()
        status = node.exec(["slurm-scratch", "status"]).stdout
        assert "btrfs (2 disk(s))" in status, status

    readme = (REPO / "README.md").read_text()
    assert f"docker compose exec -u alice -w /home/alice slurmctld {shlex.join(README_COMMAND)}" \
        in readme, "the README's command is not the one rehearsed here"
    out = ctl.exec(README_COMMAND, user="alice", workdir="/home/alice", timeout=180).stdout
    jobs = dict(re.findall(r"^(n[12]) (/scratch/job_\d+)$", out, re.M))
    assert set(jobs) == {"n1", "n2"} and len(set(jobs.values())) == 1, out
    assert out.count(" /scratch\n") == 2, out  # df: each job's directory is on the volume

    if not compose.cgroup_v2:  # once is enough (a minute of health checks)
        # the README's story: a broken volume drains its node with a scratch: reason, `setup`
        # repairs it and the next health check resumes the node (HealthCheckInterval=30)
        def reason(node: str) -> str:
            return ctl.exec(["sinfo", "-R", "-h", "-n", node, "-o", "%E"]).stdout.strip()
        # lazy: a reaper or health probe may still hold /scratch for a moment (as in make demo)
        n2.exec(["umount", "--lazy", "/scratch"])
        # bounds of five intervals: a loaded 2-core machine runs slurmd's checks late
        wait_for("n2 to be drained", lambda: reason("n2").startswith("scratch:"), 150, 1)
        assert reason("n1") == ""
        n2.exec(["slurm-scratch", "setup"])
        wait_for("n2 to be resumed", lambda: reason("n2") == "", 150, 1)

    images = sorted((compose.work / "volumes").glob("n?-disks/disk*.img"))
    assert len(images) == 4 and len(_loops_backed_by(images)) == 4
    statuses = {name: compose.containers[name].stop(grace=60) for name in ("n1", "n2")}
    assert statuses == {"n1": 0, "n2": 0}, (n1.log()[-2000:], n2.log()[-2000:])
    for node in (n1, n2):
        assert "node_bootstrap: unmounted /scratch, detached" in node.log(), node.log()[-2000:]
    assert _loops_backed_by(images) == []
    assert ctl.stop(grace=30) == 0, ctl.log()[-2000:]
