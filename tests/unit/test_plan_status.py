"""`status` text from a report (the JSON form is checked on real volumes in tests/host)."""

from __future__ import annotations

from slurm_scratch.volume.status import render


def test_status_text_names_every_disk_and_why() -> None:
    report = {
        "mount_point": "/scratch", "state": "degraded", "backend": "lvm", "devices": "aws", "selector": "aws",
        "error": "scratch volume vg.01/lv_ephemeral is degraded: missing disk /dev/nvme3n1, serial AWS1",
        "members": ["/dev/nvme1n1", "/dev/nvme2n1"], "device": "/dev/vg.01/lv_ephemeral", "filesystem": "",
        "disks": [{"path": "/dev/nvme1n1", "model": "Amazon EC2 NVMe Instance Storage", "serial": "AWS2", "size_bytes": 3750 * 10**9,
                   "ours": True, "will_wipe": False, "signature": "an LVM physical volume of VG 'vg.01'"}],
        "skipped": [{"path": "/dev/nvme4n1", "model": "Amazon EC2 NVMe Instance Storage", "serial": "AWS4", "size_bytes": 1,
                     "reason": "is mounted at /data"}],
        "not_selected": [{"path": "/dev/nvme0n1", "model": "Amazon Elastic Block Store", "serial": "vol1", "size_bytes": 1,
                          "reason": "is an EBS volume (never used)"}],
        "notes": [], "setup_would": [],
    }
    text = render(report)
    assert text.splitlines()[0] == "volume:     /scratch: degraded"
    assert "problem:    scratch volume vg.01/lv_ephemeral is degraded: missing disk /dev/nvme3n1" in text
    assert "found     /dev/nvme1n1  3.4 TiB  Amazon EC2 NVMe Instance Storage  AWS2  [ours]" in text
    assert "skipped   /dev/nvme4n1  Amazon EC2 NVMe Instance Storage  AWS4: is mounted at /data" in text
    assert "not used  /dev/nvme0n1: is an EBS volume (never used)" in text
    mounted = dict(report, state="mounted", error="", size_bytes=2**40, free_bytes=2**39, inodes=10, free_inodes=5, filesystem="ext4")
    assert "size:       1.0 TiB, free 512.0 GiB (5 of 10 inodes free)" in render(mounted)
