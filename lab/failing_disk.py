"""A loop device that fails on demand with real kernel I/O errors, for the tests of the kernel I/O
error check: its backing file lives on a small FUSE filesystem (lab/fuse_disk_server.py) that
returns EIO when told to, so the kernel's own block layer and filesystems log the errors
("I/O error, dev loopN, sector ...", "EXT4-fs error (device loopN)", "BTRFS error ...").

Everything it makes is undone by `close()` in reverse order: the loop device detached, the FUSE
filesystem unmounted, its server stopped by PID. Host only (python3-fuse); run it in the tests'
private mount namespace.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lab.kernel import attach_loop, detach_loop, is_mounted, make_image, sh
from lab.process import die_with_parent, stop_process, wait_for

SERVER = Path(__file__).resolve().parent / "fuse_disk_server.py"


class FailingDisk:
    def __init__(self, workdir: Path, size_mb: int = 128, name: str = "faulty") -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True)
        self.image = make_image(self.workdir / "image", size_mb)
        self.control = self.workdir / "control"
        self.mount_point = self.workdir / "fuse"
        self.mount_point.mkdir()
        self.device: str | None = None
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FUSE_DISK_IMAGE": str(self.image), "FUSE_DISK_CONTROL": str(self.control)}
        self.server = subprocess.Popen([sys.executable if sys.executable.startswith("/usr/bin/") else "/usr/bin/python3", str(SERVER),
                                        str(self.mount_point), "-f", "-s", "-o", "direct_io"],
                                       env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       preexec_fn=die_with_parent)
        try:
            wait_for("the FUSE disk", lambda: self.server.poll() is not None or (self.mount_point / "disk").exists(), 20, 0.05)
            if self.server.poll() is not None:
                raise RuntimeError(f"FUSE disk server exited {self.server.returncode}: {self.server.stderr.read().decode(errors='replace')}")
            self.device = attach_loop(self.mount_point / "disk")
        except BaseException:
            self.close()
            raise

    def fail(self, what: str = "all") -> None:
        """`all`, `N` (the next N requests) or `reads N`: see lab/fuse_disk_server.py."""
        self.control.write_text(what)

    def heal(self) -> None:
        self.control.write_text("")

    def close(self) -> None:
        self.heal()
        if self.device is not None:
            detach_loop(self.device)
            self.device = None
        if is_mounted(str(self.mount_point)):
            sh("umount", "--lazy", str(self.mount_point), check=False)
        stop_process(self.server.pid, self.server)
        if self.server.stderr is not None:
            self.server.stderr.close()
