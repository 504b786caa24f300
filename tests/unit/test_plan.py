"""plan() across observed states: every backend, the idempotence cases of the volume issue, and the
rules that nothing carrying a signature is formatted unless it is being wiped. Pure: no root."""

from __future__ import annotations

import pytest

from slurm_scratch.config import parse_config
from slurm_scratch.volume.devices import Candidate, Discovery, Disk, Signature, Skipped
from slurm_scratch.volume.observe import BtrfsFs, Lv, MdArray, Mounted, Observed, Vg
from slurm_scratch.volume.plan import effective_backend, missing_members, plan
from slurm_scratch.volume.state import VolumeRecord

AWS = "Amazon EC2 NVMe Instance Storage"
LV = "/dev/vg.01/lv_ephemeral"
MKFS_EXT4 = "mkfs.ext4 -q -O sparse_super2,^resize_inode -G 4096 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 -m 0 -L scratch"


def volume(**keys: str):
    text = "[volume]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
    return parse_config(text, "test.conf").volume


def disk(index: int, serial: str | None = None) -> Disk:
    return Disk(path=f"/dev/nvme{index}n1", name=f"nvme{index}n1", devnum=f"259:{index}", model=AWS,
                serial=f"AWS{index:017X}" if serial is None else serial, size_bytes=3750 * 10**9)


def blank(*indexes: int) -> list[Candidate]:
    return [Candidate(disk(i), None, ours=False, wipe=False) for i in indexes]


PV_OURS = Signature(type="LVM2_member", usage="raid", uuid="pv", vg_name="vg.01")
PV_ORPHAN = Signature(type="LVM2_member", usage="raid", uuid="pv", vg_name="")
EXT4_OURS = Signature(type="ext4", usage="filesystem", label="scratch", uuid="u1")


def ours(indexes, signature: Signature) -> list[Candidate]:
    return [Candidate(disk(i), signature, ours=True, wipe=False) for i in indexes]


def discovery(candidates, skipped=()) -> Discovery:
    return Discovery("aws", tuple(candidates), tuple(skipped))


def recorded(indexes, backend="lvm", status="ready", **extra) -> VolumeRecord:
    members = [{"path": disk(i).path, "serial": disk(i).serial, "model": AWS} for i in indexes]
    return VolumeRecord.from_json({"status": status, "backend": backend, "members": members, "mount_point": "/scratch", **extra})


def observed(**fields) -> Observed:
    return Observed(mount=fields.pop("mount", None), recorded=fields.pop("recorded", None), **fields)


def ourvg(pv_count: int, missing: int, pvs: tuple[str, ...] = ()) -> Vg:
    """vg.01 as this tool makes it: tagged."""
    return Vg("vg.01", pv_count, missing, pvs, ("slurm-scratch",))


def lv(active: bool, partial: bool = False) -> Lv:
    attr = "-wi-" + ("a" if active else "-") + "---" + ("p" if partial else "-") + "-"
    return Lv("vg.01", "lv_ephemeral", LV, attr, 4)


def kinds(p) -> list[str]:
    return [step.kind for step in p.steps]


def commands(p) -> list[str]:
    return [step.text for step in p.steps if step.kind in ("run", "wipe", "mount")]


def never_formats(p) -> None:
    assert not any(line.startswith("mkfs") for line in commands(p)), commands(p)
    assert not any(step.kind == "wipe" for step in p.steps)


# ---- lvm ----------------------------------------------------------------------------------------


