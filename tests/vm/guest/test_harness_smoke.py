"""The harness itself: NVMe/TCP disks with the EC2 instance-store identity, LVM striping and
mdadm RAID0 on them, and disks that go away and come back with their data."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from lab import guest_node as node
from lab.nvme_disks import EBS, EC2_INSTANCE_STORE, sh

VG = "vg.smoke"


def sysfs_attr(device: Path, name: str) -> str:
    controller = Path("/sys/class/block") / device.name / "device"
    return (controller / name).read_text().strip()


def test_two_instance_store_disks_carry_the_ec2_identity(disks):
    made = disks.create(2)
    for disk in made:
        assert re.fullmatch(r"AWS[0-9A-F]{17}", disk.serial)
        expected = Path(f"/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_{disk.serial}")
        assert expected.is_symlink(), sorted(os.listdir("/dev/disk/by-id"))
        assert expected.resolve() == disk.device()
        assert sysfs_attr(disk.device(), "model") == EC2_INSTANCE_STORE
        assert sysfs_attr(disk.device(), "serial") == disk.serial
    listed = json.loads(sh("lsblk", "--json", "-d", "-o", "NAME,MODEL,SERIAL").stdout)
    rows = {row["serial"]: row["model"] for row in listed["blockdevices"] if row["serial"]}
    assert {disk.serial: rows.get(disk.serial) for disk in made} == \
        {disk.serial: EC2_INSTANCE_STORE for disk in made}
    assert len({disk.device() for disk in made}) == 2


def test_an_ebs_model_disk_is_named_as_ebs(disks):
    (disk,) = disks.create(1, model=EBS)
    assert disk.by_id == Path(f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{disk.serial}")
    assert disk.by_id.resolve() == disk.device()


def test_lvm_stripes_across_two_disks(disks):
    devices = [str(disk.device()) for disk in disks.create(2)]
    sh("pvcreate", "-q", *devices)
    sh("vgcreate", "-q", VG, *devices)
    sh("lvcreate", "-q", "-y", "-i", "2", "-I", "64", "-l", "100%FREE", "-n", "lv", VG)
    (lv,) = node.lvm_report("lvs", "lv_name,stripes,stripe_size", "--units", "k", VG)
    assert (lv["stripes"], lv["stripe_size"]) == ("2", "64.00k")
    assert Path(f"/dev/{VG}/lv").exists()
    sh("mkfs.ext4", "-q", f"/dev/{VG}/lv")
    assert node.fs_type(f"/dev/{VG}/lv") == "ext4"


def test_mdadm_raid0_across_two_disks(disks):
    devices = [str(disk.device()) for disk in disks.create(2)]
    sh("mdadm", "--create", "/dev/md/smoke", "--run", "--level=0", "--chunk=64",
       "--raid-devices=2", *devices)
    detail = sh("mdadm", "--detail", "/dev/md/smoke").stdout
    assert "raid0" in detail and "Chunk Size : 64K" in detail, detail
    sh("mkfs.xfs", "-q", "-K", "/dev/md/smoke")
    assert node.fs_type("/dev/md/smoke") == "xfs"


def write_marker(mount_point: Path) -> bytes:
    payload = os.urandom(1 << 20)
    (mount_point / "marker").write_bytes(payload)
    os.sync()
    return payload


def test_lvm_data_survives_disconnect_and_reconnect(disks, tmp_path):
    made = disks.create(2)
    devices = [str(disk.device()) for disk in made]
    sh("vgcreate", "-q", VG, *devices)
    sh("lvcreate", "-q", "-y", "-i", "2", "-I", "64", "-l", "100%FREE", "-n", "lv", VG)
    sh("mkfs.ext4", "-q", f"/dev/{VG}/lv")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    sh("mount", f"/dev/{VG}/lv", str(mount_point))
    payload = write_marker(mount_point)

    node.reboot(disks, autoactivate=False)
    assert not os.path.ismount(mount_point)
    assert not Path(f"/dev/{VG}/lv").exists()
    sh("vgchange", "-q", "-ay", VG)
    sh("mount", f"/dev/{VG}/lv", str(mount_point))
    assert (mount_point / "marker").read_bytes() == payload
    sh("umount", str(mount_point))

    # A reboot as on a systemd node: udev's LVM rule activates the complete VG by itself.
    node.reboot(disks)
    assert Path(f"/dev/{VG}/lv").exists()
    sh("mount", f"/dev/{VG}/lv", str(mount_point))
    assert (mount_point / "marker").read_bytes() == payload
    sh("umount", str(mount_point))

    # One disk pulled: LVM reports it missing.
    sh("vgchange", "-q", "-an", VG)
    made[1].disconnect()
    report = node.lvm_report("vgs", "vg_name,pv_count,vg_missing_pv_count", VG)
    assert report and report[0]["pv_count"] == "2" and report[0]["vg_missing_pv_count"] == "1"


def test_md_data_survives_disconnect_and_reconnect(disks, tmp_path):
    devices = [str(disk.device()) for disk in disks.create(2)]
    sh("mdadm", "--create", "/dev/md/smoke", "--run", "--level=0", "--chunk=64",
       "--raid-devices=2", *devices)
    sh("mkfs.ext4", "-q", "/dev/md/smoke")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    sh("mount", "/dev/md/smoke", str(mount_point))
    payload = write_marker(mount_point)

    node.reboot(disks)
    sh("udevadm", "settle")
    if not Path("/dev/md/smoke").exists():  # udev usually assembles it on its own
        sh("mdadm", "--assemble", "--scan")
    sh("mount", "/dev/md/smoke", str(mount_point))
    assert (mount_point / "marker").read_bytes() == payload


def test_stop_start_gives_new_blank_disks(disks):
    old = disks.create(2)
    old_serials = {disk.serial for disk in old}
    sh("pvcreate", "-q", *[str(disk.device()) for disk in old])
    fresh = disks.replace_all()
    assert len(fresh) == 2 and not old_serials & {disk.serial for disk in fresh}
    for disk in fresh:
        assert disk.by_id.exists()
        assert node.fs_type(disk.device()) == ""
