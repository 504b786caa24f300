"""The Prolog and TaskProlog, run as slurmd runs them, against real ext4 and xfs filesystems."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from lab.jobs import HOOKS, NODE, REPO, TRASH, scratch_volume, snapshot
from lab.kernel import sh

pytestmark = pytest.mark.root

UID1, UID2 = 4201, 4202


@pytest.fixture(params=["ext4", "xfs"])
def scratch(request, loops):
    with scratch_volume(loops, request.param) as volume:
        yield volume


def without_trash(entries: dict) -> dict:
    """A snapshot less the tool's own trash directory (made by the first Prolog, even a failing one)."""
    return {path: value for path, value in entries.items() if not path.startswith(f"./{TRASH}")}


def owner_and_mode(path) -> tuple[int, int, int]:
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode), f"{path} is not a directory"
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_prolog_creates_private_dir_owned_by_job_user(scratch) -> None:
    result = scratch.prolog(101)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(scratch.job_dir(101)) == (UID1, UID1, 0o700)
    assert "job=101" in result.stderr and "created" in result.stderr and " ms)" in result.stderr
    # The trash exists from the first Prolog on, root's own, before any user could take the name.
    assert owner_and_mode(scratch.trash) == (0, 0, 0o700)
    assert os.lstat(scratch.trash).st_dev == os.lstat(scratch.mount_point).st_dev


def test_a_root_job_gets_a_root_owned_dir_and_the_epilog_retires_it(scratch) -> None:
    """An admin's job as root must not fail its Prolog (that would drain the node)."""
    created = scratch.prolog(103, user="root")
    assert created.returncode == 0, created.stderr
    assert owner_and_mode(scratch.job_dir(103, user="root")) == (0, 0, 0o700)
    retired = scratch.epilog(103, user="root")
    assert retired.returncode == 0, retired.stderr
    assert not os.path.lexists(scratch.job_dir(103, user="root"))


def test_each_job_and_user_gets_its_own_dir(scratch) -> None:
    assert scratch.prolog(7).returncode == 0
    assert scratch.prolog(8, user="sstest2").returncode == 0
    assert owner_and_mode(scratch.job_dir(7)) == (UID1, UID1, 0o700)
    assert owner_and_mode(scratch.job_dir(8)) == (UID2, UID2, 0o700)
    # The other user cannot even look inside.
    denied = subprocess.run(
        ["/usr/bin/setpriv", "--reuid", "sstest2", "--regid", "sstest2", "--init-groups", "--", "/bin/ls", str(scratch.job_dir(7))],
        capture_output=True, text=True, timeout=30,
    )
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_mode_is_configurable(scratch) -> None:
    scratch.configure({"jobs": {"mode": "0750"}})
    assert scratch.prolog(11).returncode == 0
    assert owner_and_mode(scratch.job_dir(11)) == (UID1, UID1, 0o750)


@pytest.mark.parametrize(
    "pattern",
    ["%u/job_%j", "%n/%u/%j", "jobs/%u-%j%%"],
)
def test_dir_pattern_levels_are_root_owned_and_job_dir_is_the_users(scratch, pattern) -> None:
    scratch.configure({"jobs": {"dir": pattern}})
    assert scratch.prolog(21).returncode == 0
    job_dir = scratch.job_dir(21, pattern.replace("%%", "%"))
    assert owner_and_mode(job_dir) == (UID1, UID1, 0o700)
    level = job_dir.parent
    while level != scratch.mount_point:
        assert owner_and_mode(level) == (0, 0, 0o755), level
        level = level.parent
    assert scratch.prolog(22, user="sstest2").returncode == 0
    assert owner_and_mode(scratch.job_dir(22, pattern.replace("%%", "%"), user="sstest2")) == (UID2, UID2, 0o700)


def test_absolute_dir_pattern_below_mount_point(scratch) -> None:
    scratch.configure({"jobs": {"dir": f"{scratch.mount_point}/%n/job_%j"}})
    assert scratch.prolog(23).returncode == 0
    assert owner_and_mode(scratch.mount_point / NODE / "job_23") == (UID1, UID1, 0o700)


def test_requeued_job_reuses_its_dir(scratch) -> None:
    assert scratch.prolog(31).returncode == 0
    (scratch.job_dir(31) / "checkpoint").write_text("step 1\n")
    again = scratch.prolog(31)
    assert again.returncode == 0, again.stderr
    assert "reused" in again.stderr
    assert (scratch.job_dir(31) / "checkpoint").read_text() == "step 1\n"
    assert owner_and_mode(scratch.job_dir(31)) == (UID1, UID1, 0o700)