def test_lvm_blank_disks_are_built_like_the_seed_but_faster() -> None:
    p = plan(volume(), discovery(blank(1, 2, 3, 4)), observed())
    disks = " ".join(f"/dev/nvme{i}n1" for i in (1, 2, 3, 4))
    assert p.state == "build" and p.backend == "lvm" and p.device == LV and not p.failure
    assert commands(p) == [
        f"pvcreate -y {disks}",
        f"vgcreate -y --addtag slurm-scratch vg.01 {disks}",
        "lvcreate -y -W y --addtag slurm-scratch -i 4 -I 64 -l 100%FREE -n lv_ephemeral vg.01",
        f"{MKFS_EXT4} {LV}",
        f"mount -t ext4 -o noatime,nodiratime {LV} /scratch",
    ]
    order = kinds(p)
    assert order.index("record") < order.index("run")  # members recorded before the first change
    assert order.index("wait") < order.index("mount") < order.index("trash") < order.index("chmod")
    assert p.steps[-1].kind == "record" and p.steps[-1].args == ("ready",)
    assert [d.path for d in p.members] == disks.split()


def test_lvm_one_disk_has_no_stripe_options_and_stripe_size_is_configurable() -> None:
    one = plan(volume(), discovery(blank(1)), observed())
    assert "lvcreate -y -W y --addtag slurm-scratch -l 100%FREE -n lv_ephemeral vg.01" in commands(one)
    two = plan(volume(stripe_kb="256", vg_name="vg_s", lv_name="lv_s"), discovery(blank(1, 2)), observed())
    assert "lvcreate -y -W y --addtag slurm-scratch -i 2 -I 256 -l 100%FREE -n lv_s vg_s" in commands(two)


def test_lvm_xfs_uses_nodiscard_and_a_label() -> None:
    p = plan(volume(filesystem="xfs", label="fast"), discovery(blank(1, 2)), observed())
    assert f"mkfs.xfs -q -K -L fast {LV}" in commands(p)


def test_reboot_activates_and_mounts_never_formats() -> None:
    p = plan(volume(), discovery(ours((1, 2, 3, 4), PV_OURS)), observed(vg=ourvg(4, 0), lv=lv(active=False), recorded=recorded((1, 2, 3, 4))))
    assert p.state == "activate" and not p.failure
    assert commands(p)[0] == "vgchange -ay vg.01"
    assert "mkfs_if_blank" in kinds(p)  # only formats if the LV turns out blank once active
    assert not any(line.startswith(("pvcreate", "vgcreate", "lvcreate", "mkfs")) for line in commands(p))
    mount = next(step for step in p.steps if step.kind == "mount")
    assert mount.args == ("mount", "-o", "noatime,nodiratime", LV, "/scratch")  # type taken from the disk


def test_seed_built_volume_is_adopted_with_its_data() -> None:
    # ParallelCluster's script: vg.01/lv_ephemeral, `mkfs -t ext4` with no label; no state file.
    seed = observed(vg=Vg("vg.01", 2, 0), lv=lv(active=True), device_signatures=((LV, Signature(type="ext4", usage="filesystem", uuid="u")),),
                    device_devnums=((LV, "253:0"),))
    p = plan(volume(filesystem="xfs"), discovery(ours((1, 2), PV_OURS)), seed)
    assert p.state == "mount" and p.fstype == "ext4"
    never_formats(p)
    # adopted: tagged ours, mounted, marked
    assert commands(p) == ["vgchange --addtag slurm-scratch vg.01", f"mount -t ext4 -o noatime,nodiratime {LV} /scratch"]
    assert kinds(p).index("mount") < kinds(p).index("mark") < kinds(p).index("chmod")
    assert any("holds ext4" in note for note in p.notes)
    # Already mounted by the seed's script at /scratch: adopted, only recorded (and trash/mark/mode).
    mounted = Mounted("/dev/mapper/vg.01-lv_ephemeral", "ext4", "253:0", "253:0", 0o1777, False, False)
    p = plan(volume(), discovery(ours((1, 2), PV_OURS)), observed(mount=mounted, vg=Vg("vg.01", 2, 0), lv=lv(True), device_devnums=((LV, "253:0"),)))
    assert p.state == "mounted" and kinds(p) == ["trash", "mark", "run", "record"]
    assert commands(p) == ["vgchange --addtag slurm-scratch vg.01"]
    p = plan(volume(), discovery(ours((1, 2), PV_OURS)), observed(mount=mounted, vg=ourvg(2, 0), lv=lv(True), device_devnums=((LV, "253:0"),)))
    assert p.state == "mounted" and kinds(p) == ["trash", "mark", "record"]


