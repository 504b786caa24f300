"""Which disks `setup` takes, and which it never touches: EBS volumes, partitioned disks and
disks carrying someone else's filesystem are left exactly as they were; Azure, GCP and
explicit on-prem lists select their own disks."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lab import guest_node as node
from lab.nvme_disks import AZURE_DIRECT, AZURE_DIRECT_V2, EBS, GCP_LOCAL_SSD, PLAIN, sh

MOUNT_POINT = Path("/scratch")
VM_TIMEOUT_S = 900


def head_digest(device: Path, size: int = 4 << 20) -> str:
    """A digest of the first MiBs (where partition tables, PV labels, md superblocks and
    filesystem superblocks live) and the last MiB (GPT backup, md 0.90/1.0 superblocks)."""
    digest = hashlib.sha256()
    with open(device, "rb") as disk:
        digest.update(disk.read(size))
        disk.seek(-(1 << 20), 2)
        digest.update(disk.read())
    return digest.hexdigest()


def members() -> list[str]:
    recorded = node.read_state()
    assert recorded, "setup recorded no volume"
    return sorted(member["serial"] for member in recorded["members"])


def test_ebs_volumes_are_never_used(disks, conf, tool_available):
    store = disks.create(2)
    ebs = disks.create(2, model=EBS)
    sh("mkfs.ext4", "-q", "-L", "data", str(ebs[1].device()))
    before = {disk.serial: head_digest(disk.device()) for disk in ebs}

    node.setup_ok(conf(devices="aws"))

    assert members() == sorted(disk.serial for disk in store)
    assert {disk.serial: head_digest(disk.device()) for disk in ebs} == before


@pytest.mark.parametrize("devices", ["aws", "auto"])
def test_a_node_with_only_ebs_volumes_gets_no_volume(disks, conf, tool_available, devices):
    ebs = disks.create(2, model=EBS)
    before = {disk.serial: head_digest(disk.device()) for disk in ebs}

    result = node.slurm_scratch(conf(devices=devices), "setup")

    assert result.returncode == 1, node.describe(result)
    assert "no disk" in result.stderr, node.describe(result)
    assert node.mount_of(str(MOUNT_POINT)) is None
    assert {disk.serial: head_digest(disk.device()) for disk in ebs} == before


def test_a_partitioned_instance_store_disk_is_skipped_and_kept(disks, conf, tool_available):
    store = disks.create(3)
    partitioned = store[0]
    sh("sfdisk", "-q", str(partitioned.device()), input_text="label: gpt\n,100M\n,\n")
    sh("udevadm", "settle")
    table = sh("sfdisk", "--dump", str(partitioned.device())).stdout
    before = head_digest(partitioned.device())
    config = conf(devices="aws")

    node.setup_ok(config)

    assert members() == sorted(disk.serial for disk in store[1:])
    assert sh("sfdisk", "--dump", str(partitioned.device())).stdout == table
    assert head_digest(partitioned.device()) == before
    skipped = {disk["serial"]: disk["reason"] for disk in node.status_json(config)["skipped"]}
    assert "partition" in skipped.get(partitioned.serial, ""), skipped


def make_foreign_ext4(device: Path, tmp_path: Path) -> bytes:
    """Someone else's ext4 with a file on it (not labelled like ours)."""
    sh("mkfs.ext4", "-q", "-L", "userdata", str(device))
    mount_point = tmp_path / "foreign"
    mount_point.mkdir(exist_ok=True)
    sh("mount", str(device), str(mount_point))
    payload = b"precious\n" * 1000
    (mount_point / "results.dat").write_bytes(payload)
    sh("umount", str(mount_point))
    return payload


