"""The memory of a check child that was killed at its timeout but is still stuck in the kernel.

While it lives no new child is started (it would get stuck too) and its finding is repeated;
kept in layout.PROBE_STUCK as `PID START TEXT` (START: its start time, so a reused PID is not it).
"""

from __future__ import annotations

import os

from slurm_scratch import timed
from slurm_scratch.layout import PROBE_STUCK as STUCK_FILE
from slurm_scratch.layout import RUN_DIR


def remember(pid: int, text: str) -> None:
    start = timed.start_time(pid)
    if start is not None:
        os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
        with open(STUCK_FILE, "w", encoding="utf-8") as stream:
            stream.write(f"{pid} {start} {text}\n")


def still_stuck() -> str | None:
    """The finding of a check child killed earlier that is still stuck in the kernel (then no other
    is started: it would get stuck too), or None."""
    try:
        with open(STUCK_FILE, encoding="utf-8") as stream:
            pid_text, start, text = stream.read().strip().split(" ", 2)
    except (OSError, ValueError):
        return None
    if timed.still_running(int(pid_text), start):
        return text
    try:
        os.unlink(STUCK_FILE)
    except FileNotFoundError:
        pass
    return None
