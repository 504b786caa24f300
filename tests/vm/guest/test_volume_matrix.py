"""`slurm-scratch setup` on 1, 2, 4 and 8 EC2 instance-store disks, with LVM and mdadm, ext4 and
xfs: the volume is striped across every disk as configured, mounted with the configured options
and mode, recorded, and a second run changes nothing."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lab import guest_node as node

MOUNT_POINT = "/scratch"
VM_TIMEOUT_S = 1200


@pytest.mark.parametrize("filesystem", ["ext4", "xfs"])
@pytest.mark.parametrize("backend", ["lvm", "mdadm"])
@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_setup_builds_a_striped_volume(disks, conf, tool_available, count, backend, filesystem):
    made = disks.create(count, size="512M")
    config = conf(devices="aws", backend=backend, filesystem=filesystem)

    node.setup_ok(config)

    source, point, fstype = node.mount_of(MOUNT_POINT)
    assert fstype == filesystem
    assert {"noatime", "nodiratime"} <= node.mount_options(MOUNT_POINT)
    assert stat.S_IMODE(os.stat(MOUNT_POINT).st_mode) == 0o1777
    assert node.fs_label(source) == "scratch"
    member_devices = {str(disk.device()) for disk in made}
    if backend == "lvm":
        assert Path(source).resolve() == Path("/dev/vg.01/lv_ephemeral").resolve()
        layout = node.lv_layout("vg.01", "lv_ephemeral")
        assert int(layout["stripes"]) == count
        if count > 1:
            assert layout["stripe_size"] == "64.00k"
        pvs = {row["pv_name"] for row in node.lvm_report("pvs", "pv_name,vg_name")
               if row["vg_name"] == "vg.01"}
        assert pvs == member_devices
    else:
        detail = node.md_detail(source)
        assert detail["MD_LEVEL"] == "raid0" and int(detail["MD_DEVICES"]) == count
        assert detail.get("CHUNK") == "64K"
        slaves = {f"/dev/{name}" for name in
                  os.listdir(f"/sys/block/{Path(source).resolve().name}/slaves")}
        assert slaves == member_devices

    recorded = node.read_state()
    assert recorded and recorded["status"] == "ready" and recorded["backend"] == backend
    assert sorted(m["serial"] for m in recorded["members"]) == sorted(d.serial for d in made)

    status = node.status_json(config)
    assert status["state"] == "mounted" and status["mounted"] is True
    assert status["filesystem"] == filesystem and status["size_bytes"] > 0
    assert sorted(d["serial"] for d in status["disks"]) == sorted(d.serial for d in made)

    # The second run changes nothing: same filesystem, still mounted, a file kept.
    (Path(MOUNT_POINT) / "kept").write_text("data")
    uuid = node.fs_uuid(source)
    again = node.setup_ok(config)
    assert "nothing to do" in again.stdout
    assert node.mount_of(MOUNT_POINT)[0] == source and node.fs_uuid(source) == uuid
    assert (Path(MOUNT_POINT) / "kept").read_text() == "data"
