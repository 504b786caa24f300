"""`make install PREFIX=...`: the installed hooks work as slurmd starts them (env -i, cwd /), with
the installed virtualenv's packages, and nothing in the environment can steer which code they run."""

from __future__ import annotations

import os
import subprocess

import pytest
from lab.jobs import scratch_volume

pytestmark = pytest.mark.root


@pytest.fixture
def scratch(loops):
    with scratch_volume(loops, "xfs") as volume:
        yield volume


def test_installed_layout(installed) -> None:
    libexec = installed / "libexec" / "slurm-scratch"
    for hook in ("prolog", "epilog", "task_prolog", "healthcheck"):
        path = libexec / hook
        assert os.access(path, os.X_OK), path
        assert path.read_text().splitlines()[0] == f"#!{installed}/lib/slurm-scratch/venv/bin/python3 -IS"
    assert os.access(installed / "bin" / "slurm-scratch", os.X_OK)


def test_installed_prolog_and_epilog_under_empty_environment(installed, scratch) -> None:
    hooks = installed / "libexec" / "slurm-scratch"
    result = scratch.hook("prolog", scratch.job_env(501), hooks_dir=hooks)
    assert result.returncode == 0, result.stderr
    st = os.stat(scratch.job_dir(501))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4201, 4201, 0o700)
    (scratch.job_dir(501) / "out").write_text("result\n")
    result = scratch.hook("epilog", scratch.job_env(501, context="epilog_slurmd"), hooks_dir=hooks)
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(scratch.job_dir(501))
    scratch.wait_trash_empty()  # the installed reaper (from the virtualenv) ran


def test_installed_hooks_ignore_python_environment_variables(installed, scratch, tmp_path) -> None:
    # A planted package on PYTHONPATH would run as root if the hook honoured it (-I forbids that).
    evil = scratch.base / "evil"
    (evil / "slurm_scratch").mkdir(parents=True)
    (evil / "slurm_scratch" / "__init__.py").write_text(f"open({str(scratch.base / 'pwned')!r}, 'w').close()\n")
    env = scratch.job_env(502, PYTHONPATH=str(evil), PYTHONSTARTUP=str(evil / "slurm_scratch" / "__init__.py"), PYTHONHOME="/nonexistent")
    for hooks in (installed / "libexec" / "slurm-scratch", None):
        kwargs = {"hooks_dir": hooks} if hooks else {}
        result = scratch.hook("prolog", env, **kwargs)
        assert result.returncode == 0, result.stderr
        assert not (scratch.base / "pwned").exists()


def test_installed_cli_check_config_and_reap(installed, scratch) -> None:
    cli = str(installed / "bin" / "slurm-scratch")
    env = {"SLURM_SCRATCH_CONF": str(scratch.config)}
    checked = subprocess.run(["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), cli, "check-config"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert f"mount_point = {scratch.mount_point}" in checked.stdout
    reaped = subprocess.run(["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), cli, "reap"], capture_output=True, text=True, timeout=60)
    assert reaped.returncode == 0 and reaped.stdout == "reaped 0 trash entries\n"


def test_installed_task_prolog_starts_under_empty_environment(installed, scratch) -> None:
    # Run as root here (the installed prefix is under pytest's root-only tmp dir): no dir for root's
    # job, so it prints why and still exits 0.
    result = scratch.hook("task_prolog", scratch.task_env(503), hooks_dir=installed / "libexec" / "slurm-scratch")
    assert result.returncode == 0
    assert result.stdout.startswith("print slurm-scratch: ") and "SCRATCH not set" in result.stdout
