"""PID 1 of a simulated node's PID namespace (started by lab/cluster.py through `unshare`).

It reaps every orphan that Slurm leaves behind in the node (slurmstepd, the tool's background
reaper), and on SIGTERM ends every process of the node: TERM, a bounded wait, then KILL.
When it exits the kernel kills whatever is left in the namespace, so a node never outlives it.
"""
from __future__ import annotations

import os
import signal
import sys
import time

STOP_GRACE_SECONDS = 5.0


def reap_all() -> bool:
    """Reap every exited child; False once no child is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def others_left() -> bool:
    """True while a process other than this one lives in the namespace (its own /proc)."""
    return any(name.isdigit() and name != "1" for name in os.listdir("/proc"))


def stop_everything() -> None:
    # kill(-1) from the namespace's PID 1 reaches every process of the namespace but itself.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            reap_all()
            if not others_left():
                return
            time.sleep(0.05)


def main() -> int:
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    while True:
        info = signal.sigtimedwait(watched, 1.0)
        reap_all()
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            stop_everything()
            return 0


if __name__ == "__main__":
    sys.exit(main())
