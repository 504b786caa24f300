"""Job directory names from `[jobs] dir`, TaskProlog output, and the sweep's reading of names back."""

from __future__ import annotations

import os

import pytest

from slurm_scratch import config
from slurm_scratch.jobs import jobdir, pattern
from slurm_scratch.jobs.job import JobContext

JOB = JobContext(job_id=42, uid=os.getuid(), gid=os.getgid(), user="alice", node="n1")


def cfg(text: str = "", mount_point: str = "/scratch") -> config.Config:
    return config.parse_config(f"[volume]\nmount_point = {mount_point}\n{text}", "test.conf")


@pytest.mark.parametrize(
    "component, expected",
    [
        ("job_%j", "job_42"),
        ("%u", "alice"),
        ("%n-%u-%j", "n1-alice-42"),
        ("100%%_%j", "100%_42"),
        ("%%j%j", "%j42"),
        ("%%%j", "%42"),
    ],
)
def test_expand(component: str, expected: str) -> None:
    assert pattern.expand(component, JOB) == expected


def test_expand_never_rereads_a_substituted_value() -> None:
    odd = JOB.replace(user="a%nb%j", node="n%u")
    assert pattern.expand("%u.%n.%j", odd) == "a%nb%j.n%u.42"


def test_job_dir_path_and_components() -> None:
    c = cfg("[jobs]\ndir = %n/%u/job_%j\n")
    assert jobdir.relative_components(c, JOB) == ["n1", "alice", "job_42"]
    assert jobdir.job_dir_path(c, JOB) == "/scratch/n1/alice/job_42"
    assert jobdir.job_dir_path(cfg(), JOB) == "/scratch/job_42"


def test_open_mount_point_refuses_a_plain_directory(tmp_path) -> None:
    with pytest.raises(jobdir.VolumeNotMounted, match=f"{tmp_path} is not a mounted filesystem: refusing"):
        jobdir.open_mount_point(cfg(mount_point=str(tmp_path)))


def test_export_lines(tmp_path) -> None:
    c = cfg("[jobs]\nexport = SCRATCH,TMPDIR\n", mount_point=str(tmp_path))
    (tmp_path / "job_42").mkdir()
    assert jobdir.export_lines(c, JOB) == [f"export SCRATCH={tmp_path}/job_42", f"export TMPDIR={tmp_path}/job_42"]


def test_export_lines_without_dir_print_why(tmp_path) -> None:
    c = cfg(mount_point=str(tmp_path))
    (line,) = jobdir.export_lines(c, JOB)
    assert line == f"print slurm-scratch: {tmp_path}/job_42 is not available (No such file or directory); SCRATCH not set"


def test_export_lines_for_a_file_or_someone_elses_dir(tmp_path) -> None:
    c = cfg(mount_point=str(tmp_path))
    (tmp_path / "job_42").write_text("")
    assert jobdir.export_lines(c, JOB)[0].startswith(f"print slurm-scratch: {tmp_path}/job_42 is not this job's directory")
    assert jobdir.export_lines(c, JOB.replace(uid=JOB.uid + 1, job_id=42))[0].startswith("print ")


@pytest.mark.parametrize(
    "component, name, job, user",
    [
        ("job_%j", "job_42", "42", None),
        ("%u_%j", "a_1_42", "42", "a_1"),
        ("%u%j", "bob42", "42", "bob"),
        ("%n.%j", "n1.7", "7", None),
        ("job_%j.%j", "job_5.5", "5", None),
        ("100%%-%j", "100%-9", "9", None),
    ],
)
def test_sweep_reads_names_back(component: str, name: str, job: str, user: str | None) -> None:
    match = pattern.component_regex(component, "n1").match(name)
    assert match is not None and match.group("job") == job
    assert match.groupdict().get("user") == user


@pytest.mark.parametrize(
    "component, name",
    [
        ("job_%j", "job_42.old"),
        ("job_%j", "job_"),
        ("job_%j", "job_4a"),
        ("job_%j", "xjob_42"),
        ("%n.%j", "n2.7"),
        ("job_%j.%j", "job_5.6"),
        ("job.%j", "jobx42"),  # '.' is literal, not "any character"
    ],
)
def test_sweep_rejects_names_that_do_not_fit(component: str, name: str) -> None:
    assert pattern.component_regex(component, "n1").match(name) is None
