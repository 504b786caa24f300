"""The timed child runner: work that may block in the kernel, under a deadline."""

from __future__ import annotations

import os
import time

import pytest

from slurm_scratch import timed
from slurm_scratch.errors import ScratchError


def test_child_returns_its_result() -> None:
    result = timed.in_child(lambda: f"pid {os.getpid()}", timeout=10)
    assert result.status == "ok" and result.text == f"pid {result.pid}" and result.pid != os.getpid()


def test_child_reports_errors() -> None:
    def fails() -> str:
        os.stat("/nonexistent/slurm-scratch")
        return "unreachable"

    result = timed.in_child(fails, timeout=10)
    assert (result.status, result.kind, result.text) == ("error", "OSError", "No such file or directory")


def test_child_killed_at_its_timeout() -> None:
    result = timed.in_child(lambda: time.sleep(600) or "late", timeout=0.3)
    assert result.status == "timeout"  # returned, although the child would have slept for 10 minutes
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # SIGKILLed: it goes away (a zombie until reaped)
        try:
            if os.waitpid(result.pid, os.WNOHANG)[0] == result.pid:
                break
        except ChildProcessError:
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"child {result.pid} still alive after SIGKILL")


def test_steps_of_one_child_each_under_its_own_timeout() -> None:
    child = timed.Child([lambda: "first", lambda: time.sleep(600) or "late", lambda: "never"])
    results = child.results([10, 0.3, 10])
    assert [(r.status, r.text) for r in results] == [("ok", "first"), ("timeout", ""), ("skipped", "")]


def test_a_step_failing_does_not_stop_the_next() -> None:
    def fails() -> str:
        raise ScratchError("write: Input/output error")

    results = timed.Child([fails, lambda: "1.0"]).results([10, 10])
    assert [(r.status, r.text) for r in results] == [("error", "write: Input/output error"), ("ok", "1.0")]
    assert results[0].kind == "ScratchError"


def test_a_killed_probe_that_is_a_zombie_is_no_longer_stuck() -> None:
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    try:
        start = timed.start_time(pid)
        assert start is not None and timed.still_running(pid, start)
        os.kill(pid, timed.SIGKILL)
        deadline = time.monotonic() + 10
        while timed.still_running(pid, start) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not timed.still_running(pid, start)  # a zombie now (not reaped yet): not stuck
        assert os.path.exists(f"/proc/{pid}")
    finally:
        os.waitpid(pid, 0)