def test_an_instance_store_disk_with_a_foreign_ext4_is_never_touched(disks, conf, tool_available,
                                                                      tmp_path):
    store = disks.create(3)
    foreign = store[2]
    payload = make_foreign_ext4(foreign.device(), tmp_path)
    uuid = node.fs_uuid(foreign.device())
    before = head_digest(foreign.device())
    config = conf(devices="aws")

    result = node.setup_ok(config)

    assert members() == sorted(disk.serial for disk in store[:2])
    assert head_digest(foreign.device()) == before
    assert node.fs_uuid(foreign.device()) == uuid
    check = tmp_path / "check"
    check.mkdir()
    sh("mount", "-o", "ro", str(foreign.device()), str(check))
    try:
        assert (check / "results.dat").read_bytes() == payload
    finally:
        sh("umount", str(check))
    assert foreign.serial in result.stderr  # the log says why it was skipped
    skipped = {disk["serial"]: disk["reason"] for disk in node.status_json(config)["skipped"]}
    assert "ext4" in skipped.get(foreign.serial, ""), skipped


def test_wipe_yes_takes_a_disk_with_a_foreign_filesystem(disks, conf, tool_available, tmp_path):
    store = disks.create(2)
    make_foreign_ext4(store[1].device(), tmp_path)

    node.setup_ok(conf(devices="aws", wipe="yes"))

    assert members() == sorted(disk.serial for disk in store)


@pytest.mark.parametrize("devices", ["azure", "auto"])
def test_azure_local_nvme_disks_are_used(disks, conf, tool_available, devices):
    azure = disks.create(2, model=AZURE_DIRECT) + disks.create(1, model=AZURE_DIRECT_V2)
    other = disks.create(1, model=PLAIN)
    before = head_digest(other[0].device())

    node.setup_ok(conf(devices=devices, backend="mdadm", filesystem="xfs"))

    assert members() == sorted(disk.serial for disk in azure)
    assert node.mount_of(str(MOUNT_POINT))[2] == "xfs"
    assert head_digest(other[0].device()) == before


def test_gcp_local_ssds_are_used(disks, conf, tool_available):
    local = disks.create(2, model=GCP_LOCAL_SSD)
    node.setup_ok(conf(devices="gcp"))
    assert members() == sorted(disk.serial for disk in local)


def test_an_explicit_device_list_uses_exactly_those_disks(disks, conf, tool_available):
    listed = disks.create(2, model=PLAIN)
    unlisted = disks.create(1, model=PLAIN)
    before = head_digest(unlisted[0].device())

    node.setup_ok(conf(devices=" ".join(str(disk.device()) for disk in listed)))

    assert members() == sorted(disk.serial for disk in listed)
    assert head_digest(unlisted[0].device()) == before


def test_an_explicit_glob_matches_by_id_links_once_per_disk(disks, conf, tool_available):
    serials = ["ONPREM0001", "ONPREM0002", "ONPREM0003"]
    listed = disks.create(3, model=PLAIN, serials=serials)
    other = disks.create(1, model=PLAIN, serials=["OTHER0001"])
    before = head_digest(other[0].device())
    config = conf(devices="/dev/disk/by-id/nvme-Linux_ONPREM*", backend="lvm")

    node.setup_ok(config)

    assert members() == serials
    assert int(node.lv_layout("vg.01", "lv_ephemeral")["stripes"]) == 3
    assert head_digest(other[0].device()) == before
    del listed


def test_an_explicit_list_skips_a_mounted_disk(disks, conf, tool_available, tmp_path):
    listed = disks.create(3, model=PLAIN)
    busy = listed[0]
    sh("mkfs.ext4", "-q", str(busy.device()))
    mount_point = tmp_path / "busy"
    mount_point.mkdir()
    sh("mount", str(busy.device()), str(mount_point))
    try:
        config = conf(devices=" ".join(str(disk.device()) for disk in listed), wipe="yes")
        node.setup_ok(config)
        assert members() == sorted(disk.serial for disk in listed[1:])
        assert node.mount_of(str(mount_point)) is not None
        skipped = {d["serial"]: d["reason"] for d in node.status_json(config)["skipped"]}
        assert "mounted" in skipped.get(busy.serial, ""), skipped
    finally:
        sh("umount", str(mount_point), check=False)