def test_crash_after_pvcreate_creates_the_vg_without_recreating_pvs() -> None:
    cands = [Candidate(disk(1), PV_ORPHAN, True, False), Candidate(disk(2), PV_ORPHAN, True, False)] + blank(3, 4)
    p = plan(volume(), discovery(cands), observed(recorded=recorded((1, 2, 3, 4), status="building")))
    assert p.state == "complete" and not p.failure
    assert not any(step.kind == "wipe" for step in p.steps)  # our orphan PVs are used as they are
    assert commands(p)[0] == "pvcreate -y /dev/nvme3n1 /dev/nvme4n1"
    assert commands(p)[1] == "vgcreate -y --addtag slurm-scratch vg.01 /dev/nvme1n1 /dev/nvme2n1 /dev/nvme3n1 /dev/nvme4n1"


def test_crash_after_vgcreate_creates_the_lv() -> None:
    p = plan(volume(), discovery(ours((1, 2, 3), PV_OURS)), observed(vg=ourvg(3, 0), lv=None))
    assert p.state == "complete"
    assert commands(p)[0] == "lvcreate -y -W y --addtag slurm-scratch -i 3 -I 64 -l 100%FREE -n lv_ephemeral vg.01"
    assert commands(p)[1].startswith(MKFS_EXT4)


def test_crash_after_lvcreate_formats_the_blank_lv() -> None:
    p = plan(volume(), discovery(ours((1, 2), PV_OURS)), observed(vg=ourvg(2, 0), lv=lv(True), device_signatures=((LV, None),), device_devnums=((LV, "253:0"),)))
    assert p.state == "complete"
    assert commands(p) == [f"{MKFS_EXT4} {LV}", f"mount -t ext4 -o noatime,nodiratime {LV} /scratch"]


def test_lv_holding_something_else_than_a_filesystem_is_not_formatted() -> None:
    sig = Signature(type="crypto_LUKS", usage="crypto")
    p = plan(volume(), discovery(ours((1,), PV_OURS)), observed(vg=ourvg(1, 0), lv=lv(True), device_signatures=((LV, sig),)))
    assert p.failure and LV in p.failure and not p.steps


def test_missing_pv_fails_naming_the_disk_from_the_state_file() -> None:
    state = recorded((1, 2, 3, 4))
    obs = observed(vg=ourvg(4, 1, ("/dev/nvme1n1", "/dev/nvme2n1", "/dev/nvme3n1", "[unknown]")), lv=lv(False, partial=True), recorded=state)
    p = plan(volume(), discovery(ours((1, 2, 3), PV_OURS)), obs)
    assert p.state == "degraded" and not p.steps
    assert "missing disk /dev/nvme4n1, serial AWS00000000000000004" in p.failure
    assert "3 of 4 present" in p.failure and "on_degraded = rebuild" in p.failure


def test_missing_pv_without_state_file_still_fails() -> None:
    p = plan(volume(), discovery(ours((1, 2), PV_OURS)), observed(vg=ourvg(3, 1), lv=lv(False, partial=True)))
    assert p.state == "degraded" and "1 of 3 member(s)" in p.failure and "2 of 3 present" in p.failure


def test_on_degraded_rebuild_builds_from_the_disks_present() -> None:
    state = recorded((1, 2, 3, 4))
    obs = observed(vg=ourvg(4, 1), lv=lv(False, partial=True), recorded=state)
    p = plan(volume(on_degraded="rebuild"), discovery(ours((1, 2, 3), PV_OURS)), obs)
    assert p.state == "rebuild" and not p.failure
    lines = commands(p)
    assert lines[0] == "vgchange -an vg.01"
    assert [line.split()[2] for line in lines[1:4]] == ["/dev/nvme1n1", "/dev/nvme2n1", "/dev/nvme3n1"]
    assert all(line.startswith("wipefs -a") for line in lines[1:4])
    assert "lvcreate -y -W y --addtag slurm-scratch -i 3 -I 64 -l 100%FREE -n lv_ephemeral vg.01" in lines
    assert any("rebuilding" in note for note in p.notes)


