"""Commands and processes for the lab: run a command, wait for a condition, end a process.

One way each, for every builder in the lab (namespace cluster, node boot, VM guest, Docker
engine), so that a timeout, a failure message or a PID check reads the same everywhere.
Standard library only: the VM guest and the compose nodes run it with Debian's bare python3.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: preexec_fn only calls it

T = TypeVar("T")


class LabError(RuntimeError):
    """A lab step failed: a command exited non-zero, a wait timed out."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60,
        env: dict[str, str] | None = None, input: str | None = None,
        error: type[Exception] = LabError) -> subprocess.CompletedProcess:
    """Run a command from / with a fixed PATH (plus `env`), text output captured; a failure
    raises `error` naming the command and the end of what it said."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd="/",
                          input=input, env={"PATH": TOOL_PATH, "LANG": "C.UTF-8", **(env or {})})
    if check and proc.returncode != 0:
        raise error(f"{shlex.join(argv)} exited {proc.returncode}: "
                    f"{(proc.stderr.strip() or proc.stdout.strip())[-3000:]}")
    return proc


def wait_for(what: str, predicate: Callable[[], T], timeout: float, interval: float = 0.2, *,
             error: type[Exception] = LabError, describe: Callable[[], str] | None = None) -> T:
    """Poll `predicate` until it returns something truthy (returned); after `timeout` s,
    `error` naming `what` and, if given, `describe()`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe else ""
            raise error(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if the test process dies, so no daemon outlives it."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """True while `pid` runs: a zombie (state Z/X) counts as gone, unlike `kill -0`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def stop_process(pid: int, popen: subprocess.Popen | None = None, grace: float = 10) -> bool:
    """TERM, bounded wait, KILL, bounded wait; reap `popen` if it is our child. True if gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not process_alive(pid):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while process_alive(pid) and time.monotonic() < deadline:
            if popen is not None and popen.poll() is not None:
                break
            time.sleep(0.05)
    if popen is not None:
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    return not process_alive(pid)
