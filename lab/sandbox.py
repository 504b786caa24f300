"""A private sandbox for the test session and the demo: a private mount namespace for this process
(and its children), tmpfs over the tool's state dirs, and unprivileged users added through
bind-mounted copies of /etc/passwd and /etc/group. Nothing of it outlives the process's mounts;
`Sandbox.close()` undoes it in reverse order, and the kernel drops the namespace with the process."""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from lab.kernel import sh

CLONE_NEWNS = 0x00020000
STATE_DIRS = ("/run/slurm-scratch", "/var/lib/slurm-scratch")
TEST_USERS = (("sstest1", 4201), ("sstest2", 4202))


class Sandbox:
    def __init__(self) -> None:
        self._undo: list[Callable[[], object]] = []

    def open(self) -> "Sandbox":
        _enter_private_mount_namespace()
        workdir = Path(tempfile.mkdtemp(prefix="slurm-scratch-sandbox-"))
        self._undo.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
        self._private_state_dirs()
        self._add_users(workdir)
        return self

    def close(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _private_state_dirs(self) -> None:
        for directory in STATE_DIRS:
            if not os.path.exists(directory):
                os.makedirs(directory)
                self._undo.append(lambda d=directory: os.rmdir(d))  # runs after the umount below
            sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "tmpfs", directory)
            self._undo.append(lambda d=directory: sh("umount", d, check=False))

    def _add_users(self, workdir: Path) -> None:
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        names = {line.split(":")[0] for line in passwd.splitlines()}
        for user, uid in TEST_USERS:
            if user not in names:
                passwd += f"{user}:x:{uid}:{uid}:slurm-scratch test user:/tmp:/bin/sh\n"
                group += f"{user}:x:{uid}:\n"
        for name, text in (("passwd", passwd), ("group", group)):
            copy = workdir / name
            copy.write_text(text)
            copy.chmod(0o644)
            sh("mount", "--bind", str(copy), f"/etc/{name}")
            self._undo.append(lambda n=name: sh("umount", f"/etc/{n}", check=False))


def _enter_private_mount_namespace() -> None:
    # unshare() moves only the calling thread: call it before any thread is started.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    sh("mount", "--make-rprivate", "/")