def test_stop_start_new_blank_disks_build_from_scratch() -> None:
    old = recorded((1, 2))  # the disks recorded before the stop are gone; new ones are blank
    p = plan(volume(), discovery(blank(5, 6)), observed(recorded=old))
    assert p.state == "build" and not p.failure


def test_disk_of_a_previous_volume_of_another_backend_is_refused_unless_wipe() -> None:
    ours_btrfs = Signature(type="btrfs", usage="filesystem", label="scratch", uuid="u")
    cands = ours((1,), ours_btrfs) + blank(2)
    p = plan(volume(), discovery(cands), observed())
    assert p.failure and "/dev/nvme1n1" in p.failure and not p.steps
    p = plan(volume(wipe="yes"), discovery(cands), observed())
    assert not p.failure and commands(p)[0].startswith("wipefs -a /dev/nvme1n1")


def test_foreign_disks_are_wiped_first_when_allowed() -> None:
    foreign = Signature(type="ext4", usage="filesystem", label="data")
    cands = [Candidate(disk(1), foreign, ours=False, wipe=True)] + blank(2)
    p = plan(volume(wipe="yes"), discovery(cands), observed())
    assert commands(p)[0].startswith("wipefs -a /dev/nvme1n1")
    assert commands(p)[1] == "pvcreate -y /dev/nvme1n1 /dev/nvme2n1"


def test_no_usable_disk_names_every_skipped_disk() -> None:
    skipped = [Skipped(disk(1), "is mounted at /data"), Skipped(disk(2), "has partitions (nvme2n1p1)")]
    p = plan(volume(), discovery([], skipped), observed())
    assert p.state == "failed" and "/dev/nvme1n1: is mounted at /data" in p.failure and "nvme2n1p1" in p.failure
    assert "no disk matches" in plan(volume(), discovery([]), observed()).failure


# ---- mounted ------------------------------------------------------------------------------------


def test_mounted_and_recorded_is_a_no_op() -> None:
    mount = Mounted(LV, "ext4", "253:0", "253:0", 0o1777, True)
    state = recorded((1, 2), mount_source=LV)
    p = plan(volume(), discovery(ours((1, 2), PV_OURS)), observed(mount=mount, recorded=state, vg=ourvg(2, 0), lv=lv(True), device_devnums=((LV, "253:0"),)))
    assert p.state == "mounted" and p.steps == ()


def test_mounted_with_wrong_mode_fixes_the_mode_only() -> None:
    mount = Mounted(LV, "ext4", "253:0", "253:0", 0o755, True)
    p = plan(volume(mount_mode="1777"), discovery(ours((1,), PV_OURS)), observed(mount=mount, recorded=recorded((1,), mount_source=LV), device_devnums=((LV, "253:0"),)))
    assert kinds(p) == ["chmod", "record"] and p.steps[0].args == ("/scratch", 0o1777)


def test_something_else_mounted_at_the_mount_point_is_a_failure() -> None:
    mount = Mounted("tmpfs", "tmpfs", "0:55", None, 0o1777, False)
    p = plan(volume(), discovery(blank(1, 2)), observed(mount=mount))
    assert p.state == "failed" and "tmpfs" in p.failure and "/scratch" in p.failure and not p.steps


# ---- mdadm --------------------------------------------------------------------------------------

MD = "/dev/md/scratch"


def md_member(devices: int, uuid: str = "a:b:c:d") -> Signature:
    return Signature(type="linux_raid_member", usage="raid", label="node1:scratch", uuid=uuid, md_devices=devices)


