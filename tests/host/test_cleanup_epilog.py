"""The Epilog (one rename into the trash), the background reaper, `slurm-scratch reap`, and ending
the processes a job left in its directory — on real ext4 and xfs filesystems."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from lab.jobs import HOOKS, TRASH, make_canary, poll, scratch_volume, snapshot
from lab.kernel import sh
from slurm_scratch import locks

pytestmark = pytest.mark.root

REAPER_LOCK = "/run/slurm-scratch/reaper.lock"


@pytest.fixture(params=["ext4", "xfs"])
def scratch(request, loops):
    with scratch_volume(loops, request.param) as volume:
        yield volume


class reaper_lock_held:
    """Hold the reaper's lock: a reaper the Epilog starts gives up at once. On leaving, wait until
    that reaper has exited, so that it cannot take the lock after we let go of it."""

    def __init__(self, scratch) -> None:
        self.scratch = scratch
        self.lock_fd: int | None = None

    def __enter__(self):
        self.lock_fd = locks.acquire(REAPER_LOCK, wait=5)
        assert self.lock_fd is not None, f"{REAPER_LOCK} held for over 5 s"
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.scratch.wait_reapers()
        finally:
            os.close(self.lock_fd)


def fill_as_user(scratch, job_dir: Path, files: int = 200) -> None:
    """What a job leaves behind: nested directories and files, written by the job's user."""
    scratch.as_user(
        "sstest1",
        'cd "$1"; mkdir -p a/b/c d; i=0; while [ $i -lt "$2" ]; do echo $i > a/b/c/f$i; echo $i > d/g$i; i=$((i+1)); done; '
        "ln -s a/b relative_link; chmod 0500 a/b/c",
        str(job_dir),
        str(files // 2),
    )


def test_epilog_renames_the_dir_into_the_trash(scratch) -> None:
    assert scratch.prolog(201).returncode == 0
    job_dir = scratch.job_dir(201)
    fill_as_user(scratch, job_dir)
    inode = os.lstat(job_dir).st_ino
    # Hold the reaper's lock so that the trash is seen as the Epilog left it.
    with reaper_lock_held(scratch):
        result = scratch.epilog(201)
        assert result.returncode == 0, result.stderr
        assert not os.path.lexists(job_dir)
        (entry,) = scratch.trash_entries()
        assert entry.startswith("job_201.")
        assert os.lstat(scratch.trash / entry).st_ino == inode  # renamed, not copied
        assert f"retired {job_dir} to trash as {entry}; starting the reaper" in result.stderr and "job=201" in result.stderr
        assert (scratch.trash / entry / "a" / "b" / "c" / "f7").read_text() == "7\n"
    # A reaper started while the lock was held gave up at once; `slurm-scratch reap` empties it now.
    reaped = scratch.cli("reap")
    assert reaped.returncode == 0, reaped.stderr
    assert reaped.stdout == "reaped 1 trash entry\n"
    assert scratch.trash_entries() == []


def test_reaper_empties_the_trash_in_the_background(scratch) -> None:
    for job_id in (211, 212):
        assert scratch.prolog(job_id).returncode == 0
        fill_as_user(scratch, scratch.job_dir(job_id), files=2000)
    for job_id in (211, 212):
        result = scratch.epilog(job_id)
        assert result.returncode == 0, result.stderr
        assert not os.path.lexists(scratch.job_dir(job_id))
    scratch.wait_trash_empty(timeout=120)
    assert sorted(os.listdir(scratch.mount_point)) == sorted([TRASH, *(["lost+found"] if scratch.fstype == "ext4" else [])])
    scratch.wait_reapers()


def test_reap_with_empty_trash(scratch) -> None:
    result = scratch.cli("reap")
    assert result.returncode == 0 and result.stdout == "reaped 0 trash entries\n"


def test_epilogs_of_many_jobs_at_once_leave_an_empty_trash(scratch) -> None:
    jobs = list(range(220, 240))
    for job_id in jobs:
        assert scratch.prolog(job_id).returncode == 0
        (scratch.job_dir(job_id) / "out").write_text("x\n")
    processes = [
        subprocess.Popen(
            ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in scratch.job_env(job_id, context="epilog_slurmd").items()), str(HOOKS / "epilog")],
            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for job_id in jobs
    ]
    assert [process.wait(timeout=300) for process in processes] == [0] * len(jobs)
    for process in processes:
        process.communicate()
    assert not any(os.path.lexists(scratch.job_dir(job_id)) for job_id in jobs)
    scratch.wait_trash_empty(timeout=120)


