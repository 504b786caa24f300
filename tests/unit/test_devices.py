"""Disk selection per cloud and the safety rules, on fake device records; output parsers. No root."""

from __future__ import annotations

import pytest

from slurm_scratch.config import parse_config
from slurm_scratch.volume.devices import (Candidate, Disk, Facts, Signature, Skipped, assess, disk_from_udev, matches_cloud,
                                   not_selected, recorded_member, select_cloud, signature_from_blkid)
from slurm_scratch.volume import lvm
from slurm_scratch.volume.observe import Lv, lv_from, parse_btrfs_show, vg_from
from slurm_scratch.volume.state import VolumeRecord

AWS = "Amazon EC2 NVMe Instance Storage"


def volume(**keys: str):
    return parse_config("[volume]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()), "t.conf").volume


def disk(name="nvme1n1", model=AWS, serial="AWS1234", **extra) -> Disk:
    fields = dict(path=f"/dev/{name}", name=name, devnum="259:1", model=model, serial=serial, size_bytes=10**12)
    fields.update(extra)
    return Disk(**fields)


@pytest.mark.parametrize(
    "cloud, model, links, expected",
    [
        ("aws", AWS, (), True),
        ("aws", "Amazon Elastic Block Store", (), False),
        ("aws", "Amazon EC2 NVMe Instance Storage v2", (), False),
        ("gcp", "nvme_card", (), True),
        ("gcp", "nvme_card-pd", (), False),
        ("gcp", "nvme_card-pd", ("/dev/disk/by-id/google-local-nvme-ssd-0",), False),
        ("gcp", "", ("/dev/disk/by-id/google-local-nvme-ssd-3",), True),
        ("gcp", "", ("/dev/disk/by-id/google-local-ssd-0",), True),
        ("gcp", "", ("/dev/disk/by-id/google-persistent-disk-1",), False),
        ("azure", "Microsoft NVMe Direct Disk", (), True),
        ("azure", "Microsoft NVMe Direct Disk v2", (), True),
        ("azure", "MSFT NVMe Accelerator v1.0", (), False),
        ("azure", AWS, (), False),
    ],
)
def test_cloud_identities(cloud, model, links, expected) -> None:
    assert matches_cloud(cloud, disk(model=model, by_id=links)) is expected


def test_auto_takes_the_first_cloud_that_matches_and_never_ebs() -> None:
    disks = [disk("nvme0n1", "Amazon Elastic Block Store"), disk("nvme1n1"), disk("nvme2n1"), disk("nvme3n1", "Microsoft NVMe Direct Disk")]
    selector, chosen = select_cloud("auto", disks)
    assert selector == "auto->aws" and [d.name for d in chosen] == ["nvme1n1", "nvme2n1"]
    selector, chosen = select_cloud("auto", [disks[0], disks[3]])
    assert selector == "auto->azure" and [d.name for d in chosen] == ["nvme3n1"]
    assert select_cloud("aws", [disks[0]]) == ("aws", [])
    left = not_selected("auto->aws", disks + [disk("loop3", ""), disk("vda", "")], disks[1:3])
    assert [(s.disk.name, s.reason) for s in left] == [
        ("nvme0n1", "is an EBS volume (never used)"),
        ("nvme3n1", "is not AWS instance store (model 'Microsoft NVMe Direct Disk')"),
        ("vda", "is not AWS instance store (no model)"),
    ]


FACTS = Facts(root_devnums=frozenset({"259:0", "259:5"}), swap_devnums=frozenset({"259:7"}),
              mounts={"259:0": "/", "259:5": "/", "259:3": "/data", "259:9": "/scratch"}, mounted_btrfs_uuids=frozenset({"busy-fs"}))
EXT4_THEIRS = Signature(type="ext4", usage="filesystem", label="data", uuid="u")


@pytest.mark.parametrize(
    "candidate, signature, reason",
    [
        (disk("nvme0n1", devnum="259:0"), None, "holds the root filesystem"),
        (disk("nvme0n1", devnum="259:4", partitions=("nvme0n1p1",), partition_devnums=("259:5",)), None, "holds the root filesystem"),
        (disk(devnum="259:7"), None, "holds active swap"),
        (disk(devnum="259:3"), EXT4_THEIRS, "is mounted at /data"),
        (disk(read_only=True), None, "is read-only"),
        (disk(size_bytes=0), None, "has no media"),
        (disk(holders=("dm-3",)), Signature(type="LVM2_member", usage="raid", vg_name="vg_other"), "is in use by dm-3"),
        (disk(), Signature(type="btrfs", usage="filesystem", label="x", uuid="busy-fs"), "mounted btrfs filesystem busy-fs"),
    ],
)
def test_never_used_even_with_wipe(candidate, signature, reason) -> None:
    for wipe in ("no", "yes"):
        verdict = assess(volume(wipe=wipe), candidate, signature, FACTS, None)
        assert isinstance(verdict, Skipped) and reason in verdict.reason


@pytest.mark.parametrize(
    "candidate, signature, reason",
    [
        (disk(), EXT4_THEIRS, "carries an ext4 filesystem labelled 'data'"),
        (disk(), Signature(type="LVM2_member", usage="raid", vg_name="vg_other"), "LVM physical volume of VG 'vg_other'"),
        (disk(), Signature(type="LVM2_member", usage="raid", vg_name=""), "LVM physical volume (no VG)"),
        (disk(), Signature(type="linux_raid_member", usage="raid", label="host:other"), "md RAID member of array 'host:other'"),
        (disk(), Signature(pttype="gpt"), "a gpt partition table"),
        (disk(partitions=("nvme1n1p1",), partition_devnums=("259:11",)), None, "has partitions (nvme1n1p1)"),
        (disk(), Signature(ambivalent=True), "more than one signature"),
    ],
)
def test_foreign_content_is_skipped_unless_wipe(candidate, signature, reason) -> None:
    verdict = assess(volume(), candidate, signature, FACTS, None)
    assert isinstance(verdict, Skipped) and reason in verdict.reason and "wipe = yes" in verdict.reason
    wiped = assess(volume(wipe="yes"), candidate, signature, FACTS, None)
    assert wiped == Candidate(candidate, signature, ours=False, wipe=True)


PV_TAGGED = Signature(type="LVM2_member", usage="raid", vg_name="vg.01", vg_tags=("slurm-scratch",), vg_lvs=("lv_ephemeral",))


@pytest.mark.parametrize(
    "signature",
    [
        PV_TAGGED,
        Signature(type="LVM2_member", usage="raid", vg_name="vg.01", vg_tags=("slurm-scratch",)),  # a crash after vgcreate
        Signature(type="LVM2_member", usage="raid", vg_name="vg.01", vg_lvs=("lv_ephemeral",)),  # the seed's layout
        Signature(type="linux_raid_member", usage="raid", label="node7:scratch"),
        Signature(type="ext4", usage="filesystem", label="scratch", uuid="f", marker=True),
        Signature(type="btrfs", usage="filesystem", label="scratch", uuid="f", marker=True),
    ],
)
def test_our_own_marks_are_used(signature) -> None:
    verdict = assess(volume(), disk(), signature, FACTS, None)
    assert verdict == Candidate(disk(), signature, ours=True, wipe=False)


@pytest.mark.parametrize(
    "signature, carries",
    [
        (Signature(type="ext4", usage="filesystem", label="scratch", uuid="f"), "an ext4 filesystem labelled 'scratch'"),
        (Signature(type="xfs", usage="filesystem", label="scratch", uuid="f"), "an xfs filesystem labelled 'scratch'"),
        (Signature(type="btrfs", usage="filesystem", label="scratch", uuid="f"), "a btrfs filesystem labelled 'scratch'"),
        (Signature(type="LVM2_member", usage="raid", vg_name="vg.01", vg_lvs=("data",)), "an LVM physical volume of VG 'vg.01' (LV data)"),
        (Signature(type="LVM2_member", usage="raid", vg_name="vg.01", vg_lvs=("data", "lv_ephemeral")), "an LVM physical volume of VG 'vg.01' (LV data, lv_ephemeral)"),
        (Signature(type="LVM2_member", usage="raid", vg_name="vg.01"), "an LVM physical volume of VG 'vg.01'"),
        (Signature(type="LVM2_member", usage="raid", vg_name="vg.01", vg_tags=("slurm-scratch",), ambivalent=True), "more than one signature"),
    ],
)
def test_our_names_and_label_alone_are_no_proof(signature, carries) -> None:
    verdict = assess(volume(), disk(), signature, FACTS, None)
    assert isinstance(verdict, Skipped), verdict
    assert f"carries {carries}" in verdict.reason and "not ours" in verdict.reason and "wipe = yes" in verdict.reason
    # a state file that records another disk (a stale "building" included) changes nothing
    other = VolumeRecord.from_json({"status": "building", "backend": "single", "members": [{"path": "/dev/nvme9n1", "serial": "AWS9999"}]})
    assert isinstance(assess(volume(), disk(), signature, FACTS, other), Skipped)


def test_ours_mounted_at_our_mount_point_is_fine_elsewhere_not() -> None:
    sig = Signature(type="ext4", usage="filesystem", label="scratch", uuid="f", marker=True)
    assert isinstance(assess(volume(), disk(devnum="259:9"), sig, FACTS, None), Candidate)
    assert isinstance(assess(volume(mount_point="/other"), disk(devnum="259:9"), sig, FACTS, None), Skipped)
    # ours, held by our own LV (dm) is fine
    assert isinstance(assess(volume(), disk(holders=("dm-0",)), PV_TAGGED, FACTS, None), Candidate)
    # a label alone mounted at the mount point is not ours
    label_only = Signature(type="ext4", usage="filesystem", label="scratch", uuid="f")
    assert isinstance(assess(volume(), disk(devnum="259:9"), label_only, FACTS, None), Skipped)


def test_mounted_in_another_mount_namespace_held_or_busy_is_never_used() -> None:
    facts = Facts(elsewhere={"259:1": (4242, "/mnt/theirs"), "259:12": (77, "/data")}, busy=frozenset({"259:2", "259:1"}))
    for wipe in ("no", "yes"):
        verdict = assess(volume(wipe=wipe), disk(), None, facts, None)
        assert isinstance(verdict, Skipped) and verdict.reason == "is mounted in another mount namespace (pid 4242, at /mnt/theirs)"
        part = disk(devnum="259:11", partitions=("nvme1n1p1",), partition_devnums=("259:12",))
        verdict = assess(volume(wipe=wipe), part, None, facts, None)
        assert isinstance(verdict, Skipped) and "another mount namespace (pid 77, at /data)" in verdict.reason
        verdict = assess(volume(wipe=wipe), disk(devnum="259:2"), None, facts, None)
        assert isinstance(verdict, Skipped) and "cannot be opened exclusively (EBUSY)" in verdict.reason
        held = disk(devnum="259:3", holders=("dm-7 (on nvme1n1p1)",))
        verdict = assess(volume(wipe=wipe), held, None, Facts(), None)
        assert isinstance(verdict, Skipped) and verdict.reason == "is in use by dm-7 (on nvme1n1p1)"
    # our own volume, mounted in another namespace (a copy of ours: any user can make one and bind
    # it anywhere), or busy because it is active
    for where in ("/scratch", "/tmp/users-bind"):
        ours_elsewhere = Facts(elsewhere={"259:1": (9, where)}, busy=frozenset({"259:1"}))
        assert isinstance(assess(volume(), disk(), PV_TAGGED, ours_elsewhere, None), Candidate)
    assert isinstance(assess(volume(), disk(holders=("dm-0",)), PV_TAGGED, Facts(busy=frozenset({"259:1"})), None), Candidate)
    # ours and busy for no reason seen (udev assembling it): still ours, or the volume would look
    # degraded; the tools' own exclusive opens guard it
    assert isinstance(assess(volume(), disk(), PV_TAGGED, Facts(busy=frozenset({"259:1"})), None), Candidate)


def test_marker_must_be_roots_private_file_with_the_uuid() -> None:
    from slurm_scratch.volume.devices import marker_matches

    assert marker_matches("0 600 37", "11111111-2222-4333-8444-555555555555\n", "11111111-2222-4333-8444-555555555555")
    assert not marker_matches("1000 600 37", "u\n", "u")  # a user's file
    assert not marker_matches("0 644 2", "u\n", "u")  # readable by others
    assert not marker_matches("0 600 2", "v\n", "u")  # another filesystem's
    assert not marker_matches("0 600 2", "\n", "")
    assert not marker_matches("", "u", "u")


def test_blank_disk_is_a_plain_candidate() -> None:
    assert assess(volume(), disk(), None, FACTS, None) == Candidate(disk(), None, ours=False, wipe=False)


def test_state_file_membership() -> None:
    state = VolumeRecord.from_json({"fs_uuid": "fs-1", "members": [{"path": "/dev/nvme1n1", "serial": "AWS1234"}, {"path": "/dev/loop5", "serial": ""}]})
    orphan = Signature(type="LVM2_member", usage="raid", vg_name="")
    assert recorded_member(disk("nvme7n1"), orphan, state).serial == "AWS1234"  # by serial, whatever the name
    assert recorded_member(disk(serial="OTHER"), orphan, state) is None
    loop = disk("loop5", model="", serial="")
    assert recorded_member(loop, orphan, state) is not None
    assert recorded_member(loop, Signature(type="ext4", usage="filesystem", uuid="fs-1"), state) is not None
    # a serial-less disk at a recorded path but with someone else's filesystem is not ours
    assert recorded_member(loop, Signature(type="ext4", usage="filesystem", uuid="other"), state) is None
    # nor is a recorded disk (same serial) that now carries another filesystem, or another VG/array
    foreign = Signature(type="ext4", usage="filesystem", label="scratch", uuid="theirs")
    assert recorded_member(disk(), foreign, state) is None
    assert isinstance(assess(volume(on_degraded="rebuild"), disk(), foreign, FACTS, state), Skipped)
    state = state.replace(vg_name="vg.01", md_name="scratch")
    assert recorded_member(disk(), Signature(type="LVM2_member", usage="raid", vg_name="vg.01"), state) is not None
    assert recorded_member(disk(), Signature(type="LVM2_member", usage="raid", vg_name="vg_other"), state) is None
    assert recorded_member(disk(), Signature(type="linux_raid_member", usage="raid", label="h:scratch"), state) is not None
    assert recorded_member(disk(), Signature(type="linux_raid_member", usage="raid", label="h:other"), state) is None
    assert recorded_member(disk(), Signature(type="ext4", usage="filesystem", uuid="fs-1"), state) is not None
    verdict = assess(volume(), disk("nvme7n1"), orphan, FACTS, state)
    assert isinstance(verdict, Candidate) and verdict.ours


def test_blkid_export_parsing() -> None:
    assert signature_from_blkid(2, "") is None
    assert signature_from_blkid(8, "").ambivalent
    sig = signature_from_blkid(0, "DEVNAME=/dev/nvme1n1\nUUID=abc\nUUID_SUB=def\nLABEL=host:scratch\nTYPE=linux_raid_member\nUSAGE=raid\n")
    assert (sig.type, sig.uuid, sig.uuid_sub, sig.md_name, sig.usage) == ("linux_raid_member", "abc", "def", "scratch", "raid")
    assert signature_from_blkid(0, "PTUUID=x\nPTTYPE=gpt\n").describe() == "a gpt partition table"


class FakeAttributes(dict):
    def get(self, key, default=None):
        value = dict.get(self, key, default)
        return value.encode() if isinstance(value, str) else value


class FakeDevice:
    def __init__(self, sys_name, attributes=None, parent=None, properties=None, children=(), device_type="disk", links=()):
        self.sys_name, self.parent, self.device_type = sys_name, parent, device_type
        self.attributes = FakeAttributes(attributes or {})
        self.properties = properties or {}
        self.children = list(children)
        self.device_node = f"/dev/{sys_name}"
        self.device_number = (259 << 8) | 1 if device_type == "disk" else (259 << 8) | 2
        self.sys_path = f"/nonexistent/{sys_name}"
        self.subsystem = "block"
        self.device_links = list(links)


def test_disk_from_sysfs_reads_the_nvme_controller_when_udev_data_is_missing() -> None:
    controller = FakeDevice("nvme1", {"model": AWS + "                ", "serial": "AWS22ABCDEF0123456789  "}, device_type="")
    namespace = FakeDevice("nvme1n1", {"size": "7812500000", "ro": "0"}, parent=controller)
    found = disk_from_udev(namespace)
    assert (found.model, found.serial, found.size_bytes, found.path) == (AWS, "AWS22ABCDEF0123456789", 7812500000 * 512, "/dev/nvme1n1")
    assert found.by_id == () and found.partitions == ()


def test_disk_from_udev_properties_and_links(tmp_path) -> None:
    controller = FakeDevice("nvme2", {}, device_type="")
    partition = FakeDevice("nvme2n1p1", device_type="partition")
    partition.sys_path = str(tmp_path / "nvme2n1p1")
    (tmp_path / "nvme2n1p1" / "holders" / "dm-4").mkdir(parents=True)  # an LV on the partition
    namespace = FakeDevice(
        "nvme2n1", {"size": "100", "ro": "1"}, parent=controller,
        properties={"ID_MODEL_ENC": "Microsoft\\x20NVMe\\x20Direct\\x20Disk\\x20v2", "ID_SERIAL_SHORT": "abc123"},
        children=[partition], links=["/dev/disk/by-id/nvme-Microsoft_NVMe_Direct_Disk_v2_abc123", "/dev/disk/by-path/x"],
    )
    found = disk_from_udev(namespace)
    assert found.model == "Microsoft NVMe Direct Disk v2" and found.serial == "abc123" and found.read_only
    assert found.by_id == ("/dev/disk/by-id/nvme-Microsoft_NVMe_Direct_Disk_v2_abc123",)
    assert found.partitions == ("nvme2n1p1",)
    assert found.holders == ("dm-4 (on nvme2n1p1)",)
    verdict = assess(volume(wipe="yes"), found.__class__(**{**found.__dict__, "read_only": False}), None, Facts(), None)
    assert isinstance(verdict, Skipped) and "in use by dm-4 (on nvme2n1p1)" in verdict.reason


VGS = lvm.parse_report("""\
  LVM2_VG_NAME=vg.01 LVM2_PV_COUNT=4 LVM2_VG_MISSING_PV_COUNT=1 LVM2_VG_TAGS=slurm-scratch
  LVM2_VG_NAME=other LVM2_PV_COUNT=1 LVM2_VG_MISSING_PV_COUNT=0 LVM2_VG_TAGS=
""")
PVS = lvm.parse_report("""\
  LVM2_PV_NAME=/dev/nvme1n1 LVM2_VG_NAME=vg.01
  LVM2_PV_NAME=[unknown] LVM2_VG_NAME=vg.01
  LVM2_PV_NAME=/dev/sdb LVM2_VG_NAME=other
""")
LVS = lvm.parse_report("  LVM2_VG_NAME=vg.01 LVM2_LV_NAME=lv_ephemeral LVM2_LV_ATTR=-wi-----p- LVM2_STRIPES=4\n")


def test_lvm_report_parsing() -> None:
    vg = vg_from(VGS, "vg.01", PVS)
    assert (vg.pv_count, vg.missing_pv_count, vg.pvs, vg.tags) == (4, 1, ("/dev/nvme1n1", "[unknown]"), ("slurm-scratch",))
    assert vg_from(VGS, "vg.02") is None
    lv = lv_from(LVS, "vg.01", "lv_ephemeral")
    assert lv.path == "/dev/vg.01/lv_ephemeral" and lv.stripes == 4 and not lv.active and lv.partial
    assert Lv("v", "l", "/dev/v/l", "-wi-a-----").active
    assert lv_from(LVS, "vg.01", "other") is None


def test_btrfs_show_parsing() -> None:
    text = """Label: 'scratch'  uuid: 11111111-2222-3333-4444-555555555555
\tTotal devices 3 FS bytes used 144.00KiB
\tdevid    1 size 335544320 used 8388608 path /dev/loop3
\tdevid    3 size 335544320 used 8388608 path /dev/loop5
\t*** Some devices missing

Label: none  uuid: 66666666-2222-3333-4444-555555555555
\tTotal devices 1 FS bytes used 1.00KiB
\tdevid    1 size 1 used 1 path /dev/vdb
"""
    first, second = parse_btrfs_show(text)
    assert (first.label, first.total_devices, first.present) == ("scratch", 3, ("/dev/loop3", "/dev/loop5"))
    assert first.uuid.startswith("1111") and second.total_devices == 1 and second.label == ""
