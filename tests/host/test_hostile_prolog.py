"""The Prolog against what a hostile job user can leave under the 1777 mount point (issue 8).

Each test does what the user can do (as that user, through setpriv, or as root where the user's
tool would need FUSE: a tmpfs the test mounts on the user's directory stands in for it), then runs
the installed Prolog as slurmd does, and asserts: it exits 0, the job directory is a directory of the
job's uid:gid with the configured mode, the squatter's entry sits in the trash (moved, never
followed: a symlink's target is unchanged), the log names the squatter's uid, and nothing outside
the volume changed. Also: atomic creation (a killed Prolog, an older release's leftovers, Prologs of
one job at once) and a frozen volume (the Prolog ends within [jobs] fs_timeout and records why).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from lab.jobs import HOOKS, TRASH, make_canary, snapshot
from lab.jobs import scratch_volume as _scratch_volume
from lab.kernel import sh

from slurm_scratch.health import drain

pytestmark = pytest.mark.root

UID1, UID2 = 4201, 4202


@pytest.fixture(params=["ext4", "xfs"])
def scratch(request, loops):
    with _scratch_volume(loops, request.param) as volume:
        canary = make_canary(volume.base)
        volume.canary = canary
        volume.canary_before = snapshot(canary)
        try:
            yield volume
        finally:
            # Whatever a test mounted below the volume goes before the volume itself is unmounted.
            for mount_point in reversed(mounts_below(volume.mount_point)):
                sh("umount", "-l", mount_point, check=False)


def mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as stream:
        points = [line.split()[4] for line in stream]
    return [point for point in points if point.startswith(f"{root}/")]


def owner_and_mode(path) -> tuple[int, int, int]:
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode), f"{path} is not a directory"
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def moved_aside(scratch, name: str) -> Path:
    """The one entry the Prolog moved from `name` into the trash."""
    (entry,) = [entry for entry in scratch.trash_entries() if entry.startswith(f"squatted.{name}.")]
    return scratch.trash / entry


def assert_outside_untouched(scratch) -> None:
    assert snapshot(scratch.canary) == scratch.canary_before


def assert_job_dir_is_fresh(scratch, path: Path, result, squatter_uid: int, kind: str, uid: int = UID1) -> Path:
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(path) == (uid, uid, 0o700)
    assert os.listdir(path) == []
    assert f"moved aside {path}: {kind} of uid {squatter_uid} (not followed)" in result.stderr
    assert "warning" in result.stderr  # a squat is worth an admin's look
    assert owner_and_mode(scratch.trash) == (0, 0, 0o700)
    assert_outside_untouched(scratch)
    return moved_aside(scratch, path.name)


# ---- the job's name taken first ------------------------------------------------------------------


def test_another_users_directory_is_moved_aside_with_its_contents(scratch) -> None:
    job_dir = scratch.job_dir(301)
    scratch.as_user("sstest2", 'mkdir -m 0777 "$1" && echo mine > "$1/bait" && ln -s /etc "$1/etc"', str(job_dir))
    result = scratch.prolog(301)
    moved = assert_job_dir_is_fresh(scratch, job_dir, result, UID2, "a directory")
    assert (moved / "bait").read_text() == "mine\n" and os.readlink(moved / "etc") == "/etc"
    assert os.lstat(moved).st_uid == UID2


@pytest.mark.parametrize("target", ["canary", "canary file"])
def test_symlink_to_a_root_owned_place_outside_the_volume_is_never_followed(scratch, target) -> None:
    job_dir = scratch.job_dir(302)
    pointed = scratch.canary if target == "canary" else scratch.canary / "secret"
    scratch.as_user("sstest2", 'ln -s "$1" "$2"', str(pointed), str(job_dir))
    result = scratch.prolog(302)
    moved = assert_job_dir_is_fresh(scratch, job_dir, result, UID2, "a symlink")
    assert os.readlink(moved) == str(pointed)
    assert owner_and_mode(scratch.canary) == (0, 0, 0o755)


def test_symlink_to_another_users_job_dir_leaves_that_dir_alone(scratch) -> None:
    assert scratch.prolog(303, user="sstest2").returncode == 0
    victim = scratch.job_dir(303, user="sstest2")
    scratch.as_user("sstest2", 'echo results > "$1/data"', str(victim))
    before = snapshot(victim)
    job_dir = scratch.job_dir(304)
    # The next job's own user points its name at the other user's directory, hoping root chowns it.
    scratch.as_user("sstest1", 'ln -s "$1" "$2"', str(victim), str(job_dir))
    result = scratch.prolog(304)
    moved = assert_job_dir_is_fresh(scratch, job_dir, result, UID1, "a symlink")
    assert os.readlink(moved) == str(victim)
    assert snapshot(victim) == before and owner_and_mode(victim) == (UID2, UID2, 0o700)


@pytest.mark.parametrize("kind", ["a file", "a FIFO", "a socket"])
def test_a_file_fifo_or_socket_at_the_name_is_moved_aside(scratch, kind) -> None:
    job_dir = scratch.job_dir(305)
    make = {
        "a file": 'echo hi > "$1"',
        "a FIFO": 'mkfifo "$1"',
        "a socket": "python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' \"$1\"",
    }[kind]
    scratch.as_user("sstest2", make, str(job_dir))
    result = scratch.prolog(305, timeout=60)  # a FIFO opened by mistake would hang here
    moved = assert_job_dir_is_fresh(scratch, job_dir, result, UID2, kind)
    check = {"a file": stat.S_ISREG, "a FIFO": stat.S_ISFIFO, "a socket": stat.S_ISSOCK}[kind]
    assert check(os.lstat(moved).st_mode)


def test_the_users_own_dir_with_mode_0777_is_reused_and_made_private(scratch) -> None:
    job_dir = scratch.job_dir(306)
    scratch.as_user("sstest1", 'mkdir "$1" && chmod 0777 "$1" && echo early > "$1/input"', str(job_dir))
    result = scratch.prolog(306)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(job_dir) == (UID1, UID1, 0o700)
    assert (job_dir / "input").read_text() == "early\n"
    assert f"reused (had gid={UID1} mode=0777) {job_dir}" in result.stderr
    assert not [entry for entry in scratch.trash_entries() if entry.startswith("squatted.")]
    assert_outside_untouched(scratch)


@pytest.mark.parametrize("owner, stacked", [("sstest2", 1), ("sstest1", 1), ("sstest2", 3)], ids=["other-user", "own-dir", "three-stacked"])
def test_a_filesystem_mounted_on_the_name_is_detached_then_moved_aside(scratch, owner, stacked) -> None:
    job_dir = scratch.job_dir(307)
    scratch.as_user(owner, 'mkdir "$1"', str(job_dir))
    uid = UID1 if owner == "sstest1" else UID2
    for _ in range(stacked):  # what a user's FUSE daemon would be; its root even looks like root's
        sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "squat", str(job_dir))
    (job_dir / "on-the-mount").write_text("x\n")
    result = scratch.prolog(307)
    moved = assert_job_dir_is_fresh(scratch, job_dir, result, uid, "a directory")
    assert result.stderr.count(f"detached a filesystem mounted on {job_dir}") == stacked
    assert mounts_below(scratch.mount_point) == []
    assert os.listdir(moved) == []  # the underlying directory, not the tmpfs's contents


# ---- levels of the pattern and the trash -------------------------------------------------------


def test_a_user_level_made_by_another_user_is_replaced_by_roots(scratch) -> None:
    scratch.configure({"jobs": {"dir": "%u/job_%j"}})
    level = scratch.mount_point / "sstest1"
    scratch.as_user("sstest2", 'mkdir -m 0777 "$1" && mkdir "$1/job_310" && echo trap > "$1/job_310/x"', str(level))
    result = scratch.prolog(310)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(level) == (0, 0, 0o755)
    assert owner_and_mode(level / "job_310") == (UID1, UID1, 0o700) and os.listdir(level / "job_310") == []
    assert f"moved aside {level}: a directory of uid {UID2} (not followed)" in result.stderr
    assert (moved_aside(scratch, "sstest1") / "job_310" / "x").read_text() == "trap\n"
    assert_outside_untouched(scratch)
    # The level stays: the next job of that user uses it as is.
    again = scratch.prolog(311)
    assert again.returncode == 0 and "moved aside" not in again.stderr


def test_a_node_level_that_is_a_symlink_out_of_the_volume_is_replaced(scratch) -> None:
    scratch.configure({"jobs": {"dir": "%n/job_%j"}})
    level = scratch.mount_point / "node1"
    scratch.as_user("sstest2", 'ln -s "$1" "$2"', str(scratch.canary), str(level))
    result = scratch.prolog(312)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(level) == (0, 0, 0o755)
    assert owner_and_mode(level / "job_312") == (UID1, UID1, 0o700)
    assert f"moved aside {level}: a symlink of uid {UID2}" in result.stderr
    assert os.readlink(moved_aside(scratch, "node1")) == str(scratch.canary)
    assert_outside_untouched(scratch)


def test_a_root_level_others_can_write_is_fixed_in_place(scratch) -> None:
    # An admin's chmod: moving it would take every running job's directory with it.
    scratch.configure({"jobs": {"dir": "%u/job_%j"}})
    assert scratch.prolog(313).returncode == 0
    level = scratch.mount_point / "sstest1"
    level.chmod(0o777)
    result = scratch.prolog(314)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(level) == (0, 0, 0o755)
    assert owner_and_mode(level / "job_313") == (UID1, UID1, 0o700)
    assert f"{level} had mode 0777, set to 0755" in result.stderr


@pytest.mark.parametrize("squat", ["directory", "symlink", "mount"])
def test_a_squatted_trash_name_is_replaced_before_the_first_prolog(scratch, squat) -> None:
    trash = scratch.trash
    if squat == "directory":
        scratch.as_user("sstest2", 'mkdir -m 0777 "$1" && echo mine > "$1/kept"', str(trash))
    elif squat == "symlink":
        scratch.as_user("sstest2", 'ln -s "$1" "$2"', str(scratch.canary), str(trash))
    else:
        scratch.as_user("sstest2", 'mkdir "$1"', str(trash))
        sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "squat", str(trash))
    result = scratch.prolog(320)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(trash) == (0, 0, 0o700)
    assert owner_and_mode(scratch.job_dir(320)) == (UID1, UID1, 0o700)
    assert f"moved aside {trash}: a {squat if squat != 'mount' else 'directory'} of uid {UID2}" in result.stderr
    (moved,) = [entry for entry in scratch.trash_entries() if entry.startswith(f"squatted.{TRASH}.")]
    if squat == "directory":
        assert (trash / moved / "kept").read_text() == "mine\n"
    assert mounts_below(scratch.mount_point) == []
    assert_outside_untouched(scratch)
    # The trash works for the Epilog and its reaper, which empties the squatter's entry too.
    assert scratch.epilog(320).returncode == 0
    scratch.wait_trash_empty()
    assert_outside_untouched(scratch)


# ---- atomic creation ---------------------------------------------------------------------------------


def test_an_older_releases_crash_leftovers_do_not_stop_the_next_prolog(scratch) -> None:
    # A release that did mkdir, then chown, killed in between: a root-owned 0700 dir at the job's
    # name; and one of this release killed before its rename: a temporary in the trash.
    assert scratch.prolog(330).returncode == 0
    job_dir = scratch.job_dir(331)
    job_dir.mkdir(mode=0o700)
    (scratch.trash / f"new.job_331.99999.{time.time_ns()}").mkdir(mode=0o700)
    result = scratch.prolog(331)
    assert_job_dir_is_fresh(scratch, job_dir, result, 0, "a directory")


def test_a_prolog_killed_at_any_moment_never_leaves_a_root_owned_dir(scratch) -> None:
    job_dir = scratch.job_dir(332)
    env = scratch.job_env(332)
    argv = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), str(HOOKS / "prolog")]
    for delay in (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12):
        process = subprocess.Popen(argv, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(delay)
        finally:
            process.kill()
            process.wait(timeout=30)
        with contextlib.suppress(FileNotFoundError):
            assert owner_and_mode(job_dir) == (UID1, UID1, 0o700), delay
    result = scratch.prolog(332)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(job_dir) == (UID1, UID1, 0o700)


@pytest.mark.parametrize("squatted", [False, True], ids=["clean", "squatted"])
def test_prologs_of_one_job_at_once_all_succeed(scratch, squatted) -> None:
    scratch.configure({"jobs": {"dir": "%u/job_%j"}})
    if squatted:
        scratch.as_user("sstest2", 'mkdir -m 0777 "$1"', str(scratch.mount_point / "sstest1"))
    env = scratch.job_env(340)
    argv = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), str(HOOKS / "prolog")]
    processes = [subprocess.Popen(argv, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outcomes = [(process.wait(timeout=120), process.communicate()[1]) for process in processes]
    assert [(rc, err) for rc, err in outcomes if rc != 0] == []
    assert owner_and_mode(scratch.mount_point / "sstest1") == (0, 0, 0o755)
    assert owner_and_mode(scratch.mount_point / "sstest1" / "job_340") == (UID1, UID1, 0o700)
    assert_outside_untouched(scratch)


# ---- a frozen volume -----------------------------------------------------------------------------


def test_a_frozen_volume_fails_the_prolog_within_fs_timeout_and_records_why(scratch) -> None:
    scratch.configure({"jobs": {"fs_timeout": "2"}})
    assert scratch.prolog(350).returncode == 0
    with contextlib.suppress(FileNotFoundError):
        os.unlink(drain.HOOK_FILE)
    # the hang detector: fs_timeout plus generous slack
    result = scratch.while_frozen(lambda: scratch.prolog(351, timeout=60))
    try:
        assert result.returncode == 1, result.stderr
        assert f"{scratch.mount_point} hung: prolog timed out after 2 s" in result.stderr
        assert f"{scratch.mount_point} hung: prolog timed out after 2 s" in Path(drain.HOOK_FILE).read_text()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(drain.HOOK_FILE)
    again = scratch.prolog(352)
    assert again.returncode == 0, again.stderr
    assert owner_and_mode(scratch.job_dir(352)) == (UID1, UID1, 0o700)
