"""A Debian rootfs with another Slurm (trixie: 24.11, sid: 26.05) for the cluster tests, built
once with mmdebstrap from the machine's own Debian archive and cached under /var/cache.

Cluster(rootfs=...) runs every daemon, hook, job and client in it (chroot); `install_project`
installs the project into it with its own Python (`make install` run inside the rootfs), so the
hooks run the way they would on a trixie node.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from lab.process import LabError

CACHE = Path("/var/cache/slurm-scratch-tests")
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
PACKAGES = (
    "slurmctld", "slurmd", "slurm-client", "munge",   # Slurm (munged itself runs on the machine)
    "util-linux", "mount", "e2fsprogs", "btrfs-progs", "procps", "iproute2", "hostname", "findutils",
    "python3", "python3-venv", "make", "ca-certificates",  # `make install` inside the rootfs
)
# sid's Release file carries a Valid-Until that a pinned archive snapshot outlives (as the machine's
# own apt configuration, these accept it; a release's Release file has none)
APT_OPTIONS = ('Acquire::Check-Valid-Until "false"', 'Acquire::Check-Date "false"')
# mount points the harness and the tool need inside the rootfs
DIRS = ("scratch", "etc/slurm-scratch", "run/slurm-scratch", "var/lib/slurm-scratch", "run/munge")


RootfsError = LabError  # the lab's one error type


def archive_uri() -> str:
    """The Debian archive this machine uses (first `URIs:` of its deb822 sources)."""
    for line in SOURCES.read_text().splitlines():
        if line.startswith("URIs:"):
            return line.split()[1]
    raise RootfsError(f"{SOURCES}: no URIs: line")


def slurm_rootfs(suite: str = "trixie") -> Path:
    """The cached rootfs for `suite` (built on first use: about a minute, ~260 MB)."""
    key = hashlib.sha256(" ".join((suite, *PACKAGES, *DIRS)).encode()).hexdigest()[:12]
    path = CACHE / f"slurm-rootfs-{suite}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".slurm-rootfs-{suite}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; others wait and reuse it
        if (path / ".complete").exists():
            return path
        building = CACHE / f".build-{path.name}-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        try:
            made = subprocess.run(
                ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 *(f"--aptopt={option}" for option in APT_OPTIONS), suite, str(building), archive_uri()],
                capture_output=True, text=True, timeout=900)
            if made.returncode != 0:
                raise RootfsError(f"mmdebstrap {suite} exited {made.returncode}: "
                                  f"{made.stderr.strip()[-3000:]}")
            for directory in DIRS:
                (building / directory).mkdir(parents=True, exist_ok=True)
            (building / ".complete").write_text(" ".join(PACKAGES) + "\n")
            building.rename(path)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return path


def slurm_version(rootfs: Path) -> str:
    out = subprocess.run(["chroot", str(rootfs), "/usr/sbin/slurmd", "-V"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return out.split()[-1]


@contextlib.contextmanager
def bound_into(rootfs: Path, *paths: str, read_only: tuple[str, ...] = ()):
    """Bind-mount `paths` (plus /proc, /sys, /dev) at the same place inside the rootfs, in this
    process's (private) mount namespace, for the duration of the block; those also named in
    `read_only` are bound read-only (nothing run in the rootfs may write the host's copy)."""
    mounted: list[Path] = []
    made: list[Path] = []
    try:
        for source in ("/proc", "/sys", "/dev", *paths):
            target = rootfs / source.lstrip("/")
            missing = [d for d in (target, *target.parents) if not d.exists()]
            for directory in reversed(missing):
                directory.mkdir()
                made.append(directory)
            subprocess.run(["mount", "--rbind", source, str(target)], check=True)
            mounted.append(target)
            if source in read_only:
                subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "--recursive", str(target)], check=False)
        for target in reversed(made):
            with contextlib.suppress(OSError):
                target.rmdir()


def install_project(rootfs: Path, repo: Path, prefix: Path) -> None:
    """`make install PREFIX=<prefix>` inside the rootfs, with the rootfs's own python3; pip
    trusts what this machine trusts (its CA certificates, bound in)."""
    env = {**os.environ, "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"}
    with bound_into(rootfs, str(repo), str(prefix), "/etc/ssl/certs", read_only=("/etc/ssl/certs",)):
        made = subprocess.run(
            ["chroot", str(rootfs), "make", "-s", "-C", str(repo), "install", f"PREFIX={prefix}",
             "PYTHON=/usr/bin/python3"], capture_output=True, text=True, timeout=900, env=env)
    if made.returncode != 0:
        raise RootfsError(f"make install in {rootfs} failed:\n{made.stdout}{made.stderr}")