def test_mdadm_blank_disks_create_a_raid0() -> None:
    p = plan(volume(backend="mdadm", stripe_kb="512"), discovery(blank(1, 2)), observed())
    assert commands(p)[0] == (f"mdadm --create {MD} --run --metadata=1.2 --level=0 --chunk=512 --raid-devices=2 "
                               "--name=scratch /dev/nvme1n1 /dev/nvme2n1")
    assert commands(p)[1].startswith(f"wipefs -a {MD}")  # the new array may show the old one's filesystem
    assert commands(p)[2] == f"{MKFS_EXT4} {MD}" and p.device == MD


def test_mdadm_one_disk_needs_force() -> None:
    p = plan(volume(backend="mdadm"), discovery(blank(1)), observed())
    assert "--raid-devices=1 --name=scratch --force /dev/nvme1n1" in commands(p)[0]


def test_mdadm_reboot_assembles_by_uuid_never_creates() -> None:
    p = plan(volume(backend="mdadm"), discovery(ours((1, 2), md_member(2))), observed())
    assert p.state == "activate"
    assert commands(p)[0] == f"mdadm --assemble {MD} --uuid=a:b:c:d --run /dev/nvme1n1 /dev/nvme2n1"
    assert not any("--create" in line or line.startswith("mkfs") for line in commands(p))
    assert "mkfs_if_blank" in kinds(p)


def test_mdadm_running_array_with_a_filesystem_is_mounted() -> None:
    array = MdArray("/dev/md127", "scratch", "a:b:c:d", "raid0", 2, "clean", ("/dev/nvme1n1", "/dev/nvme2n1"))
    obs = observed(md_arrays=(array,), device_signatures=(("/dev/md127", Signature(type="xfs", usage="filesystem", label="scratch")),))
    p = plan(volume(backend="mdadm", filesystem="xfs"), discovery(ours((1, 2), md_member(2))), obs)
    assert p.state == "mount" and commands(p) == ["mount -t xfs -o noatime,nodiratime /dev/md127 /scratch"]


def test_mdadm_missing_member_fails_and_rebuild_stops_the_array_first() -> None:
    array = MdArray("/dev/md127", "scratch", "a:b:c:d", "", 2, "inactive", ("/dev/nvme1n1",))
    obs = observed(md_arrays=(array,), recorded=recorded((1, 2), backend="mdadm"))
    p = plan(volume(backend="mdadm"), discovery(ours((1,), md_member(2))), obs)
    assert p.state == "degraded" and "missing disk /dev/nvme2n1" in p.failure and not p.steps
    p = plan(volume(backend="mdadm", on_degraded="rebuild"), discovery(ours((1,), md_member(2))), obs)
    assert commands(p)[:2] == ["mdadm --stop /dev/md127", "wipefs -a /dev/nvme1n1   # an md RAID member of array 'node1:scratch'"]
    assert "--raid-devices=1" in commands(p)[2] and "--force" in commands(p)[2]


def test_mdadm_array_is_recognised_by_uuid_in_either_notation() -> None:
    # blkid shows the member's array UUID as 8-4-4-4-12, mdadm --detail as 8:8:8:8.
    member = md_member(2, "3f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8")
    array = MdArray("/dev/md127", "", "3f1a2b3c:4d5e6f70:8192a3b4:c5d6e7f8", "raid0", 2, "inactive", ("/dev/nvme1n1",))
    p = plan(volume(backend="mdadm"), discovery(ours((1, 2), member)), observed(md_arrays=(array,)))
    assert commands(p)[:2] == ["mdadm --stop /dev/md127", f"mdadm --assemble {MD} --uuid=3f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8 --run /dev/nvme1n1 /dev/nvme2n1"]


def test_mdadm_members_of_two_arrays_is_a_failure() -> None:
    cands = ours((1,), md_member(2, "u1")) + ours((2,), md_member(2, "u2"))
    assert "2 different md arrays" in plan(volume(backend="mdadm"), discovery(cands), observed()).failure


