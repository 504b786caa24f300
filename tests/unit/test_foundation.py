"""The small modules everything stands on: record, mounts, run, log, errors, and the CLI's plumbing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_scratch import cli, log, mounts, run
from slurm_scratch.errors import ScratchError
from slurm_scratch.record import Record

REPO = Path(__file__).resolve().parents[2]


# ---- record ----------------------------------------------------------------------------------------


class Point(Record):
    x: int
    y: int


class Point3(Point):
    z: int


def test_record_is_frozen_and_compares_by_value() -> None:
    p = Point(x=1, y=2)
    assert p == Point(x=1, y=2) and hash(p) == hash(Point(x=1, y=2)) and p != Point(x=1, y=3)
    with pytest.raises(AttributeError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x
    assert p.replace(y=9) == Point(x=1, y=9) and p.y == 2
    assert repr(p) == "Point(x=1, y=2)"
    assert Point3(x=1, y=2, z=3).as_dict() == {"x": 1, "y": 2, "z": 3}
    assert Point3(x=1, y=2, z=3) != Point(x=1, y=2)


def test_record_requires_exactly_its_fields() -> None:
    with pytest.raises(TypeError, match=r"unknown \['w'\], missing \['y'\]"):
        Point(x=1, w=2)


# ---- mounts ----------------------------------------------------------------------------------------

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 7:0 / /scratch rw,noatime shared:5 - xfs /dev/loop0 rw,attr2,inode64
31 22 7:1 / /mnt/with\\040space rw,relatime - ext4 /dev/loop1 rw
32 30 0:40 / /scratch rw,relatime - tmpfs tmpfs rw,size=1024k
"""


def test_parse_mountinfo() -> None:
    parsed = mounts.parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in parsed] == ["/", "/scratch", "/mnt/with space", "/scratch"]
    assert parsed[1].source == "/dev/loop0" and parsed[1].fstype == "xfs" and parsed[1].major_minor == "7:0"
    assert "noatime" in parsed[1].options and "inode64" in parsed[1].options


def test_find_mount_takes_the_top_of_a_stack(tmp_path, monkeypatch) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    monkeypatch.setattr(mounts, "MOUNTINFO", str(info))
    assert mounts.find_mount("/scratch").fstype == "tmpfs"
    assert mounts.find_mount("/mnt/with space").source == "/dev/loop1"
    assert mounts.find_mount("/scratch/job_1") is None and mounts.find_mount("/nowhere") is None


def test_find_mount_on_this_machine() -> None:
    assert mounts.find_mount("/") is not None
    assert mounts.find_mount("/proc").fstype == "proc"


# ---- run -------------------------------------------------------------------------------------------


def test_tool_finds_absolute_paths_in_the_fixed_path() -> None:
    assert run.tool("sh") in ("/usr/bin/sh", "/bin/sh")
    assert run.tool("/bin/sh") == "/bin/sh"
    with pytest.raises(ScratchError, match="no-such-tool-xyz: not found in /usr/local/sbin:"):
        run.tool("no-such-tool-xyz")
    with pytest.raises(ScratchError, match="/etc/passwd: not an executable file"):
        run.tool("/etc/passwd")


def test_run_has_a_fixed_environment(monkeypatch) -> None:
    monkeypatch.setenv("SOMETHING_FROM_OUTSIDE", "1")
    result = run.run(["env"], timeout=10, quiet=True)
    lines = set(result.stdout.splitlines())
    assert "LC_ALL=C" in lines and f"PATH={':'.join(run.SEARCH_PATH)}" in lines
    assert not any(line.startswith("SOMETHING_FROM_OUTSIDE=") for line in lines)
    assert "EXTRA=yes" in run.run(["env"], timeout=10, env={"EXTRA": "yes"}, quiet=True).stdout


def test_run_failure_names_command_code_and_output() -> None:
    with pytest.raises(run.CommandError) as caught:
        run.run(["sh", "-c", "echo one >&2; echo two >&2; exit 3"], timeout=10)
    assert caught.value.returncode == 3 and not caught.value.timed_out
    assert str(caught.value).endswith("-c echo one >&2; echo two >&2; exit 3 exited with 3: one | two")
    assert run.run(["sh", "-c", "exit 3"], timeout=10, check=False).returncode == 3


def test_run_timeout_kills_the_whole_command(tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    with pytest.raises(run.CommandError) as caught:
        run.run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert caught.value.timed_out and "timed out" in str(caught.value)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child), "the command's child outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_run_passes_input() -> None:
    assert run.run(["cat"], timeout=10, input_text="hello\n", quiet=True).stdout == "hello\n"


# ---- log -------------------------------------------------------------------------------------------


def test_log_lines(capsys) -> None:
    log.configure("slurm-scratch-test", stderr=True)
    log.info("created /scratch/job_1", job=1, ms=0.25)
    log.warning("careful")
    log.error("broken", job=2)
    assert capsys.readouterr().err.splitlines() == [
        "slurm-scratch: job=1 created /scratch/job_1 (0.2 ms)",
        "slurm-scratch: warning: careful",
        "slurm-scratch: error: job=2 broken",
    ]
    log.configure("slurm-scratch-test", stderr=False)
    log.info("quiet")
    assert capsys.readouterr().err == ""
    log.configure("slurm-scratch-test", stderr=True)


def test_timer() -> None:
    timer = log.Timer()
    time.sleep(0.01)
    assert timer.ms() >= 10.0


# ---- cli -------------------------------------------------------------------------------------------


def test_unknown_hook_is_a_usage_error(capsys) -> None:
    assert cli.hook("postlog") == 2
    assert "unknown hook 'postlog'" in capsys.readouterr().err


def _python_m(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LC_ALL": "C"}
    return subprocess.run([sys.executable, "-m", "slurm_scratch", *args], env={**base, **(env or {})}, cwd="/", capture_output=True, text=True, timeout=60)


def test_cli_usage_errors_exit_2() -> None:
    assert _python_m().returncode == 2
    assert _python_m("frobnicate").returncode == 2


def test_cli_check_config(tmp_path) -> None:
    path = tmp_path / "c.conf"
    path.write_text("[jobs]\nexport = SCRATCH,TMPDIR\n")
    path.chmod(0o644)
    result = _python_m("--config", str(path), "check-config")
    assert result.returncode == 0, result.stderr
    assert "export = SCRATCH,TMPDIR\n" in result.stdout
    result = _python_m("check-config", env={"SLURM_SCRATCH_CONF": str(path)})
    assert result.returncode == 0 and "export = SCRATCH,TMPDIR\n" in result.stdout
    path.write_text("[jobs]\nexport = 1\nmode = x\n")
    result = _python_m("--config", str(path), "check-config")
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr.count(f"slurm-scratch: error: check-config: configuration: {path}:") == 2


def test_hot_path_imports_stay_small() -> None:
    # The Prolog and TaskProlog run for every job: what they import decides their latency (bench/).
    code = (
        "import sys; from slurm_scratch import cli, config; from slurm_scratch.jobs import jobdir, job, retire, sweep, trash, processes;"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}"], capture_output=True, text=True, check=True, timeout=60).stdout.split())
    heavy = {"argparse", "re", "dataclasses", "typing", "logging", "configparser", "subprocess", "psutil", "filelock", "pyudev", "inspect", "json", "signal", "enum", "fcntl"}
    assert loaded & heavy == set()