@pytest.mark.parametrize("owner", [(UID2, UID2), (0, 0)])
def test_dir_of_same_name_owned_by_someone_else_is_moved_aside_whole(scratch, owner) -> None:
    # Another user's squat, or a root-owned 0700 dir an older release left after a crash before chown.
    job_dir = scratch.job_dir(41)
    job_dir.mkdir(mode=0o755)
    (job_dir / "theirs").write_text("not yours\n")
    os.chown(job_dir, *owner)
    result = scratch.prolog(41)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(job_dir) == (UID1, UID1, 0o700) and os.listdir(job_dir) == []
    assert f"moved aside {job_dir}: a directory of uid {owner[0]}" in result.stderr
    (moved,) = [name for name in scratch.trash_entries() if name.startswith("squatted.job_41.")]
    assert (scratch.trash / moved / "theirs").read_text() == "not yours\n"
    assert os.lstat(scratch.trash / moved).st_uid == owner[0]


def test_the_job_users_own_dir_with_a_foreign_group_is_reused_with_the_jobs_group_and_mode(scratch) -> None:
    job_dir = scratch.job_dir(43)
    job_dir.mkdir(mode=0o777)
    job_dir.chmod(0o777)
    (job_dir / "mine").write_text("kept\n")
    os.chown(job_dir, UID1, UID2)
    result = scratch.prolog(43)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(job_dir) == (UID1, UID1, 0o700)
    assert (job_dir / "mine").read_text() == "kept\n"
    assert f"reused (had gid={UID2} mode=0777) {job_dir}" in result.stderr and "mode=0700" in result.stderr


def test_a_file_in_the_way_is_moved_aside(scratch) -> None:
    job_dir = scratch.job_dir(42)
    job_dir.write_text("a file, not a directory\n")
    os.chown(job_dir, UID2, UID2)
    result = scratch.prolog(42)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(job_dir) == (UID1, UID1, 0o700)
    assert f"moved aside {job_dir}: a file of uid {UID2}" in result.stderr
    (moved,) = [name for name in scratch.trash_entries() if name.startswith("squatted.job_42.")]
    assert (scratch.trash / moved).read_text() == "a file, not a directory\n"


def test_not_mounted_fails_and_creates_nothing_below(scratch, tmp_path) -> None:
    # A plain directory on the root disk where the volume should be mounted. The Prolog asks the
    # volume code to mount it (issue 3); with no disk to find, that fails, and nothing may appear.
    plain = scratch.base / "not-mounted"
    plain.mkdir(mode=0o1777)
    scratch.configure({"volume": {"devices": "/dev/slurm-scratch-test-no-such-disk"}}, mount_point=str(plain))
    before = snapshot(plain)
    result = scratch.prolog(51)
    assert result.returncode != 0
    assert str(plain) in result.stderr and "not a mounted filesystem" in result.stderr
    assert snapshot(plain) == before
    assert os.listdir(plain) == []
    # The Epilog of that job has nothing to retire and must not drain the node.
    assert scratch.epilog(51).returncode == 0
    assert os.listdir(plain) == []


def test_missing_mount_point_fails_and_creates_nothing(scratch) -> None:
    missing = scratch.base / "no-such-mount-point"
    scratch.configure({"volume": {"devices": "/dev/slurm-scratch-test-no-such-disk"}}, mount_point=str(missing))
    result = scratch.prolog(52)
    assert result.returncode != 0 and str(missing) in result.stderr
    assert not missing.exists()


def test_fifty_prologs_at_once_all_succeed(scratch) -> None:
    scratch.configure({"jobs": {"dir": "%u/job_%j"}})
    env = [scratch.job_env(1000 + i, user=("sstest1", "sstest2")[i % 2]) for i in range(50)]
    processes = [
        subprocess.Popen(
            ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in e.items()), str(HOOKS / "prolog")],
            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for e in env
    ]
    outcomes = [(process.wait(timeout=300), process.communicate()[1]) for process in processes]
    failures = [(1000 + i, rc, err) for i, (rc, err) in enumerate(outcomes) if rc != 0]
    assert failures == []
    for i in range(50):
        user, uid = (("sstest1", UID1), ("sstest2", UID2))[i % 2]
        assert owner_and_mode(scratch.mount_point / user / f"job_{1000 + i}") == (uid, uid, 0o700)
    assert sorted(os.listdir(scratch.mount_point / "sstest1")) == sorted(f"job_{1000 + i}" for i in range(0, 50, 2))


# ---- TaskProlog -----------------------------------------------------------------------------------


def test_task_prolog_exports_scratch(scratch) -> None:
    assert scratch.prolog(61).returncode == 0
    result = scratch.task_prolog(61)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"export SCRATCH={scratch.job_dir(61)}\n"


def test_task_prolog_exports_two_names(scratch) -> None:
    scratch.configure({"jobs": {"export": "SCRATCH,TMPDIR"}})
    assert scratch.prolog(62).returncode == 0
    result = scratch.task_prolog(62)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"export SCRATCH={scratch.job_dir(62)}", f"export TMPDIR={scratch.job_dir(62)}"]


