"""The one lock helper: an exclusive flock on a file in RUN_DIR, held as a plain descriptor.

Not filelock: importing it imports `logging`, which the Epilog's reaper and the health check
would pay on every run; a dozen lines of fcntl do the same (and take the same lock as a
filelock.FileLock or `flock(1)` on the file). The lock is released by closing the descriptor.
"""

from __future__ import annotations

import os
import time

from slurm_scratch.layout import RUN_DIR

POLL_SECONDS = 0.05


def acquire(path: str, wait: float = 0.0) -> int | None:
    """The flock on `path` (a descriptor to close when done), waiting at most `wait` seconds;
    None when another process still holds it then."""
    import fcntl

    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.close(fd)
                return None
            time.sleep(min(POLL_SECONDS, remaining))