def test_epilog_without_a_dir_exits_zero(scratch) -> None:
    result = scratch.epilog(250)
    assert result.returncode == 0, result.stderr
    assert f"no directory {scratch.job_dir(250)}" in result.stderr or "nothing to retire" in result.stderr
    # ... and the same for a second Epilog of a job already retired.
    assert scratch.prolog(251).returncode == 0
    assert scratch.epilog(251).returncode == 0
    again = scratch.epilog(251)
    assert again.returncode == 0 and "nothing to retire" in again.stderr


def test_epilog_without_a_dir_for_a_pattern_level_exits_zero(scratch) -> None:
    scratch.configure({"jobs": {"dir": "%u/job_%j"}})
    result = scratch.epilog(252)
    assert result.returncode == 0 and f"no directory {scratch.mount_point}/sstest1/job_252" in result.stderr


def test_epilog_leaves_a_dir_of_another_owner_alone(scratch) -> None:
    assert scratch.prolog(253, user="sstest2").returncode == 0
    (scratch.job_dir(253) / "theirs").write_text("keep\n")
    before = snapshot(scratch.mount_point)
    result = scratch.epilog(253, user="sstest1")
    assert result.returncode == 0
    assert "belongs to uid 4202, not the job's uid 4201: leaving it alone" in result.stderr
    assert snapshot(scratch.mount_point) == before


def test_epilog_on_unmounted_volume_exits_zero(scratch) -> None:
    plain = scratch.base / "not-mounted"
    plain.mkdir()
    (plain / "job_254").mkdir()
    scratch.configure(mount_point=str(plain))
    result = scratch.epilog(254)
    assert result.returncode == 0 and "is not mounted" in result.stderr
    assert (plain / "job_254").is_dir()


# ---- processes the job left behind ----------------------------------------------------------------


