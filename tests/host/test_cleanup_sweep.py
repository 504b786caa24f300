"""`sweep`: directories of jobs that no longer run on this node and are older than the guard age are
retired; running or young jobs' directories are kept; what cannot be attributed is reported, not
deleted. Tested directly (`jobs.sweep`) and through the CLI with a fake `squeue`."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from lab.jobs import NODE, REPO, TRASH, make_canary, scratch_volume, snapshot

from slurm_scratch import config
from slurm_scratch.jobs import sweep, trash

pytestmark = pytest.mark.root

OLD = 3600  # seconds ago: well past the 60 s guard
UID1, UID2 = 4201, 4202


@pytest.fixture(params=["ext4", "xfs"])
def scratch(request, loops):
    with scratch_volume(loops, request.param) as volume:
        yield volume


def make_dir(path: Path, uid: int, age: float, files: int = 1) -> Path:
    path.mkdir(mode=0o700)
    for index in range(files):
        (path / f"f{index}").write_text("data\n")
    os.chown(path, uid, uid)
    backdate(path, age)
    return path


def backdate(path: Path, age: float) -> None:
    then = time.time() - age
    os.utime(path, (then, then), follow_symlinks=False)


class Layout:
    """A scratch volume in the state a node might find it, one entry per case."""

    def __init__(self, scratch) -> None:
        mp = scratch.mount_point
        self.orphan = make_dir(mp / "job_101", UID1, OLD)  # ended long ago: retired
        self.orphan2 = make_dir(mp / "job_105", UID2, OLD, files=3)  # another user's: retired too
        self.running = make_dir(mp / "job_102", UID1, OLD)  # still running: kept
        self.young = make_dir(mp / "job_103", UID2, 5)  # younger than the guard: kept
        self.just_under = make_dir(mp / "job_104", UID1, 50)  # 50 s < 60 s guard: kept
        self.root_owned = make_dir(mp / "job_106", 0, OLD)  # fits the pattern, not a job's: reported
        self.a_file = mp / "job_107"  # a file, not a directory: reported
        self.a_file.write_text("a user's file\n")
        os.chown(self.a_file, UID1, UID1)
        backdate(self.a_file, OLD)
        self.canary = make_canary(scratch.base)
        self.a_link = mp / "job_108"  # a symlink: reported, never followed
        self.a_link.symlink_to(self.canary)
        os.lchown(self.a_link, UID1, UID1)
        backdate(self.a_link, OLD)
        self.other = make_dir(mp / "projects", UID1, OLD)  # not a job directory at all: reported
        self.suffixed = make_dir(mp / "job_109.kept", UID1, OLD)  # near miss: reported
        self.canary_before = snapshot(self.canary)
        self.mp = mp

    @property
    def kept(self) -> list[Path]:
        return [self.running, self.young, self.just_under, self.root_owned, self.a_file, self.a_link, self.other, self.suffixed]

    @property
    def reported(self) -> list[str]:
        return sorted(str(p) for p in (self.root_owned, self.a_file, self.a_link, self.other, self.suffixed))


def test_sweep_retires_only_old_orphans(scratch) -> None:
    layout = Layout(scratch)
    kept_before = {str(p): snapshot(p) for p in layout.kept}
    report = sweep.sweep(config.load_config(str(scratch.config)), NODE, {102, 999})
    assert sorted(report.retired) == [str(layout.orphan), str(layout.orphan2)]
    assert report.running == [str(layout.running)]
    assert sorted(report.young) == sorted([str(layout.just_under), str(layout.young)])
    assert sorted(report.unattributed) == layout.reported
    assert not os.path.lexists(layout.orphan) and not os.path.lexists(layout.orphan2)
    assert {str(p): snapshot(p) for p in layout.kept} == kept_before
    assert sorted(e.split(".")[0] for e in scratch.trash_entries()) == ["job_101", "job_105"]
    assert trash.reap(config.load_config(str(scratch.config)), wait=True) == 2
    assert snapshot(layout.canary) == layout.canary_before


def test_sweep_guard_is_configurable(scratch) -> None:
    layout = Layout(scratch)
    scratch.configure({"jobs": {"sweep_guard": "10"}})
    report = sweep.sweep(config.load_config(str(scratch.config)), NODE, set())
    assert sorted(report.retired) == sorted(str(p) for p in (layout.orphan, layout.orphan2, layout.running, layout.just_under))
    assert report.young == [str(layout.young)]
    assert os.path.isdir(layout.young)


@pytest.mark.parametrize("pattern", ["%u/job_%j", "%n/%u_%j"])
def test_sweep_with_pattern_levels(scratch, pattern) -> None:
    scratch.configure({"jobs": {"dir": pattern}})
    for job_id, user in ((201, "sstest1"), (202, "sstest2"), (203, "sstest1")):
        assert scratch.prolog(job_id, user=user).returncode == 0
    dirs = {job_id: scratch.job_dir(job_id, pattern, user=user) for job_id, user in ((201, "sstest1"), (202, "sstest2"), (203, "sstest1"))}
    for path in dirs.values():
        backdate(path, OLD)
    parent1 = dirs[201].parent
    # A directory in sstest1's level owned by sstest2: the name says sstest1's, the owner disagrees.
    impostor = make_dir(parent1 / dirs[201].name.replace("201", "204"), UID2, OLD)
    if pattern.startswith("%n/"):
        other_node = make_dir(scratch.mount_point / "node2", 0, OLD)
        other_node.chmod(0o755)
    report = sweep.sweep(config.load_config(str(scratch.config)), NODE, {203})
    assert sorted(report.retired) == sorted(str(dirs[j]) for j in (201, 202))
    assert report.running == [str(dirs[203])]
    assert str(impostor) in report.unattributed and impostor.is_dir()
    if pattern.startswith("%n/"):
        assert str(other_node) in report.unattributed and other_node.is_dir()
    assert dirs[203].is_dir()


def test_sweep_reports_a_user_planted_pattern_level(scratch) -> None:
    scratch.configure({"jobs": {"dir": "%u/job_%j"}})
    planted = make_dir(scratch.mount_point / "sstest1", UID1, OLD)  # the user's, not root's
    inside = make_dir(planted / "job_301", UID1, OLD)
    report = sweep.sweep(config.load_config(str(scratch.config)), NODE, set())
    assert report.unattributed == [str(planted)] and report.retired == []
    assert inside.is_dir()


# ---- the CLI, asking a (fake) squeue which jobs still run here -------------------------------------


def fake_squeue(scratch, body: str) -> Path:
    script = scratch.base / "fake-squeue"
    script.write_text("#!/bin/sh\n" + f'echo "$@" > {scratch.base}/squeue-args\n' + body)
    script.chmod(0o755)
    return script


def test_cli_sweep_asks_squeue_and_empties_the_trash(scratch) -> None:
    layout = Layout(scratch)
    squeue = fake_squeue(scratch, "printf '102\\n'\n")
    scratch.configure({"slurm": {"squeue": str(squeue)}})
    result = scratch.cli("sweep", "--node", NODE)
    assert result.returncode == 0, result.stderr
    args = (scratch.base / "squeue-args").read_text().split()
    assert args[args.index("--nodelist") + 1] == NODE
    for path in layout.reported:
        assert f"left alone (not a job directory of this tool): {path}" in result.stdout
    assert "swept 2 orphaned job directories; kept 1 of running jobs and 2 younger than 60 s; 5 left alone" in result.stdout
    assert scratch.trash_entries() == []  # sweep reaps what it retired before it returns
    assert not os.path.lexists(layout.orphan)
    assert all(os.path.lexists(p) for p in layout.kept)
    assert snapshot(layout.canary) == layout.canary_before


def test_cli_sweep_node_defaults_to_slurmd_nodename(scratch) -> None:
    layout = Layout(scratch)
    squeue = fake_squeue(scratch, "printf '102\\n'\n")
    scratch.configure({"slurm": {"squeue": str(squeue)}})
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SLURMD_NODENAME": "nodeX", "SLURM_SCRATCH_CONF": str(scratch.config)}
    result = subprocess.run(["/usr/bin/python3", "-m", "slurm_scratch", "sweep"], env=env, cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    args = (scratch.base / "squeue-args").read_text().split()
    assert args[args.index("--nodelist") + 1] == "nodeX"
    assert not os.path.lexists(layout.orphan)


@pytest.mark.parametrize(
    "body, message",
    [
        ("echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1\n", "Unable to contact slurm controller"),
        ("sleep 30\n", "timed out"),
        ("echo 'JOBID'; echo 102\n", "where a job id was expected"),
    ],
    ids=["squeue-fails", "squeue-hangs", "squeue-garbage"],
)
def test_cli_sweep_deletes_nothing_when_slurm_cannot_say(scratch, body, message) -> None:
    layout = Layout(scratch)
    squeue = fake_squeue(scratch, body)
    scratch.configure({"slurm": {"squeue": str(squeue), "timeout": "1"}})
    before = snapshot(scratch.mount_point)
    result = scratch.cli("sweep", "--node", NODE)
    assert result.returncode == 1
    assert message in result.stderr
    assert snapshot(scratch.mount_point) == before
    assert layout.orphan.is_dir()


def test_cli_sweep_on_unmounted_volume_fails_and_deletes_nothing(scratch) -> None:
    plain = scratch.base / "not-mounted"
    plain.mkdir()
    make_dir(plain / "job_401", UID1, OLD)
    scratch.configure({"slurm": {"squeue": str(fake_squeue(scratch, "true\n"))}}, mount_point=str(plain))
    result = scratch.cli("sweep", "--node", NODE)
    assert result.returncode == 1 and "is not a mounted filesystem" in result.stderr
    assert (plain / "job_401").is_dir() and os.listdir(plain) == ["job_401"]
    assert TRASH not in os.listdir(plain)