# ---- single and btrfs ---------------------------------------------------------------------------


def test_single_formats_the_one_disk_and_refuses_two() -> None:
    p = plan(volume(backend="single"), discovery(blank(1)), observed())
    assert commands(p) == [f"{MKFS_EXT4} /dev/nvme1n1", "mount -t ext4 -o noatime,nodiratime /dev/nvme1n1 /scratch"]
    p = plan(volume(backend="single"), discovery(blank(1, 2)), observed())
    assert "exactly one disk" in p.failure and not p.steps


def test_single_mounts_our_filesystem_after_reboot() -> None:
    sig = Signature(type="ext4", usage="filesystem", label="scratch", uuid="u1")
    p = plan(volume(backend="single"), discovery(ours((1,), sig)), observed(recorded=recorded((1,), backend="single", fs_uuid="u1")))
    assert p.state == "mount"
    never_formats(p)


def test_btrfs_layouts() -> None:
    three = plan(volume(backend="btrfs", filesystem="btrfs"), discovery(blank(1, 2, 3)), observed())
    assert commands(three)[0] == "mkfs.btrfs -q -K -L scratch -d raid0 -m raid1 /dev/nvme1n1 /dev/nvme2n1 /dev/nvme3n1"
    one = plan(volume(backend="btrfs", filesystem="btrfs"), discovery(blank(1)), observed())
    assert commands(one)[0] == "mkfs.btrfs -q -K -L scratch -d single /dev/nvme1n1"


def test_btrfs_with_a_device_missing_is_degraded() -> None:
    sig = Signature(type="btrfs", usage="filesystem", label="scratch", uuid="fs1")
    obs = observed(btrfs=(BtrfsFs("fs1", "scratch", 3, ("/dev/nvme1n1", "/dev/nvme2n1")),))
    p = plan(volume(backend="btrfs", filesystem="btrfs"), discovery(ours((1, 2), sig)), obs)
    assert p.state == "degraded" and "2 of 3 present" in p.failure
    ok = observed(btrfs=(BtrfsFs("fs1", "scratch", 2, ("/dev/nvme1n1", "/dev/nvme2n1")),))
    p = plan(volume(backend="btrfs", filesystem="btrfs"), discovery(ours((1, 2), sig)), ok)
    assert p.state == "mount" and commands(p)[0] == "btrfs device scan /dev/nvme1n1 /dev/nvme2n1"
    never_formats(p)


# ---- backend choice and missing members ---------------------------------------------------------


@pytest.mark.parametrize(
    "candidates, state, expected",
    [
        (blank(1), None, "single"),
        (blank(1, 2, 3), None, "lvm"),
        (blank(1), VolumeRecord(backend="mdadm"), "single"),  # stop/start: the record is of gone disks
        (ours((1,), md_member(1)), VolumeRecord(backend="mdadm"), "mdadm"),
        (ours((1,), EXT4_OURS), VolumeRecord(backend="btrfs"), "btrfs"),
        (ours((1,), md_member(1)), None, "mdadm"),
        (ours((1,), PV_OURS), None, "lvm"),
    ],
)
def test_auto_backend(candidates, state, expected) -> None:
    assert effective_backend(volume(backend="auto"), discovery(candidates), state) == expected


def test_missing_members_match_by_serial_even_when_names_change() -> None:
    state = recorded((1, 2))
    renamed = [Candidate(Disk("/dev/nvme9n1", "nvme9n1", "259:9", AWS, disk(1).serial, 1), PV_OURS, True, False),
               Candidate(Disk("/dev/nvme8n1", "nvme8n1", "259:8", AWS, disk(2).serial, 1), PV_OURS, True, False)]
    assert missing_members(state, discovery(renamed)) == []
    assert [m.path for m in missing_members(state, discovery(renamed[:1]))] == ["/dev/nvme2n1"]
    # A disk still present but skipped (say, now mounted elsewhere) is not "missing".
    skipped = [Skipped(renamed[1].disk, "is mounted at /mnt")]
    assert missing_members(state, discovery(renamed[:1], skipped)) == []


