"""The memory of a check child that was killed at its timeout but is still stuck in the kernel.

While it lives no new child is started (it would get stuck too) and its finding is repeated;
kept in layout.PROBE_STUCK as a state file (statefile): pid, its start time (so that a reused PID
is not taken for it) and the finding.
"""

from __future__ import annotations

import os

from slurm_scratch import statefile, timed
from slurm_scratch.layout import PROBE_STUCK as STUCK_FILE


def remember(pid: int, text: str) -> None:
    start = timed.start_time(pid)
    if start is not None:
        statefile.write_fields(STUCK_FILE, {"pid": pid, "start": start, "finding": text})


def stuck_pid() -> int | None:
    """The PID of the remembered stuck child (whether or not it still lives), or None."""
    fields = statefile.read_fields(STUCK_FILE) or {}
    pid = fields.get("pid", "")
    return int(pid) if pid.isdigit() else None


def still_stuck() -> str | None:
    """The finding of a check child killed earlier that is still stuck in the kernel (then no other
    is started: it would get stuck too), or None."""
    try:
        fields = statefile.read_fields(STUCK_FILE)
    except OSError:
        return None
    if fields is None:  # the usual case: nothing remembered
        return None
    pid = fields.get("pid", "")
    if pid.isdigit() and timed.still_running(int(pid), fields.get("start", "")):
        return fields.get("finding", "")
    try:
        os.unlink(STUCK_FILE)
    except FileNotFoundError:
        pass
    return None
