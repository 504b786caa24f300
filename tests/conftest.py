"""Shared test set-up. As root, the whole pytest process first moves into a private mount namespace:
every mount a test makes (and any it forgets) disappears with the process, and the host's mount
table is never touched. In it, tmpfs covers the tool's state dirs and extended copies of
/etc/passwd and /etc/group add the unprivileged test users."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from scratchtest.kernel import LoopFactory, sh  # noqa: E402

CLONE_NEWNS = 0x00020000
STATE_DIRS = ("/run/slurm-scratch", "/var/lib/slurm-scratch")
TEST_USERS = (("sstest1", 4201), ("sstest2", 4202))
IS_ROOT = os.geteuid() == 0
_undo: list = []


def _enter_private_mount_namespace() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    sh("mount", "--make-rprivate", "/")


def _private_state_dirs(scratch: Path) -> None:
    for directory in STATE_DIRS:
        created = not os.path.exists(directory)
        os.makedirs(directory, exist_ok=True)
        if created:  # undone last-in first-out: this runs after the umount below
            _undo.append(lambda d=directory: os.rmdir(d))
        sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "tmpfs", directory)
        _undo.append(lambda d=directory: sh("umount", d, check=False))


def _test_users(scratch: Path) -> None:
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    names = {line.split(":")[0] for line in passwd.splitlines()}
    for user, uid in TEST_USERS:
        if user not in names:
            passwd += f"{user}:x:{uid}:{uid}:slurm-scratch test user:/tmp:/bin/sh\n"
            group += f"{user}:x:{uid}:\n"
    for name, text in (("passwd", passwd), ("group", group)):
        copy = scratch / name
        copy.write_text(text)
        copy.chmod(0o644)
        sh("mount", "--bind", str(copy), f"/etc/{name}")
        _undo.append(lambda n=name: sh("umount", f"/etc/{n}", check=False))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: runs inside a QEMU guest (LVM, mdadm, NVMe identities)")
    config.addinivalue_line("markers", "cluster: runs a real Slurm cluster (munge, slurmctld, slurmd)")
    config.addinivalue_line("markers", "root: needs root (loop devices, mounts, namespaces)")
    if not IS_ROOT or hasattr(config, "workerinput"):
        return
    _enter_private_mount_namespace()
    scratch = Path(tempfile.mkdtemp(prefix="slurm-scratch-tests-"))
    _undo.append(lambda: shutil.rmtree(scratch, ignore_errors=True))
    _private_state_dirs(scratch)
    _test_users(scratch)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _undo:
        _undo.pop()()


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords or "vm" in item.keywords or "cluster" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a VM or cluster test that skips is a failure: CI installs all they need."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and ("vm" in item.keywords or "cluster" in item.keywords):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where everything it needs is installed: {report.longrepr}"


@pytest.fixture
def loops(tmp_path: Path):
    """Factory for loop devices and mounted loop filesystems; all unmounted and detached afterwards."""
    factory = LoopFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """`make install PREFIX=<tmp>`: the installed CLI and hooks, as an admin would get them."""
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(["make", "-s", "install", f"PREFIX={prefix}"], cwd=REPO, check=True, capture_output=True, timeout=600)
    return prefix
