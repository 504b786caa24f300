"""A job user who plants symlinks, or swaps subdirectories or the job directory itself for symlinks,
loses nothing outside the job directory: not root's files elsewhere, not another user's job
directory, not the admin's files on the volume. Every attack is run as the real test user."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from lab.jobs import make_canary, scratch_volume, snapshot

pytestmark = pytest.mark.root


@pytest.fixture(params=["ext4", "xfs"])
def scratch(request, loops):
    with scratch_volume(loops, request.param) as volume:
        yield volume


class Canaries:
    """Things outside the job's directory that no hook may change, with their snapshots."""

    def __init__(self, scratch) -> None:
        self.outside = make_canary(scratch.base)  # root's tree on another filesystem
        assert scratch.prolog(902, user="sstest2").returncode == 0  # another user's live job dir
        self.other_job = scratch.job_dir(902)
        scratch.as_user("sstest2", 'mkdir "$1/res" && echo theirs > "$1/res/out" && echo top > "$1/top"', str(self.other_job))
        self.admin_file = scratch.mount_point / "README.admin"  # root's file on the volume itself
        self.admin_file.write_text("do not delete\n")
        self.admin_file.chmod(0o644)
        self.roots = [self.outside, self.other_job, self.admin_file]
        self.before = {str(root): snapshot(root) for root in self.roots}

    def assert_intact(self) -> None:
        for root in self.roots:
            assert snapshot(root) == self.before[str(root)], f"{root} changed"

    def cleanup(self) -> None:
        shutil.rmtree(self.outside, ignore_errors=True)


@pytest.fixture
def canaries(scratch):
    found = Canaries(scratch)
    try:
        yield found
    finally:
        found.cleanup()


PLANT = r"""
cd "$1"
ln -s "$2/precious.txt" link_to_file
ln -s "$2" link_to_dir
ln -s "$2/sub" link_to_subdir
ln -s "$2/secret" link_to_unreadable
ln -s "$3" link_to_other_job
ln -s "$4" link_to_admin_file
ln -s "$5" link_to_mount_root
ln -s / link_to_root
mkdir -p deep/er/still
echo mine > deep/er/still/file
ln -s "$2" deep/er/still/link_to_dir
ln -s "$3/res" deep/link_to_other_res
mkdir replaced && echo x > replaced/file && rm -rf replaced && ln -s "$2/sub" replaced
mkdir replaced2 && rmdir replaced2 && ln -s "$3" replaced2
"""


def plant(scratch, job_dir: Path, canaries: Canaries) -> None:
    scratch.as_user(
        "sstest1", PLANT, str(job_dir), str(canaries.outside), str(canaries.other_job), str(canaries.admin_file), str(scratch.mount_point)
    )


def test_symlinks_inside_the_job_dir_are_deleted_not_followed(scratch, canaries) -> None:
    assert scratch.prolog(901).returncode == 0
    plant(scratch, scratch.job_dir(901), canaries)
    result = scratch.epilog(901)
    assert result.returncode == 0, result.stderr
    scratch.wait_trash_empty()
    canaries.assert_intact()
    assert not os.path.lexists(scratch.job_dir(901))


def test_job_dir_swapped_for_a_symlink_before_the_epilog(scratch, canaries) -> None:
    for job_id, target in ((903, canaries.outside), (904, canaries.other_job), (905, scratch.mount_point), (906, scratch.trash)):
        assert scratch.prolog(job_id).returncode == 0
        job_dir = scratch.job_dir(job_id)
        plant(scratch, job_dir, canaries)
        scratch.as_user("sstest1", 'mv "$1" "$1.kept" && ln -s "$2" "$1"', str(job_dir), str(target))
        result = scratch.epilog(job_id)
        assert result.returncode == 0, result.stderr
        scratch.wait_trash_empty()
        canaries.assert_intact()
        assert not os.path.lexists(job_dir)
        assert (scratch.mount_point / f"job_{job_id}.kept").is_dir()  # the user's own rename: not ours to delete
    assert scratch.trash.is_dir() and not scratch.trash.is_symlink()


def test_job_dir_swapped_for_a_symlink_before_a_requeued_prolog(scratch, canaries) -> None:
    # Issue 8: the symlink is moved aside into the trash (never followed) and a fresh directory made.
    for job_id, target in ((911, canaries.outside), (912, canaries.other_job), (913, canaries.admin_file), (914, scratch.trash)):
        assert scratch.prolog(job_id).returncode == 0
        job_dir = scratch.job_dir(job_id)
        scratch.as_user("sstest1", 'mv "$1" "$1.old" && ln -s "$2" "$1"', str(job_dir), str(target))
        trash_before = set(os.listdir(scratch.trash))
        result = scratch.prolog(job_id)  # the requeued job's Prolog
        assert result.returncode == 0, result.stderr
        assert f"moved aside {job_dir}: a symlink of uid 4201 (not followed)" in result.stderr
        canaries.assert_intact()
        (moved,) = set(os.listdir(scratch.trash)) - trash_before
        assert moved.startswith(f"squatted.job_{job_id}.") and os.readlink(scratch.trash / moved) == str(target)
        st = os.lstat(job_dir)
        assert os.path.isdir(job_dir) and not os.path.islink(job_dir) and (st.st_uid, st.st_mode & 0o7777) == (4201, 0o700)


def test_pattern_level_planted_as_symlink_or_user_dir(scratch, canaries) -> None:
    # Issue 8: a planted level is moved aside into the trash and replaced by root's own 0755 level.
    scratch.configure({"jobs": {"dir": "%u/job_%j"}})
    scratch.as_user("sstest1", 'ln -s "$1" "$2/sstest1"', str(canaries.outside), str(scratch.mount_point))
    result = scratch.prolog(921)
    assert result.returncode == 0 and f"moved aside {scratch.mount_point}/sstest1: a symlink of uid 4201" in result.stderr
    canaries.assert_intact()
    assert scratch.epilog(921).returncode == 0
    scratch.as_user("sstest1", 'mkdir "$1/sstest2"', str(scratch.mount_point))  # another user's level
    result = scratch.prolog(922, user="sstest2")
    assert result.returncode == 0 and f"moved aside {scratch.mount_point}/sstest2: a directory of uid 4201" in result.stderr
    for level in ("sstest1", "sstest2"):
        st = os.lstat(scratch.mount_point / level)
        assert os.path.isdir(scratch.mount_point / level) and (st.st_uid, st.st_mode & 0o7777) == (0, 0o755)
    assert os.listdir(scratch.mount_point / "sstest2") == ["job_922"]
    canaries.assert_intact()


def test_epilog_after_the_user_emptied_and_replaced_everything(scratch, canaries) -> None:
    # Symlinks planted after the Epilog started are covered too: the reaper deletes with
    # rm --one-file-system, which never follows a symlink, wherever it appears.
    assert scratch.prolog(931).returncode == 0
    job_dir = scratch.job_dir(931)
    plant(scratch, job_dir, canaries)
    scratch.as_user("sstest1", 'cd "$1" && rm -rf deep && ln -s "$2" deep', str(job_dir), str(canaries.outside))
    assert scratch.epilog(931).returncode == 0
    assert scratch.cli("reap").returncode == 0
    assert scratch.trash_entries() == []
    canaries.assert_intact()
