"""Fixtures for the tests that run inside the test VM (see tests/vm/README.md).

The guest pytest runs with `-c tests/vm/guest/pytest.ini`, so this is the only conftest it
loads (not the repository's tests/conftest.py). The host only collects these modules, so
everything here imports nothing but the standard library and pytest at module level.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# the guest's own helpers (slurm_node), then the checkout's top for the lab (standard library only)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[3])]

from lab import guest_node as node  # noqa: E402
from lab.nvme_disks import DiskRig, mount_backing_tmpfs  # noqa: E402

BACKING_DIR = Path("/var/tmp/nvme-backing")
# Files the tool or the tests may change on the node; restored after every test.
NODE_FILES = (Path("/etc/mdadm/mdadm.conf"), Path("/etc/fstab"),
              Path("/etc/lvm/devices/system.devices"))


@pytest.fixture
def slurm_stack(disks, tool_available):
    """make(workdir, tool_settings, users) -> a prepared slurm_node.SlurmNode (daemons not
    started) with `users` ((name, uid), ...) added; all its daemons are stopped by PID, its files
    put back and its workdir removed after the test, before the disks go."""
    from slurm_node import SlurmNode

    made = []

    def make(workdir: Path, settings: dict[str, dict[str, str]], users) -> SlurmNode:
        stack = SlurmNode(workdir, settings)
        made.append(stack)
        stack.prepare()
        for name, uid in users:
            stack.add_user(name, uid)
        return stack

    yield make
    problems = []
    for stack in made:
        problems += stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)
    if problems:
        pytest.fail(f"teardown: {problems}")


@pytest.fixture(scope="session")
def guest() -> None:
    if not node.in_test_vm():
        pytest.fail("these tests run only inside the test VM (tests/vm/test_vm.py boots it)")
    mount_backing_tmpfs(BACKING_DIR)


@pytest.fixture
def disks(guest: None, tmp_path: Path):
    """A DiskRig: `disks.create(n, model=..., size=...)` makes NVMe/TCP disks. Afterwards
    everything is unmounted, stopped, disconnected and deleted, and the tool's state and the
    node's files are reset, so the next test starts from a clean node."""
    saved = {path: path.read_bytes() if path.exists() else None for path in NODE_FILES}
    rig = DiskRig(BACKING_DIR)
    yield rig
    problems = node.reset_node()
    problems += rig.destroy()
    for path, content in saved.items():
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content)
    leftovers = [str(p) for p in BACKING_DIR.iterdir()]
    for path in BACKING_DIR.iterdir():
        path.unlink()
    if problems or leftovers:
        pytest.fail(f"teardown: {problems} leftover backing files: {leftovers}")


@pytest.fixture
def conf(tmp_path: Path):
    """conf(**volume_keys) -> Path of a config file with a [volume] section (other sections
    through `sections={...}`)."""
    count = 0

    def make(sections: dict[str, dict[str, str]] | None = None, **volume: str) -> Path:
        nonlocal count
        count += 1
        return node.write_config(tmp_path / f"slurm-scratch-{count}.conf", volume, sections)

    return make


@pytest.fixture
def tool_available() -> None:
    """Skip (with the reason) when the volume code is not in the tree yet."""
    if not (node.SOURCE / "slurm_scratch" / "volume").is_dir():
        pytest.skip("slurm_scratch/volume is not in the tree yet")


def pytest_report_header(config: pytest.Config) -> str:
    return f"guest: source {node.SOURCE}, lvm {shutil.which('lvm')}, mdadm {shutil.which('mdadm')}"
