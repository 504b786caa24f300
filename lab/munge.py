"""munged for the lab's Slurm clusters: started in the foreground as the munge user, ready once
a credential round-trips, stopped by its PID (lab.process.stop_process).

Standard library only: the VM guest imports it.
"""
from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from lab.process import TOOL_PATH, LabError, die_with_parent, run, wait_for

MUNGE_USER = "munge"


def make_key(path: Path) -> Path:
    """A new random key at `path` (which must not exist), readable by the munge user only."""
    munge = pwd.getpwnam(MUNGE_USER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(1024))
    finally:
        os.close(fd)
    os.chown(path, munge.pw_uid, munge.pw_gid)
    return path


def start_munged(key: Path, state_dir: Path, socket: Path | None = None,
                 timeout: float = 20) -> subprocess.Popen:
    """munged with `key`, its PID file, log, seed and output in `state_dir` (made private to
    the munge user), listening on `socket` (munged's default when None). Returns once it
    answers; LabError if it exits or does not answer within `timeout` s."""
    munge = pwd.getpwnam(MUNGE_USER)
    state_dir.mkdir(mode=0o700, exist_ok=True)
    state_dir.chmod(0o700)
    os.chown(state_dir, munge.pw_uid, munge.pw_gid)
    socket_option = [f"--socket={socket}"] if socket else []
    output = state_dir / "munged.out"
    with open(output, "ab") as log:
        munged = subprocess.Popen(
            ["setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--clear-groups",
             "--pdeathsig=SIGKILL",  # a change of uid clears the one preexec_fn set
             "--", "/usr/sbin/munged", "--foreground", f"--key-file={key}", *socket_option,
             f"--pid-file={state_dir}/munged.pid", f"--log-file={state_dir}/munged.log",
             f"--seed-file={state_dir}/munged.seed"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True,
            env={"PATH": TOOL_PATH, "LANG": "C.UTF-8"}, preexec_fn=die_with_parent)

    def answers() -> bool:
        if munged.poll() is not None:
            raise LabError(f"munged exited {munged.returncode}: "
                           f"{output.read_text(errors='replace')[-3000:]}")
        credential = run(["munge", "-n", *socket_option], check=False, timeout=10)
        return credential.returncode == 0 and run(
            ["unmunge", *socket_option], input=credential.stdout, check=False,
            timeout=10).returncode == 0

    wait_for("munged to answer", answers, timeout, 0.05)
    return munged
