"""Shared test set-up. As root, the whole pytest process first moves into a private sandbox
(lab/sandbox.py): a private mount namespace, so every mount a test makes (and any it
forgets) disappears with the process and the host's mount table is never touched; tmpfs over the
tool's state dirs; the unprivileged test users sstest1 and sstest2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from lab.kernel import LoopFactory  # noqa: E402
from lab.sandbox import Sandbox  # noqa: E402

IS_ROOT = os.geteuid() == 0
_sandbox = Sandbox()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: runs inside a QEMU guest (LVM, mdadm, NVMe identities)")
    config.addinivalue_line("markers", "cluster: runs a real Slurm cluster (munge, slurmctld, slurmd)")
    config.addinivalue_line("markers", "root: needs root (loop devices, mounts, namespaces)")
    if not IS_ROOT or hasattr(config, "workerinput"):
        return
    _sandbox.open()


def pytest_unconfigure(config: pytest.Config) -> None:
    _sandbox.close()


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
    expected_failure = hasattr(report, "wasxfail")  # an xfail is reported as skipped: keep it one
    if os.environ.get("CI") == "true" and report.skipped and not expected_failure and ("vm" in item.keywords or "cluster" in item.keywords):
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
