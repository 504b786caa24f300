"""The built volume's record: volume.json's JSON, the typed VolumeRecord, and health's key=value cache agree."""

from __future__ import annotations

from slurm_scratch.health import recorded
from slurm_scratch.volume.state import Member, VolumeRecord

READY = {
    "version": 1, "status": "ready", "backend": "lvm", "filesystem": "ext4", "device": "/dev/vg.01/lv_ephemeral",
    "mount_point": "/scratch", "vg_name": "vg.01", "lv_name": "lv_ephemeral", "md_name": "scratch", "label": "scratch",
    "stripe_kb": 256, "fs_uuid": "fs-1", "mount_source": "/dev/mapper/vg.01-lv_ephemeral",
    "created": "2026-01-01T00:00:00Z", "updated": "2026-01-02T00:00:00Z",
    "members": [{"path": "/dev/nvme1n1", "serial": "AWS1", "model": "Amazon EC2 NVMe Instance Storage", "size_bytes": 10**12,
                 "by_id": ["/dev/disk/by-id/nvme-a", "/dev/disk/by-id/nvme-b"]},
                {"path": "/dev/loop5", "serial": "", "model": "", "size_bytes": 0, "by_id": []}],
}


def test_the_json_round_trips_through_the_record() -> None:
    record = VolumeRecord.from_json(READY)
    assert record.members[0] == Member("/dev/nvme1n1", "AWS1", "Amazon EC2 NVMe Instance Storage", 10**12,
                                       ("/dev/disk/by-id/nvme-a", "/dev/disk/by-id/nvme-b"))
    assert record.as_json() == READY


def test_keys_the_file_lacks_stay_absent() -> None:
    building = {key: value for key, value in READY.items() if key != "mount_source"}
    assert "mount_source" not in VolumeRecord.from_json(building).as_json()
    assert VolumeRecord.from_json(building).mount_source is None


def test_the_health_cache_gives_the_same_record() -> None:
    for data in (READY, {key: value for key, value in READY.items() if key not in ("mount_source", "fs_uuid")}):
        record = VolumeRecord.from_json(data)
        fields = {key: str(value) for key, value in recorded._as_fields(record).items()}
        assert recorded._from_fields(fields) == record


def test_a_cache_of_an_older_shape_is_not_used() -> None:
    assert recorded._from_fields({"key": "1:2:3", "status": "ready", "members": "/dev/nvme1n1"}) is None