def test_task_prolog_output_sets_the_variables_for_the_task(scratch) -> None:
    # What slurmstepd does with the lines: the task's shell sees $SCRATCH and can write there.
    scratch.configure({"jobs": {"export": "SCRATCH,TMPDIR"}})
    assert scratch.prolog(63).returncode == 0
    exports = scratch.task_prolog(63).stdout
    written = scratch.as_user("sstest1", exports + 'echo hi > "$SCRATCH/out"; echo "$TMPDIR"')
    assert written.stdout.strip() == str(scratch.job_dir(63))
    assert (scratch.job_dir(63) / "out").read_text() == "hi\n"
    assert os.stat(scratch.job_dir(63) / "out").st_uid == UID1


def test_task_prolog_without_dir_prints_why_and_exits_zero(scratch) -> None:
    scratch.configure({"jobs": {"export": "SCRATCH,TMPDIR"}})
    result = scratch.task_prolog(64)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("print ")
    assert str(scratch.job_dir(64)) in lines[0] and "SCRATCH, TMPDIR not set" in lines[0]
    assert "export" not in result.stdout


def test_task_prolog_for_another_users_dir_exports_nothing(scratch) -> None:
    assert scratch.prolog(65, user="sstest2").returncode == 0
    result = scratch.task_prolog(65, user="sstest1")
    assert result.returncode == 0
    assert result.stdout.startswith("print ") and "export" not in result.stdout


def test_task_prolog_with_broken_config_still_exits_zero(scratch) -> None:
    scratch.config.write_text("[jobs]\nno_such_key = 1\n")
    result = scratch.task_prolog(66)
    assert result.returncode == 0
    assert result.stdout.startswith("print slurm-scratch: ") and "no_such_key" in result.stdout


def test_task_prolog_with_unreadable_config_still_exits_zero(scratch) -> None:
    assert scratch.prolog(67).returncode == 0
    scratch.config.chmod(0o600)  # root's only: the job user cannot read it
    result = scratch.task_prolog(67)
    assert result.returncode == 0
    assert result.stdout == f"print slurm-scratch: {scratch.config}: cannot read: Permission denied\n"


def test_cli_subcommands_do_what_the_hooks_do(scratch) -> None:
    # `slurm-scratch prolog|task-prolog|epilog` (e.g. called from a site's own Prolog script).
    def cli(command: str, env: dict, user: str | None = None) -> subprocess.CompletedProcess:
        argv = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in {**env, "PYTHONPATH": str(REPO)}.items()), "/usr/bin/python3", "-m", "slurm_scratch", command]
        if user:
            argv = ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *argv]
        return subprocess.run(argv, cwd="/", capture_output=True, text=True, timeout=60)

    assert cli("prolog", scratch.job_env(71)).returncode == 0
    assert owner_and_mode(scratch.job_dir(71)) == (UID1, UID1, 0o700)
    exported = cli("task-prolog", scratch.task_env(71), user="sstest1")
    assert exported.returncode == 0 and exported.stdout == f"export SCRATCH={scratch.job_dir(71)}\n"
    assert cli("epilog", scratch.job_env(71, context="epilog_slurmd")).returncode == 0
    assert not os.path.lexists(scratch.job_dir(71))
    scratch.wait_trash_empty()
    rejected = cli("prolog", scratch.job_env(72, SLURM_JOB_UID=UID2))
    assert rejected.returncode == 4 and "does not match" in rejected.stderr


def test_slurmd_umask_does_not_change_modes(scratch) -> None:
    scratch.configure({"jobs": {"dir": "%u/job_%j", "mode": "0750"}})
    env = scratch.job_env(81)
    result = subprocess.run(["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), str(HOOKS / "prolog")], cwd="/", capture_output=True, text=True, umask=0o077, timeout=60)
    assert result.returncode == 0, result.stderr
    assert owner_and_mode(scratch.mount_point / "sstest1") == (0, 0, 0o755)
    assert owner_and_mode(scratch.mount_point / "sstest1" / "job_81") == (UID1, UID1, 0o750)
    assert owner_and_mode(scratch.trash) == (0, 0, 0o700)
    exported = scratch.task_prolog(81)  # the user can reach it through the level above
    assert exported.stdout == f"export SCRATCH={scratch.mount_point}/sstest1/job_81\n"


def test_directory_under_an_unmounted_volume_is_refused(scratch) -> None:
    # What a Prolog would find had the volume been unmounted: the plain directory below, on the root
    # disk; a stale mountinfo entry for it (a bind mount of a directory onto itself, same device) must
    # not make it look like the volume either.
    plain = scratch.base / "below"
    plain.mkdir(mode=0o1777)
    sh("mount", "--bind", str(plain), str(plain))
    try:
        scratch.configure({"volume": {"devices": "/dev/slurm-scratch-test-no-such-disk"}}, mount_point=str(plain))
        result = scratch.prolog(82)
        assert result.returncode != 0 and "not a mounted filesystem" in result.stderr
        assert os.listdir(plain) == []
    finally:
        sh("umount", str(plain))