def _holds_file(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _is_running_sleep(process: subprocess.Popen) -> bool:
    try:
        return process.poll() is None and Path(f"/proc/{process.pid}/comm").read_text().strip() == "sleep"
    except OSError:
        return False


def test_epilog_ends_the_users_processes_in_the_dir_and_no_others(scratch) -> None:
    for job_id, user in ((301, "sstest1"), (302, "sstest1"), (303, "sstest2")):
        assert scratch.prolog(job_id, user=user).returncode == 0
    job_dir = scratch.job_dir(301)
    scratch.as_user("sstest1", 'mkdir "$1/work" && echo data > "$1/data"', str(job_dir))
    in_cwd = scratch.start_as("sstest1", ["/bin/sleep", "600"], cwd=job_dir / "work")
    holding = scratch.start_as("sstest1", ["/bin/sh", "-c", 'exec 3<"$0"; exec /bin/sleep 600', str(job_dir / "data")])
    other_job = scratch.start_as("sstest1", ["/bin/sleep", "600"], cwd=scratch.job_dir(302))
    other_user = scratch.start_as("sstest2", ["/bin/sleep", "600"], cwd=scratch.job_dir(303))
    elsewhere = scratch.start_as("sstest1", ["/bin/sleep", "600"], cwd="/tmp")
    poll(lambda: all(_is_running_sleep(p) for p in (in_cwd, holding, other_job, other_user, elsewhere)), 30, what="the sleeps")
    poll(lambda: _holds_file(holding.pid, job_dir / "data"), 30, what="the open file")

    result = scratch.epilog(301)
    assert result.returncode == 0, result.stderr
    assert in_cwd.wait(timeout=30) == -9
    assert holding.wait(timeout=30) == -9
    assert f"killed pid {in_cwd.pid} (sleep) of uid 4201: it held {job_dir} (cwd)" in result.stderr
    assert f"killed pid {holding.pid} (sleep) of uid 4201: it held {job_dir} (fd 3)" in result.stderr
    for survivor in (other_job, other_user, elsewhere):
        assert survivor.poll() is None, "a process outside the job's directory was ended"
    assert not os.path.lexists(job_dir)
    scratch.wait_trash_empty()
    assert scratch.job_dir(302).is_dir() and scratch.job_dir(303).is_dir()


def test_kill_processes_no_leaves_them_running(scratch) -> None:
    scratch.configure({"jobs": {"kill_processes": "no"}})
    assert scratch.prolog(311).returncode == 0
    in_cwd = scratch.start_as("sstest1", ["/bin/sleep", "600"], cwd=scratch.job_dir(311))
    poll(lambda: _is_running_sleep(in_cwd), 30, what="the sleep")
    result = scratch.epilog(311)
    assert result.returncode == 0 and "killed" not in result.stderr
    assert in_cwd.poll() is None
    assert not os.path.lexists(scratch.job_dir(311))
    scratch.wait_trash_empty()


def test_a_mount_inside_the_job_dir_is_detached_never_deleted_into(scratch) -> None:
    # A filesystem mounted inside the job's directory (a user's FUSE or bind mount; here root binds
    # a directory outside the volume) is detached lazily by the Epilog: the reaper, which never
    # crosses into another filesystem anyway, finds an empty directory, and what the mount showed
    # is untouched.
    assert scratch.prolog(321).returncode == 0
    outside = make_canary(scratch.base)
    before = snapshot(outside)
    inner = scratch.job_dir(321) / "a" / "mnt"
    inner.mkdir(parents=True)
    sh("mount", "--bind", str(outside), str(inner))
    try:
        (scratch.job_dir(321) / "gone.txt").write_text("bye\n")
        result = scratch.epilog(321)
        assert result.returncode == 0, result.stderr
        assert f"{inner}: a mount inside the job directory" in result.stderr and "detached it lazily" in result.stderr
        assert not any(line.split()[4].startswith(str(scratch.mount_point) + "/") for line in open("/proc/self/mountinfo"))
        scratch.wait_trash_empty()
        assert snapshot(outside) == before
        assert not os.path.lexists(scratch.job_dir(321))
    finally:
        with open("/proc/self/mountinfo") as stream:
            targets = [line.split()[4] for line in stream if line.split()[4].startswith(str(scratch.mount_point) + "/")]
        for target in reversed(targets):
            sh("umount", "-l", target)


def test_reap_with_no_time_budget_deletes_nothing(scratch) -> None:
    from slurm_scratch import config
    from slurm_scratch.jobs import trash

    assert scratch.prolog(331).returncode == 0
    with reaper_lock_held(scratch):
        assert scratch.epilog(331).returncode == 0
    assert trash.reap(config.load_config(str(scratch.config)), wait=True, max_seconds=0) == 0
    assert len(scratch.trash_entries()) == 1
    assert trash.reap(config.load_config(str(scratch.config)), wait=True) == 1
    assert scratch.trash_entries() == []


def holders(scratch, directory: Path, uid: int) -> list[int]:
    """The PIDs processes.Index finds holding `directory` (one scan of /proc, as the Epilog does)."""
    from slurm_scratch.jobs import processes

    root_fd = os.open(scratch.mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        index = processes.Index(root_fd, time.monotonic() + 30, {uid})
        return processes.holders(index, os.stat(directory).st_ino, uid)
    finally:
        os.close(root_fd)


def test_holders_finds_cwd_root_and_descriptors_of_that_user_only(scratch) -> None:
    from slurm_scratch.jobs import processes

    assert scratch.prolog(341).returncode == 0
    job_dir = scratch.job_dir(341)
    scratch.as_user("sstest1", 'mkdir "$1/sub" && echo x > "$1/sub/f"', str(job_dir))
    in_cwd = scratch.start_as("sstest1", ["/bin/sleep", "600"], cwd=job_dir / "sub")
    dir_fd = scratch.start_as("sstest1", ["/bin/sh", "-c", 'exec 4<"$0"; exec /bin/sleep 600', str(job_dir / "sub")])
    near_miss = scratch.start_as("sstest1", ["/bin/sleep", "600"], cwd=scratch.base)  # /tmp/ss-host-x, not .../scratch/job_341
    poll(lambda: all(_is_running_sleep(p) for p in (in_cwd, dir_fd, near_miss)), 30, what="the sleeps")
    sibling = scratch.job_dir(3410)
    scratch.as_user("sstest1", 'mkdir "$1"', str(sibling))
    assert holders(scratch, job_dir, 4201) == sorted([in_cwd.pid, dir_fd.pid])
    assert holders(scratch, job_dir, 4202) == []
    assert holders(scratch, sibling, 4201) == []
    index = processes.Index(root_fd := os.open(scratch.mount_point, os.O_RDONLY | os.O_DIRECTORY), time.monotonic() + 30, {4201})
    try:
        lines = processes.end_holders(index, os.stat(job_dir).st_ino, 4201, str(job_dir))
    finally:
        os.close(root_fd)
    assert len(lines) == 2 and all(f"of uid 4201: it held {job_dir}" in line for line in lines), lines
    assert in_cwd.wait(timeout=30) == -9 and dir_fd.wait(timeout=30) == -9
    assert near_miss.poll() is None


def test_a_setuid_style_process_of_the_user_is_found_too(scratch) -> None:
    # Real uid the user's, effective uid root (a setuid program the job ran): /proc/PID is root's,
    # so the scan must read its real uid rather than pass it over with the kernel threads.
    from slurm_scratch.jobs import processes

    assert scratch.prolog(351).returncode == 0
    job_dir = scratch.job_dir(351)
    setuid_like = subprocess.Popen(
        ["/usr/bin/setpriv", "--ruid", "4201", "--euid", "0", "--", "/bin/sleep", "600"],
        cwd=str(job_dir), env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    scratch.processes.append(setuid_like)
    poll(lambda: _is_running_sleep(setuid_like), 30, what="the sleep")
    assert os.stat(f"/proc/{setuid_like.pid}").st_uid == 0
    assert holders(scratch, job_dir, 4201) == [setuid_like.pid]
    assert scratch.epilog(351).returncode == 0
    assert setuid_like.wait(timeout=30) == -9


def test_reaper_survives_slurmd_killing_the_epilogs_process_group(scratch) -> None:
    # slurmd runs the Epilog as a process group leader and SIGKILLs that group once the Epilog
    # exits; the reaper must already be in a group of its own by then.
    import signal

    assert scratch.prolog(361).returncode == 0
    fill_as_user(scratch, scratch.job_dir(361), files=2000)
    env = scratch.job_env(361, context="epilog_slurmd")
    epilog = subprocess.Popen(
        ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), str(HOOKS / "epilog")],
        cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0,
    )
    _, stderr = epilog.communicate(timeout=60)
    if _group_exists(epilog.pid):  # what slurmd does; the group is gone if the reaper left it
        os.killpg(epilog.pid, signal.SIGKILL)
    assert epilog.returncode == 0, stderr
    scratch.wait_trash_empty()


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_the_reaper_leaves_a_running_prologs_temporaries_alone(scratch) -> None:
    # The Prolog makes a level or job directory in the trash and renames it into place; a reaper
    # deleting it meanwhile made the Prolog give up. A crashed Prolog's temporary is deleted.
    assert scratch.prolog(371).returncode == 0
    dead = _a_dead_pid()
    live = [f"level.{os.getpid()}.1", f"new.job_9.{os.getpid()}.2", f".health-probe.{os.getpid()}.3"]
    for name in [*live, f"level.{dead}.4"]:
        (scratch.trash / name).mkdir()
    reaped = scratch.cli("reap")
    assert reaped.returncode == 0 and reaped.stdout == "reaped 1 trash entry\n", reaped.stderr
    assert sorted(scratch.trash_entries()) == sorted(live)
    for name in live:
        (scratch.trash / name).rmdir()


def _a_dead_pid() -> int:
    process = subprocess.Popen(["/bin/true"])
    process.wait()
    return process.pid
