"""Issue 11, part 3: a failed job's directory is kept for a while ([jobs] keep_failed) — through the
installed hooks (`make install`), as slurmd runs them (env -i plus Slurm's variables), on real
ext4 and btrfs filesystems on loop devices, with the health check's housekeeping against a fake
`scontrol`/`squeue` (lab.fake_slurm).

Kept on failure (an exit code, a signal, in any of the three variables; a malformed value), to the
trash on success; deleted after its time however its user touches it; deleted early under space
pressure, oldest first (also on a node already drained for space, which is then resumed); listed
by `status`; never touched by the sweep; `keep_failed = 0` is today's behaviour.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from lab.fake_slurm import FakeSlurm
from lab.jobs import NODE, poll, scratch_volume

from slurm_scratch import layout

from test_health_drain import no_memory  # noqa: F401 (autouse: each test starts as a node just booted)

pytestmark = pytest.mark.root

UID1 = 4201
KEPT = ".kept"
FAILED = {"SLURM_JOB_EXIT_CODE": "256", "SLURM_JOB_EXIT_CODE2": "1:0", "SLURM_JOB_DERIVED_EC": "256"}


class Node:
    """A scratch volume (lab.jobs.Scratch), the installed hooks, and a fake Slurm for the health check."""

    def __init__(self, scratch, installed: Path, slurm: FakeSlurm) -> None:
        self.scratch = scratch
        self.hooks = installed / "libexec" / "slurm-scratch"
        self.cli_path = installed / "bin" / "slurm-scratch"
        self.slurm = slurm
        self.mount_point = scratch.mount_point
        self.pattern = "job_%j"
        self.configure()

    def configure(self, jobs: dict[str, str] | None = None, health: dict[str, str] | None = None) -> None:
        self.pattern = (jobs or {}).get("dir", self.pattern)
        self.scratch.configure({
            "volume": {"backend": "single", "filesystem": self.scratch.fstype, "devices": self.scratch.device},
            "jobs": {"keep_failed": "1h", "sweep_guard": "0", "dir": self.pattern, **(jobs or {})},
            "health": {"probe_timeout": "20", **(health or {})},
            "slurm": {"scontrol": str(self.slurm.dir / "scontrol"), "squeue": str(self.slurm.dir / "squeue")},
        })

    def prolog(self, job_id: int, user: str = "sstest1") -> None:
        result = self.scratch.hook("prolog", self.scratch.job_env(job_id, user), hooks_dir=self.hooks)
        assert result.returncode == 0, result.stderr

    def epilog(self, job_id: int, user: str = "sstest1", **exit_vars: object) -> subprocess.CompletedProcess:
        env = self.scratch.job_env(job_id, user, "epilog_slurmd", **exit_vars)
        result = self.scratch.hook("epilog", env, hooks_dir=self.hooks, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    def job(self, job_id: int, megabytes: int = 1, user: str = "sstest1", **exit_vars: object) -> subprocess.CompletedProcess:
        """A job that writes `megabytes` into its directory and ends with the exit variables given."""
        self.prolog(job_id, user)
        self.scratch.as_user(user, 'dd if=/dev/zero of="$1/data" bs=1M count="$2" status=none; echo evidence > "$1/log"',
                             str(self.job_dir(job_id, user)), str(megabytes))
        return self.epilog(job_id, user, **exit_vars)

    def job_dir(self, job_id: int, user: str = "sstest1") -> Path:
        return self.scratch.job_dir(job_id, self.pattern, user)

    def kept(self, job_id: int, user: str = "sstest1") -> Path:
        return self.mount_point / KEPT / user / f"job_{job_id}"

    def healthcheck(self) -> subprocess.CompletedProcess:
        env = {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(self.scratch.config), "SLURM_SCRATCH_TEST_TAG": self.scratch.tag}
        return self.scratch.hook("healthcheck", env, hooks_dir=self.hooks)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {"SLURM_SCRATCH_CONF": str(self.scratch.config), "SLURM_SCRATCH_TEST_TAG": self.scratch.tag}
        argv = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), str(self.cli_path), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")

    def free_percent(self) -> float:
        os.sync()
        st = os.statvfs(self.mount_point)
        return 100.0 * st.f_bavail / st.f_blocks


@pytest.fixture(params=["ext4", "btrfs"])
def node(request, loops, installed, tmp_path):
    with scratch_volume(loops, request.param, size_mb=512) as scratch:
        yield Node(scratch, installed, FakeSlurm(tmp_path / "slurm"))


def kept_record(path: Path) -> tuple[float, int]:
    kept_at, job_id = os.getxattr(path, layout.KEPT_XATTR, follow_symlinks=False).split()
    return int(kept_at) / 1e9, int(job_id)


def assert_level(path: Path) -> None:
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755, (path, st)


# ---- the Epilog's decision ----------------------------------------------------------------------


@pytest.mark.parametrize("exit_vars", [
    FAILED,  # exit 1, as Slurm 22.05 sets all three
    {"SLURM_JOB_EXIT_CODE": "9", "SLURM_JOB_EXIT_CODE2": "0:9", "SLURM_JOB_DERIVED_EC": "0"},  # SIGKILL
    {"SLURM_JOB_EXIT_CODE": None, "SLURM_JOB_EXIT_CODE2": "0:15", "SLURM_JOB_DERIVED_EC": None},  # signal, one variable
    {"SLURM_JOB_EXIT_CODE": "0", "SLURM_JOB_EXIT_CODE2": "0:0", "SLURM_JOB_DERIVED_EC": "512"},  # a step failed
], ids=["exit-code", "signal", "exit-code2-only", "derived"])
def test_a_failed_job_is_kept_private_and_intact(node, exit_vars) -> None:
    job_dir = node.scratch.job_dir(301)
    before = time.time()
    result = node.job(301, **exit_vars)
    kept = node.kept(301)
    assert not os.path.lexists(job_dir)
    assert (kept / "log").read_text() == "evidence\n" and (kept / "data").stat().st_size == 1 << 20
    st = os.lstat(kept)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID1, UID1, 0o700)
    assert_level(node.mount_point / KEPT)
    assert_level(node.mount_point / KEPT / "sstest1")
    kept_at, job_id = kept_record(kept)
    assert job_id == 301 and before <= kept_at <= time.time()
    failing = next(f"{key}={value}" for key, value in exit_vars.items() if value not in (None, "0", "0:0"))
    assert f"epilog kept {job_dir} as {kept} until " in result.stderr and failing in result.stderr, result.stderr
    assert "job=301" in result.stderr
    node.scratch.wait_reapers()
    assert node.scratch.trash_entries() == []


@pytest.mark.parametrize("exit_vars", [
    {},  # all three zero, as Slurm sets them for a job that succeeded
    {"SLURM_JOB_EXIT_CODE": None, "SLURM_JOB_EXIT_CODE2": None, "SLURM_JOB_DERIVED_EC": None},  # none set
], ids=["zero", "unset"])
def test_a_job_that_succeeded_goes_to_the_trash(node, exit_vars) -> None:
    result = node.job(302, **exit_vars)
    assert "retired" in result.stderr and "to trash as job_302." in result.stderr
    assert not os.path.lexists(node.scratch.job_dir(302))
    assert not os.path.lexists(node.mount_point / KEPT)  # nothing kept, no area made
    node.scratch.wait_trash_empty()


def test_a_malformed_exit_code_is_logged_and_counts_as_failed(node) -> None:
    result = node.job(303, SLURM_JOB_EXIT_CODE="1x", SLURM_JOB_EXIT_CODE2="0:0", SLURM_JOB_DERIVED_EC="0")
    assert "warning: job=303 epilog: SLURM_JOB_EXIT_CODE='1x' is not an exit code: the job counts as failed" in result.stderr
    assert (node.kept(303) / "log").read_text() == "evidence\n"


def test_keep_failed_0_is_todays_behaviour(node) -> None:
    node.configure(jobs={"keep_failed": "0"})
    result = node.job(304, **FAILED)
    assert f"epilog retired {node.scratch.job_dir(304)} to trash as job_304." in result.stderr
    assert "kept" not in result.stderr and not os.path.lexists(node.mount_point / KEPT)
    node.scratch.wait_trash_empty()


def test_a_requeued_job_that_fails_again_replaces_its_older_kept_directory(node) -> None:
    node.job(305, **FAILED)
    first = kept_record(node.kept(305))[0]
    node.prolog(305)
    node.scratch.as_user("sstest1", 'echo second run > "$1/log"', str(node.scratch.job_dir(305)))
    result = node.epilog(305, **FAILED)
    assert (node.kept(305) / "log").read_text() == "second run\n" and not (node.kept(305) / "data").exists()
    assert kept_record(node.kept(305))[0] > first
    assert f"an older kept {node.kept(305)} went to the trash" in result.stderr
    node.scratch.wait_trash_empty()


def test_when_keeping_fails_the_directory_goes_to_the_trash(node) -> None:
    node.job(306, **FAILED)  # makes the area
    subprocess.run(["chattr", "+i", str(node.mount_point / KEPT / "sstest1")], check=True)  # nothing can be renamed into it
    try:
        result = node.job(307, **FAILED)
    finally:
        subprocess.run(["chattr", "-i", str(node.mount_point / KEPT / "sstest1")], check=True)
    assert f"{node.scratch.job_dir(307)} could not be kept (Operation not permitted): it goes to the trash" in result.stderr
    assert "to trash as job_307." in result.stderr and not os.path.lexists(node.kept(307))
    node.scratch.wait_trash_empty()


# ---- housekeeping: expiry and reclaim ------------------------------------------------------------


def test_kept_directories_expire_after_their_time_whatever_their_user_does(node) -> None:
    node.configure(jobs={"keep_failed": "2s"})
    node.job(311, **FAILED)
    node.configure(jobs={"keep_failed": "1h"})
    result = node.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert node.kept(311).exists()  # not yet
    node.configure(jobs={"keep_failed": "2s"})
    kept_at = kept_record(node.kept(311))[0]
    poll(lambda: time.time() > kept_at + 2.5, 10, what="the kept directory's time to pass")
    # Its user touches it, changes its mode, writes into it: none of that is the keep time.
    node.scratch.as_user("sstest1", 'touch "$1" "$1/log"; chmod 0750 "$1"; chmod 0700 "$1"; echo more > "$1/new"', str(node.kept(311)))
    result = node.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not os.path.lexists(node.kept(311))
    assert f"{node.kept(311)} went to the trash (kept until " in result.stderr
    assert node.scratch.trash_entries() == []  # the housekeeping's reaper deleted it


def test_kept_directories_go_early_oldest_first_when_space_is_short(node) -> None:
    for job_id in (321, 322, 323):
        node.job(job_id, megabytes=48, **FAILED)
    free = node.free_percent()
    one = 100.0 * (48 << 20) / (os.statvfs(node.mount_point).f_blocks * os.statvfs(node.mount_point).f_frsize)
    # Short of space now; no longer once one kept directory is gone.
    node.configure(jobs={"keep_reclaim_free_percent": f"{free + one / 2:.2f}"})
    result = node.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not os.path.lexists(node.kept(321))  # the oldest
    assert node.kept(322).exists() and node.kept(323).exists()
    assert f"{node.kept(321)} (kept until " in result.stderr and "went to the trash early" in result.stderr
    assert node.scratch.trash_entries() == []
    assert node.free_percent() > free + one / 2
    assert node.slurm.state() == ("IDLE", "")


def test_a_node_drained_for_space_reclaims_kept_directories_and_is_resumed(node) -> None:
    for job_id in (331, 332):
        node.job(job_id, megabytes=48, **FAILED)
    free = node.free_percent()
    one = 100.0 * (48 << 20) / (os.statvfs(node.mount_point).f_blocks * os.statvfs(node.mount_point).f_frsize)
    # The drain threshold is crossed now (the kept data is what fills the volume); the reclaim one lies above it.
    health = {"min_free_percent": f"{free + one / 4:.2f}", "min_free_inodes_percent": "1"}
    node.configure(jobs={"keep_reclaim_free_percent": f"{free + one / 2:.2f}"}, health=health)
    result = node.healthcheck()
    assert result.returncode == 1 and "full (min free" in result.stdout
    state, reason = node.slurm.state()
    assert state.endswith("+DRAIN") and reason.startswith("scratch:") and "full" in reason
    assert not os.path.lexists(node.kept(331)) and node.kept(332).exists()
    result = node.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert node.slurm.state() == ("IDLE", "")


# ---- status and the sweep -------------------------------------------------------------------------


def test_status_lists_what_is_kept_for_whom_until_when(node) -> None:
    node.job(341, **FAILED)
    node.job(342, user="sstest2", **FAILED)
    report = json.loads(node.cli("status", "--json").stdout)["kept"]
    assert report["area"] == str(node.mount_point / KEPT) and report["keep_failed_seconds"] == 3600
    by_path = {entry["path"]: entry for entry in report["dirs"]}
    assert set(by_path) == {str(node.kept(341)), str(node.kept(342, "sstest2"))}
    entry = by_path[str(node.kept(341))]
    assert (entry["user"], entry["uid"], entry["job_id"], entry["due"]) == ("sstest1", UID1, 341, False)
    kept_at = kept_record(node.kept(341))[0]
    assert entry["until"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(kept_at + 3600))
    text = node.cli("status").stdout
    assert f"kept:       2 in {node.mount_point / KEPT}" in text
    assert f"{node.kept(342, 'sstest2')}  job 342  sstest2 (uid 4202)  kept " in text and f"until {entry['until']}" in text
    node.configure(jobs={"keep_failed": "0"})  # off: what was kept is shown as due, until the next health check
    assert all(entry["due"] for entry in json.loads(node.cli("status", "--json").stdout)["kept"]["dirs"])
    assert node.healthcheck().returncode == 0
    assert "kept" not in json.loads(node.cli("status", "--json").stdout) and "kept:" not in node.cli("status").stdout


@pytest.mark.parametrize("pattern", ["job_%j", "%u/job_%j"])
def test_the_sweep_never_touches_the_kept_area(node, pattern) -> None:
    node.configure(jobs={"dir": pattern})
    node.job(351, **FAILED)
    kept = node.kept(351)
    assert kept.exists()
    old = time.time() - 7200
    for path in (kept, kept.parent, kept.parent.parent):
        os.utime(path, (old, old))
    (node.slurm.dir / "squeue.out").write_text("")  # no job runs here
    result = node.cli("sweep", "--node", NODE)
    assert result.returncode == 0, result.stderr
    assert "swept 0 orphaned job directories" in result.stdout and KEPT not in result.stdout
    assert (kept / "log").read_text() == "evidence\n"
    result = node.healthcheck()
    assert result.returncode == 0 and kept.exists()
