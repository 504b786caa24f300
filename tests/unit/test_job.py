"""The job context from Slurm's hook environment, checked against a (fake) passwd/group database."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from slurm_scratch.jobs import job
from slurm_scratch.errors import JobContextError

# Plain records, not pwd.struct_passwd/grp.struct_group: structseqs made from Python crash
# CPython 3.11's garbage collector at exit in some test-session compositions.
ALICE = SimpleNamespace(pw_name="alice", pw_uid=5001, pw_gid=5001, pw_dir="/home/alice", pw_shell="/bin/sh")
GROUPS = {5001: SimpleNamespace(gr_name="alice", gr_gid=5001, gr_mem=[]),
          6000: SimpleNamespace(gr_name="proj", gr_gid=6000, gr_mem=["alice"]),
          7000: SimpleNamespace(gr_name="other", gr_gid=7000, gr_mem=["bob"])}


@pytest.fixture(autouse=True)
def fake_databases(monkeypatch):
    def getpwnam(name: str):
        if name == "alice":
            return ALICE
        if name == "root":
            return SimpleNamespace(pw_name="root", pw_uid=0, pw_gid=0, pw_dir="/root", pw_shell="/bin/sh")
        raise KeyError(name)

    def getgrgid(gid: int):
        return GROUPS[gid]

    monkeypatch.setattr(job.pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(job.grp, "getgrgid", getgrgid)


def env(**overrides: object) -> dict[str, str]:
    values = {"SLURM_JOB_ID": "42", "SLURM_JOBID": "42", "SLURM_JOB_UID": "5001", "SLURM_JOB_GID": "5001", "SLURM_JOB_USER": "alice", "SLURMD_NODENAME": "n1"}
    for key, value in overrides.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = str(value)
    return values


def test_valid_context() -> None:
    assert job.from_slurm_env(env()) == job.JobContext(job_id=42, uid=5001, gid=5001, user="alice", node="n1")


def test_only_the_old_job_id_variable() -> None:
    assert job.from_slurm_env(env(SLURM_JOB_ID=None)).job_id == 42


def test_supplementary_group_is_accepted() -> None:
    assert job.from_slurm_env(env(SLURM_JOB_GID=6000)).gid == 6000


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"SLURM_JOB_ID": None, "SLURM_JOBID": None}, "SLURM_JOB_ID or SLURM_JOBID is not set"),
        ({"SLURM_JOB_ID": ""}, "SLURM_JOB_ID is empty"),
        ({"SLURM_JOB_ID": "4x"}, "SLURM_JOB_ID='4x' is not a number"),
        ({"SLURM_JOB_ID": "-4"}, "is not a number"),
        ({"SLURM_JOB_ID": "4.0"}, "is not a number"),
        ({"SLURM_JOB_ID": "\u0664\u0662"}, "is not a number"),  # Arabic-Indic digits: isdigit() but not ASCII
        ({"SLURM_JOB_ID": "0"}, "SLURM_JOB_ID=0 is not a job id"),
        ({"SLURM_JOB_ID": str(2**32)}, "out of range"),
        ({"SLURM_JOB_UID": "5002"}, "SLURM_JOB_UID=5002 does not match user 'alice' (uid 5001)"),
        ({"SLURM_JOB_UID": str(2**40)}, "SLURM_JOB_UID='1099511627776' is out of range"),
        ({"SLURM_JOB_GID": "7000"}, "SLURM_JOB_GID=7000 is neither the primary group of user 'alice' (5001) nor one it belongs to"),
        ({"SLURM_JOB_GID": "8000"}, "SLURM_JOB_GID=8000 is neither"),
        ({"SLURM_JOB_GID": "x"}, "SLURM_JOB_GID='x' is not a number"),
        ({"SLURM_JOB_USER": "mallory"}, "SLURM_JOB_USER='mallory' is not a known user"),
        ({"SLURM_JOB_USER": "al/ice"}, "contains '/'"),
        ({"SLURM_JOB_USER": ".."}, "contains '/', '..'"),
        ({"SLURM_JOB_USER": "al..ice"}, "contains '/', '..'"),
        ({"SLURM_JOB_USER": "."}, "contains"),
        ({"SLURM_JOB_USER": "alice\0"}, "NUL"),
        ({"SLURM_JOB_USER": "al ice"}, "whitespace"),
        ({"SLURM_JOB_USER": "alice\n"}, "whitespace"),
        ({"SLURM_JOB_USER": "alice\x1b"}, "control character"),
        ({"SLURM_JOB_USER": "-alice"}, "is not a valid name"),
        ({"SLURMD_NODENAME": None}, "SLURMD_NODENAME is not set"),
        ({"SLURMD_NODENAME": "n/1"}, "SLURMD_NODENAME='n/1' contains"),
        ({"SLURMD_NODENAME": "n1\0"}, "SLURMD_NODENAME='n1\\x00' contains"),
        ({"SLURMD_NODENAME": "n\t1"}, "contains"),
        ({"SLURMD_NODENAME": "x" * 256}, "is not a valid name"),
        # Beyond int()'s digit limit (4300 by default): still a JobContextError, the value cut short.
        ({"SLURM_JOB_ID": "9" * 5000}, f"SLURM_JOB_ID={'9' * 32!r}... (5000 characters) is out of range"),
        ({"SLURM_JOB_ID": "1" * 100_000}, "(100000 characters) is out of range"),
        ({"SLURM_JOB_UID": "5" * 5000}, "(5000 characters) is out of range"),
        ({"SLURM_JOB_GID": "5" * 5000}, "(5000 characters) is out of range"),
        ({"SLURM_JOB_ID": "x" * 5000}, "(5000 characters) is not a number"),
        ({"SLURM_JOB_USER": "a" * 100_000}, "(100000 characters) is not a valid name"),
        ({"SLURM_JOB_USER": "a\n" * 50_000}, "(100000 characters) contains"),
    ],
)
def test_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(JobContextError) as caught:
        job.from_slurm_env(env(**overrides))
    assert message in str(caught.value)
    assert caught.value.exit_code == 4
    assert len(str(caught.value)) < 300


def test_leading_zeros_do_not_count_against_the_range() -> None:
    assert job.from_slurm_env(env(SLURM_JOB_ID="0" * 5000 + "42")).job_id == 42
    assert job.parse_job_id({"SLURM_JOB_ID": str(2**32 - 1)}) == 2**32 - 1


@pytest.mark.parametrize("value", ["alice", "a.b", "a_b-c", "n001", "user@realm", "x" * 255])
def test_check_name_accepts(value: str) -> None:
    assert job.check_name("X", value) == value


def test_for_current_user(monkeypatch) -> None:
    monkeypatch.setattr(job.pwd, "getpwuid", lambda uid: ALICE if uid == os.getuid() else None)
    context = job.for_current_user({"SLURM_JOB_ID": "7", "SLURMD_NODENAME": "n2", "SLURM_JOB_USER": "ignored"})
    assert context == job.JobContext(job_id=7, uid=os.getuid(), gid=os.getgid(), user="alice", node="n2")
    with pytest.raises(JobContextError, match="SLURM_JOB_ID or SLURM_JOBID is not set"):
        job.for_current_user({"SLURMD_NODENAME": "n2"})
