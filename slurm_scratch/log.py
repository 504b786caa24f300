"""The one way slurm-scratch logs: one line per action, to syslog (facility daemon) and stderr.

Not the `logging` module: importing it costs more than a whole bash `mkdir && chown` (bench/),
and the Prolog, Epilog and TaskProlog run for every job. Lines look like
`prolog job=42 created /scratch/job_42 owner=alice mode=0700 (0.6 ms)`.
"""

from __future__ import annotations

import sys
import syslog
import time

_state = {"opened": False, "stderr": True}


def configure(ident: str = "slurm-scratch", stderr: bool = True) -> None:
    """Name the program in syslog; `stderr=False` where stderr is not ours (the TaskProlog's)."""
    syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)
    _state["opened"] = True
    _state["stderr"] = stderr


def _emit(priority: int, message: str, job: object, ms: float | None) -> None:
    line = message if job is None else f"job={job} {message}"
    if ms is not None:
        line = f"{line} ({ms:.1f} ms)"
    if not _state["opened"]:
        configure()
    syslog.syslog(priority, line)
    if _state["stderr"]:
        level = {syslog.LOG_ERR: "error: ", syslog.LOG_WARNING: "warning: "}.get(priority, "")
        try:
            sys.stderr.write(f"slurm-scratch: {level}{line}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # stderr closed (a detached reaper): syslog still has the line


def info(message: str, job: object = None, ms: float | None = None) -> None:
    _emit(syslog.LOG_INFO, message, job, ms)


def warning(message: str, job: object = None, ms: float | None = None) -> None:
    _emit(syslog.LOG_WARNING, message, job, ms)


def error(message: str, job: object = None, ms: float | None = None) -> None:
    _emit(syslog.LOG_ERR, message, job, ms)


class Timer:
    """Milliseconds since creation: `t = Timer(); ...; log.info("did it", ms=t.ms())`."""

    __slots__ = ("start",)

    def __init__(self) -> None:
        self.start = time.monotonic()

    def ms(self) -> float:
        return (time.monotonic() - self.start) * 1000.0
