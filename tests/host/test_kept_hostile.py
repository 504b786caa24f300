"""Issue 11, part 3, hostile users: the kept area under a 1777 mount point, through the installed
hooks. A user cannot squat `.kept` or `.kept/<user>` (whatever they made there first is moved aside,
never followed or opened), cannot read another's kept data, cannot add, rename or remove anything
in the area nor change the keep time, and cannot make the Epilog fail or hang through it
(symlinks, FIFOs, mounts, an entry at the target name); a mount on a kept directory hangs nothing
and loses its directory to the trash. Every hook runs under a subprocess timeout (the hang
detector); nothing outside the volume changes (a canary tree).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lab.fake_slurm import FakeSlurm
from lab.jobs import make_canary, scratch_volume, snapshot
from lab.kernel import sh

from slurm_scratch import layout

from test_kept import FAILED, KEPT, Node, assert_level, kept_record, no_memory  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.root


@pytest.fixture(params=["ext4", "xfs"])
def node(request, loops, installed, tmp_path):
    with scratch_volume(loops, request.param, size_mb=512) as scratch:
        node = Node(scratch, installed, FakeSlurm(tmp_path / "slurm"))
        node.canary = make_canary(scratch.base.parent)
        node.canary_before = snapshot(node.canary)
        try:
            yield node
        finally:
            with open("/proc/self/mountinfo") as stream:
                below = [line.split()[4] for line in stream if line.split()[4].startswith(f"{scratch.mount_point}/")]
            for target in reversed(below):
                sh("umount", "-l", target, check=False)


def as_user(node, user: str, script: str, *args: str) -> subprocess.CompletedProcess:
    """A shell script as `user`, not checked: what it could do is the question."""
    argv = ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/bin/sh", "-c", script, "sh", *args]
    return subprocess.run(argv, cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)


def kept_properly(node, job_id: int) -> None:
    assert (node.kept(job_id) / "log").read_text() == "evidence\n"
    assert_level(node.mount_point / KEPT)
    assert_level(node.mount_point / KEPT / "sstest1")
    assert snapshot(node.canary) == node.canary_before


# ---- squatting the area before the first keep -------------------------------------------------------


@pytest.mark.parametrize("squat", [
    'mkdir -p "$1/.kept/sstest1" && ln -s "$2" "$1/.kept/sstest1/job_401" && chmod 0777 "$1/.kept" "$1/.kept/sstest1"',
    'ln -s "$2" "$1/.kept"',
    'mkfifo "$1/.kept"',
    'echo mine > "$1/.kept"',
    'mkdir "$1/.kept" && mkfifo "$1/.kept/sstest1"',
    'mkdir "$1/.kept" && ln -s "$2" "$1/.kept/sstest1"',
], ids=["dir-with-planted-levels", "symlink", "fifo", "file", "dir-with-fifo-level", "dir-with-symlink-level"])
def test_what_a_user_made_at_the_kept_area_is_moved_aside_never_followed(node, squat) -> None:
    as_user(node, "sstest2", squat, str(node.mount_point), str(node.canary)).check_returncode()
    result = node.job(401, **FAILED)
    assert f"moved aside {node.mount_point}/{KEPT}" in result.stderr and "of uid 4202 (not followed)" in result.stderr
    kept_properly(node, 401)
    assert os.lstat(node.kept(401)).st_uid == 4201
    node.scratch.wait_trash_empty()  # the squatter's entry went with the reaper
    assert snapshot(node.canary) == node.canary_before


@pytest.mark.parametrize("where", [KEPT, f"{KEPT}/sstest1"])
def test_a_mount_on_a_level_of_the_area_is_detached(node, where) -> None:
    node.job(402, **FAILED)  # the area exists
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(node.mount_point / where))  # a user's FUSE mount would be here
    result = node.job(403, **FAILED)
    assert f"detached a filesystem mounted on {node.mount_point}/{where}" in result.stderr
    kept_properly(node, 403)
    assert (node.kept(402) / "log").read_text() == "evidence\n"  # what the mount hid is there again


@pytest.mark.parametrize("entry", ["fifo", "symlink", "file"])
def test_an_entry_at_the_target_name_goes_to_the_trash(node, entry) -> None:
    node.job(404, **FAILED)  # the area exists; root plants something where job 405's directory will go
    target = node.kept(405)
    if entry == "fifo":
        os.mkfifo(target)
    elif entry == "symlink":
        os.symlink(node.canary, target)
    else:
        target.write_text("old\n")
    result = node.job(405, **FAILED)
    assert f"an older kept {target} went to the trash" in result.stderr
    kept_properly(node, 405)
    node.scratch.wait_trash_empty()
    assert snapshot(node.canary) == node.canary_before


# ---- what a user can do to the area once it exists ----------------------------------------------


def test_other_users_cannot_read_and_nobody_can_add_rename_or_restamp(node) -> None:
    node.job(411, **FAILED)
    kept = node.kept(411)
    for user in ("sstest2",):
        assert as_user(node, user, 'cat "$1/log"', str(kept)).returncode != 0
        assert as_user(node, user, 'ls "$1"', str(kept)).returncode != 0
    for user in ("sstest1", "sstest2"):
        for parent in (node.mount_point / KEPT, node.mount_point / KEPT / "sstest1"):
            assert as_user(node, user, 'mkdir "$1/x" || touch "$1/y" || ln -s / "$1/z"', str(parent)).returncode != 0
            assert sorted(os.listdir(parent)) == (["sstest1"] if parent.name == KEPT else ["job_411"])
    # Its owner cannot move it out (out of reach of the expiry) nor remove it, nor change the keep time.
    assert as_user(node, "sstest1", 'mv "$1" "$2/mine"', str(kept), str(node.mount_point)).returncode != 0
    assert as_user(node, "sstest1", 'rmdir "$1" 2>/dev/null || rm -rf "$1"; test -d "$1"', str(kept)).returncode == 0
    record = kept_record(kept)
    script = f"import os; os.setxattr({str(kept)!r}, {layout.KEPT_XATTR!r}, b'9999999999999999999 411')"
    assert as_user(node, "sstest1", '/usr/bin/python3 -c "$1"', script).returncode != 0
    script = f"import os; os.removexattr({str(kept)!r}, {layout.KEPT_XATTR!r})"
    assert as_user(node, "sstest1", '/usr/bin/python3 -c "$1"', script).returncode != 0
    assert kept_record(kept) == record


def test_a_job_dir_replaced_by_a_symlink_is_not_kept_nor_followed(node) -> None:
    node.prolog(412)
    job_dir = node.job_dir(412)
    as_user(node, "sstest1", 'rmdir "$1" && ln -s "$2" "$1"', str(job_dir), str(node.canary)).check_returncode()
    result = node.epilog(412, **FAILED)
    assert not os.path.lexists(node.kept(412)) and not os.path.lexists(job_dir)
    assert "to trash as job_412." in result.stderr
    node.scratch.wait_trash_empty()
    assert snapshot(node.canary) == node.canary_before


def test_a_mount_on_a_kept_directory_hangs_nothing_and_loses_it_to_the_trash(node) -> None:
    node.job(413, **FAILED)
    node.job(414, **FAILED)
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700,uid=4201", "tmpfs", str(node.kept(413)))  # a user's FUSE mount would be here
    status = node.cli("status", "--json")
    assert f'"path": "{node.kept(413)}"' in status.stdout
    result = node.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{node.kept(413)} was a mount point" in result.stderr and "no record of an Epilog's keeping it" in result.stderr
    assert not os.path.lexists(node.kept(413)) and node.kept(414).exists()
    assert node.scratch.trash_entries() == []


def test_an_entry_without_a_record_is_due_at_once_and_roots_own_is_left_alone(node) -> None:
    node.job(415, **FAILED)
    swapped = node.mount_point / KEPT / "sstest1" / "job_416"  # what a user's last-moment swap would leave
    swapped.mkdir()
    os.chown(swapped, 4201, 4201)
    admins = node.mount_point / KEPT / "sstest1" / "notes"
    admins.mkdir()
    result = node.healthcheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not os.path.lexists(swapped) and admins.exists() and node.kept(415).exists()


def test_status_names_a_users_entry_at_the_area_and_the_housekeeping_leaves_it_alone(node) -> None:
    as_user(node, "sstest2", 'mkdir -m 0777 "$1/.kept" && mkdir "$1/.kept/sstest1" && echo mine > "$1/.kept/sstest1/job_9"',
            str(node.mount_point)).check_returncode()
    report = json.loads(node.cli("status", "--json").stdout)["kept"]
    assert report["dirs"] == [] and f"{node.mount_point}/{KEPT} is not root's directory (uid 4202)" in report["problem"]
    assert node.healthcheck().returncode == 0
    assert (node.mount_point / KEPT / "sstest1" / "job_9").read_text() == "mine\n"  # not ours: never deleted
    node.job(421, **FAILED)  # the first keep moves it aside
    kept_properly(node, 421)
    assert json.loads(node.cli("status", "--json").stdout)["kept"]["problem"] is None
