"""End a user's processes that still hold a job directory (cwd or open files), before it is retired."""

from __future__ import annotations

import psutil

from slurm_scratch import log

WAIT_SECONDS = 2.0


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


def holders(directory: str, uid: int) -> list[psutil.Process]:
    """Processes of `uid` whose working directory or an open file lies inside `directory`."""
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            uids = process.info["uids"]
            if uids is None or uid not in (uids.real, uids.effective):
                continue
            if _inside(process.cwd(), directory) or any(_inside(f.path, directory) for f in process.open_files()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def end_holders(directory: str, uid: int, job: object = None) -> int:
    """SIGKILL the holders (the job is over) and wait a bounded time for them; returns how many."""
    victims = holders(directory, uid)
    for process in victims:
        try:
            log.info(f"killing pid {process.pid} ({process.name()}) of uid {uid}: it holds {directory}", job=job)
            process.kill()
        except psutil.NoSuchProcess:
            pass
    if victims:
        _, alive = psutil.wait_procs(victims, timeout=WAIT_SECONDS)
        for process in alive:
            log.warning(f"pid {process.pid} still alive {WAIT_SECONDS:g} s after SIGKILL", job=job)
    return len(victims)