# -- issue 8: ours by proof (a tag, the md name, the marker), never by a name or label alone --
STATE_FILE = Path("/var/lib/slurm-scratch/volume.json")


@pytest.mark.parametrize("backend", ["lvm", "mdadm"])
def test_a_stateless_node_adopts_its_volume_by_the_marks_setup_put_on_it(disks, conf, tool_available, backend):
    """/var/lib is lost (a diskless node, a recreated container); the disks keep the VG tag or the
    md array's name and the filesystem's marker: the next boot adopts the volume with its data."""
    made = disks.create(2)
    config = conf(devices="aws", backend=backend)
    node.setup_ok(config)
    source = node.mount_of(str(MOUNT_POINT))[0]
    uuid = node.fs_uuid(source)
    if backend == "lvm":
        assert node.lvm_report("vgs", "vg_tags", "vg.01")[0]["vg_tags"] == "slurm-scratch"
        assert node.lvm_report("lvs", "lv_tags", "vg.01/lv_ephemeral")[0]["lv_tags"] == "slurm-scratch"
    else:
        assert node.md_detail(source)["MD_NAME"].rsplit(":", 1)[-1] == "scratch"
    marker = MOUNT_POINT / ".slurm-scratch-volume"
    assert marker.read_text().strip() == uuid and marker.stat().st_uid == 0 and marker.stat().st_mode & 0o777 == 0o600
    (MOUNT_POINT / "data").write_text("kept")

    node.reboot(disks, autoactivate=False)
    STATE_FILE.unlink()
    result = node.setup_ok(config)

    assert node.fs_uuid(node.mount_of(str(MOUNT_POINT))[0]) == uuid, "reformatted: " + result.stderr
    assert (MOUNT_POINT / "data").read_text() == "kept"
    assert "ran /usr/sbin/mkfs" not in result.stderr and "wipefs" not in result.stderr
    assert members() == sorted(disk.serial for disk in made)


def test_a_foreign_vg_named_vg01_is_never_touched(disks, conf, tool_available):
    """Someone's VG that happens to be called vg.01, with an LV of another name and no tag of
    ours: while active its disks are held (dm); inactive they still carry it. Never used, never
    wiped (not even with on_degraded = rebuild), and the log names the disk and what it carries."""
    theirs = disks.create(2)
    devices = [str(disk.device()) for disk in theirs]
    sh("pvcreate", "-y", *devices)
    sh("vgcreate", "-y", "vg.01", *devices)
    sh("lvcreate", "-y", "-l", "100%FREE", "-n", "data", "vg.01")
    sh("mkfs.ext4", "-q", "-L", "scratch", "/dev/vg.01/data")
    sh("udevadm", "settle")
    config = conf(devices="aws", on_degraded="rebuild")

    held = node.slurm_scratch(config, "setup")
    assert held.returncode == 1, node.describe(held)
    for disk in theirs:
        assert f"skipping {disk.device()}" in held.stderr and "is in use by dm-" in held.stderr, node.describe(held)

    sh("vgchange", "-an", "vg.01")
    before = {disk.serial: head_digest(disk.device()) for disk in theirs}
    refused = node.slurm_scratch(config, "setup")
    assert refused.returncode == 1, node.describe(refused)
    assert "carries an LVM physical volume of VG 'vg.01' (LV data) that is not ours" in refused.stderr, node.describe(refused)
    assert "no usable disk" in refused.stderr
    assert node.mount_of(str(MOUNT_POINT)) is None
    assert {disk.serial: head_digest(disk.device()) for disk in theirs} == before
    assert node.lvm_report("vgs", "vg_tags", "vg.01")[0]["vg_tags"] == ""
    skipped = {d["serial"]: d["reason"] for d in node.status_json(config)["skipped"]}
    assert all("(LV data) that is not ours" in skipped.get(disk.serial, "") for disk in theirs), skipped
