"""End a user's processes that still hold a job directory (cwd, root or an open descriptor), before
it is retired.

Read straight from /proc rather than through psutil: the Epilog runs for every job, and importing
psutil alone costs 10-25 ms, more than the rest of the Epilog. A process is signalled through a
pidfd taken while it was seen holding the directory, so a PID reused in between is never hit.
"""

from __future__ import annotations

import os
import time

from slurm_scratch import log

WAIT_SECONDS = 2.0


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


def _uids(pid: str) -> tuple[int, int] | None:
    """Real and effective uid from /proc/PID/status, or None when the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.read(fd, 2048)  # Uid: is on line 9, well within the first 2 KiB
        finally:
            os.close(fd)
        real, effective = head.split(b"\nUid:", 1)[1].split(None, 2)[:2]
        return int(real), int(effective)
    except (OSError, IndexError, ValueError):
        return None


def _has_program(pid: str) -> bool:
    """False for kernel threads (no executable), and for processes already gone."""
    try:
        os.readlink(f"/proc/{pid}/exe")
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: look closer


def _holds(pid: str, directory: str) -> bool:
    for link in ("cwd", "root"):
        try:
            if _inside(os.readlink(f"/proc/{pid}/{link}"), directory):
                return True
        except OSError:
            pass
    fd_dir = f"/proc/{pid}/fd"
    try:
        descriptors = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in descriptors:
        try:
            if _inside(os.readlink(f"{fd_dir}/{fd}"), directory):
                return True
        except OSError:
            continue
    return False


def holders(directory: str, uid: int) -> list[int]:
    """PIDs of processes of `uid` (real or effective) whose cwd, root or an open file or directory
    lies inside `directory`."""
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            owner = os.stat(f"/proc/{pid}").st_uid  # the effective uid, or root for a non-dumpable process
        except OSError:
            continue
        if owner not in (uid, 0):
            continue
        if owner == 0 and uid != 0 and not _has_program(pid):
            continue  # a kernel thread (most root-owned entries on a many-core node): one syscall, not three
        uids = _uids(pid)
        if uids is None or uid not in uids:
            continue
        if _holds(pid, directory):
            found.append(int(pid))
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as stream:
            return stream.read().strip()
    except OSError:
        return "?"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return stream.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def end_holders(directory: str, uid: int, job: object = None) -> int:
    """SIGKILL the holders (the job is over) and wait a bounded time for them; returns how many."""
    victims = holders(directory, uid)
    if not victims:
        return 0
    import signal

    killed = []
    for pid in victims:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not _holds(str(pid), directory):  # it let go (or the PID is another process's now)
                continue
            log.info(f"killing pid {pid} ({_comm(pid)}) of uid {uid}: it holds {directory}", job=job)
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + WAIT_SECONDS
    alive = [pid for pid in killed if not _gone(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [pid for pid in alive if not _gone(pid)]
    for pid in alive:
        log.warning(f"pid {pid} still alive {WAIT_SECONDS:g} s after SIGKILL", job=job)
    return len(killed)
