"""The Prolog's and Epilog's figures (how long each took, its exit status), left in RUN_DIR for the
health check's metrics: a hook pays one open and one short write, and nothing when metrics are off.

Each hook appends one line `<hook> <milliseconds> <exit status>` to layout.HOOK_FIGURES with
O_APPEND: one write of a few bytes, never interleaved with another hook's. The file exists only
while [health] metrics_dir is set (the health check makes it, and removes it when metrics are off);
a hook never creates it, so a hook needs no configuration to know. It is bounded: past MAX_BYTES
(when no health check has read it for a long time) hooks leave their figures out.
"""

from __future__ import annotations

import os

from slurm_scratch.layout import HOOK_FIGURES

HOOKS = ("prolog", "epilog")
MAX_BYTES = 1 << 20


def record(hook: str, ms: float, status: int) -> None:
    """Leave one hook run's figure for the health check (never fails the hook)."""
    try:
        fd = os.open(HOOK_FIGURES, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # metrics are off (no file), or /run is not ours to write
    try:
        if os.fstat(fd).st_size < MAX_BYTES:
            os.write(fd, f"{hook} {ms:.3f} {status}\n".encode())
    except OSError:
        pass
    finally:
        os.close(fd)