# ---- a setup stopped during mkfs ----------------------------------------------------------------

def test_filesystem_left_by_an_interrupted_mkfs_is_made_again() -> None:
    # "building" in the state file with the UUID given to mkfs: mkfs had not finished, nothing was
    # ever mounted on it.
    obs = observed(vg=ourvg(2, 0), lv=lv(True), device_signatures=((LV, EXT4_OURS),), new_uuid="new-uuid",
                   recorded=recorded((1, 2), status="building", fs_uuid="u1"))
    p = plan(volume(), discovery(ours((1, 2), PV_OURS)), obs)
    assert p.state == "complete" and any("interrupted" in note for note in p.notes)
    assert commands(p)[0] == f"mkfs.ext4 -q -F -O sparse_super2,^resize_inode -G 4096 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 -m 0 -L scratch -U new-uuid {LV}"
    assert [step.args for step in p.steps if step.kind == "record"] == [("building",), ("formatted",), ("ready",)]
    assert p.fs_uuid == "new-uuid"


@pytest.mark.parametrize("fs_uuid", [None, "", "another-uuid"])
def test_a_building_record_is_no_licence_to_format_another_filesystem(fs_uuid) -> None:
    # "building" says nothing about a filesystem whose UUID it did not record (today's release
    # recorded none; a stale record of another build names another one): it is mounted, not made again.
    extra = {} if fs_uuid is None else {"fs_uuid": fs_uuid}
    obs = observed(vg=ourvg(2, 0), lv=lv(True), device_signatures=((LV, EXT4_OURS),), recorded=recorded((1, 2), status="building", **extra))
    p = plan(volume(), discovery(ours((1, 2), PV_OURS)), obs)
    assert p.state == "mount"
    never_formats(p)
    single = plan(volume(backend="single"), discovery(ours((1,), EXT4_OURS)),
                  observed(recorded=recorded((1,), backend="single", status="building", **extra)))
    assert single.state == "mount"
    never_formats(single)


@pytest.mark.parametrize("status", ["formatted", "ready"])
def test_filesystem_made_by_a_finished_mkfs_is_kept(status) -> None:
    obs = observed(vg=ourvg(2, 0), lv=lv(True), device_signatures=((LV, EXT4_OURS),), recorded=recorded((1, 2), status=status))
    p = plan(volume(), discovery(ours((1, 2), PV_OURS)), obs)
    assert p.state == "mount"
    never_formats(p)


def test_interrupted_mkfs_on_single_and_btrfs_disks() -> None:
    single = plan(volume(backend="single"), discovery(ours((1,), EXT4_OURS)), observed(recorded=recorded((1,), backend="single", status="building", fs_uuid="u1")))
    assert commands(single)[0].startswith("mkfs.ext4 -q -F ") and commands(single)[0].endswith("/dev/nvme1n1")
    kept = plan(volume(backend="single"), discovery(ours((1,), EXT4_OURS)), observed(recorded=recorded((1,), backend="lvm", status="building", fs_uuid="u1")))
    assert kept.state == "mount"  # a build of another backend says nothing about this filesystem
    btrfs_sig = Signature(type="btrfs", usage="filesystem", label="scratch", uuid="fs1")
    p = plan(volume(backend="btrfs", filesystem="btrfs"), discovery(ours((1, 2), btrfs_sig)),
             observed(recorded=recorded((1, 2), backend="btrfs", status="building", fs_uuid="fs1"), new_uuid="fs2"))
    assert commands(p)[0] == "mkfs.btrfs -q -f -K -L scratch -U fs2 -d raid0 -m raid1 /dev/nvme1n1 /dev/nvme2n1"
