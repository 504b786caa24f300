"""The LVM backend's view of real LVM metadata on loop devices. This kernel has no device-mapper, so
nothing can be activated here (that runs in the VM tests), but PVs and VGs are on-disk metadata:
what `observe()` reads from real `pvs`/`vgs` reports and what `plan()` makes of it — a crash after
pvcreate or vgcreate, a foreign VG, a PV gone missing — is tested for real. /etc/lvm is replaced
by a private copy for the test, so LVM's backup/archive files never reach the host's."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from lab.kernel import detach_loop, sh
from test_volume import STATE_FILE, Node, blkid, fresh_state  # noqa: F401  (fresh_state: autouse fixture)

pytestmark = [pytest.mark.root, pytest.mark.skipif(shutil.which("pvcreate", path="/usr/sbin:/sbin") is None, reason="lvm2 is not installed")]

LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def lvm_tool(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=LVM_ENV, capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture
def lvm(tmp_path):
    """LVM with a private /etc/lvm (bind mount in the test process's private mount namespace)."""
    private = tmp_path / "etc-lvm"
    shutil.copytree("/etc/lvm", private, symlinks=True)
    sh("mount", "--bind", str(private), "/etc/lvm")
    made: list[str] = []

    def run(*argv: str) -> None:
        lvm_tool(*argv)
        if argv[0] == "vgcreate":
            made.append(argv[2])

    try:
        yield run
    finally:
        for vg in made:
            lvm_tool("vgremove", "-ff", "-y", vg, check=False)
        sh("umount", "/etc/lvm", check=False)


def record_building(disks: list[str]) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"status": "building", "backend": "lvm", "members": [{"path": d, "serial": ""} for d in disks]}))


def test_crash_after_pvcreate_goes_on_with_vgcreate(tmp_path, loops, lvm) -> None:
    disks = [loops.device(64) for _ in range(2)]
    lvm("pvcreate", "-y", *disks)
    node = Node(tmp_path, disks, backend="lvm")
    # Without the state file an orphan PV is nobody's: not ours to take.
    refused = node.setup("--dry-run")
    assert refused.returncode == 1 and "an LVM physical volume (no VG)" in refused.stderr
    record_building(disks)
    plan = node.setup("--dry-run")
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    assert not any(line.startswith(("pvcreate", "wipefs")) for line in lines)
    assert f"vgcreate -y --addtag slurm-scratch vg.01 {disks[0]} {disks[1]}" in lines
    assert "lvcreate -y -W y --addtag slurm-scratch -i 2 -I 64 -l 100%FREE -n lv_ephemeral vg.01" in lines


def test_crash_after_vgcreate_goes_on_with_lvcreate(tmp_path, loops, lvm) -> None:
    disks = [loops.device(64) for _ in range(3)]
    lvm("pvcreate", "-y", *disks)
    lvm("vgcreate", "-y", "--addtag", "slurm-scratch", "vg.01", *disks)  # as setup makes it (no state file: a stateless node)
    node = Node(tmp_path, disks, backend="auto")
    plan = node.setup("--dry-run")
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    assert lines[0].startswith("# backend lvm: complete")
    assert lines[2] == "lvcreate -y -W y --addtag slurm-scratch -i 3 -I 64 -l 100%FREE -n lv_ephemeral vg.01"
    assert not any(line.startswith(("pvcreate", "vgcreate")) for line in lines)
    report = node.status()
    assert report["backend"] == "lvm" and all(disk["ours"] for disk in report["disks"])


def test_a_foreign_volume_group_is_skipped(tmp_path, loops, lvm) -> None:
    theirs, blank = loops.device(64), loops.device(64)
    lvm("pvcreate", "-y", theirs)
    lvm("vgcreate", "-y", "vg_theirs", theirs)
    node = Node(tmp_path, [theirs, blank], backend="lvm")
    plan = node.setup("--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert f"skipping {theirs}: carries an LVM physical volume of VG 'vg_theirs'" in plan.stderr
    assert f"pvcreate -y {blank}" in plan.stdout.splitlines()
    assert theirs not in plan.stdout


def test_an_untagged_vg_named_like_ours_is_not_ours(tmp_path, loops, lvm) -> None:
    """vg.01 without our tag: only the seed's exact layout (one LV, lv_ephemeral) is adopted; a VG
    of that name with another LV, or with none, is someone else's and is refused, naming it."""
    theirs = [loops.device(64) for _ in range(2)]
    lvm("pvcreate", "-y", *theirs)
    lvm("vgcreate", "-y", "vg.01", *theirs)
    node = Node(tmp_path, theirs, backend="lvm")
    refused = node.setup("--dry-run")
    assert refused.returncode == 1, refused.stdout
    for disk in theirs:
        assert f"skipping {disk}: carries an LVM physical volume of VG 'vg.01' that is not ours" in refused.stderr
    assert "# would fail: no usable disk" in refused.stdout
    # with an LV of another name (metadata only: this kernel has no device-mapper)
    lvm_tool("lvcreate", "--config", "global/activation=0", "-an", "-Zn", "-y", "-l", "4", "-n", "data", "vg.01")
    refused = node.setup("--dry-run")
    assert refused.returncode == 1
    assert f"skipping {theirs[0]}: carries an LVM physical volume of VG 'vg.01' (LV data) that is not ours" in refused.stderr
    report = node.status()
    assert [s["path"] for s in report["skipped"]] == theirs and report["disks"] == []
    # the seed's layout is adopted: vg.01 holding exactly lv_ephemeral
    lvm_tool("lvrename", "--config", "global/activation=0", "vg.01", "data", "lv_ephemeral")
    adopted = node.status()
    assert [d["path"] for d in adopted["disks"]] == theirs and all(d["ours"] for d in adopted["disks"])
    assert adopted["setup_would"][0] == "vgchange --addtag slurm-scratch vg.01"
    lvm_tool("lvremove", "--config", "global/activation=0", "-y", "vg.01/lv_ephemeral")


def test_a_missing_pv_fails_naming_it_and_touches_nothing(tmp_path, loops, lvm) -> None:
    disks = [loops.device(64) for _ in range(2)]
    lvm("pvcreate", "-y", *disks)
    lvm("vgcreate", "-y", "vg.01", *disks)
    STATE_FILE.write_text(json.dumps({"status": "ready", "backend": "lvm", "vg_name": "vg.01", "members": [{"path": d, "serial": ""} for d in disks]}))
    # Pull the second disk: detach the loop device we attached, and forget it in the factory.
    detach_loop(disks[1])
    loops.devices.remove(disks[1])
    before = blkid(disks[0])
    node = Node(tmp_path, disks[:1], backend="lvm")
    failed = node.setup()
    assert failed.returncode == 1
    assert f"missing disk {disks[1]}" in failed.stderr and "1 of 2 present" in failed.stderr
    assert blkid(disks[0]) == before
    assert node.status()["state"] == "degraded"
    node.write(disks[:1], backend="lvm", on_degraded="rebuild")
    plan = node.setup("--dry-run")
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    assert lines[1].startswith("# rebuilding")
    assert lines[2:5] == ["vgchange -an vg.01", f"wipefs -a {disks[0]}   # an LVM physical volume of VG 'vg.01'",
                          "record the member disks in /var/lib/slurm-scratch/volume.json (building)"]
    assert f"pvcreate -y {disks[0]}" in lines and f"vgcreate -y --addtag slurm-scratch vg.01 {disks[0]}" in lines
    assert "lvcreate -y -W y --addtag slurm-scratch -l 100%FREE -n lv_ephemeral vg.01" in lines
