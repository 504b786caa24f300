"""slurm.conf's TmpFS and a node's TmpDisk (slurm_scratch/slurmconf.py): the parser, and the
warnings `check-config` and `status` give when they do not fit the scratch volume."""
from __future__ import annotations

from pathlib import Path

import pytest

from slurm_scratch import slurmconf
from slurm_scratch.errors import ScratchError

CONF = """\
ClusterName=c  # a comment
tmpfs=/scratch
NodeName=DEFAULT CPUs=64 TmpDisk=3500000
NodeName=n[1-4,7] RealMemory=500000
NodeName=gpu[01-02]x,big TmpDisk=7000000 Features="nvme fast"
NodeName=small[1-2] TmpDisk=0
Include nodes.conf
PartitionName=p Nodes=n[1-4] TmpDisk=1
"""


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "nodes.conf").write_text("NodeName=late[08-10] TmpDisk=42\n")
    path = tmp_path / "slurm.conf"
    path.write_text(CONF)
    return path


@pytest.mark.parametrize("node, tmp_disk", [
    ("n1", 3500000), ("n4", 3500000), ("n7", 3500000),  # the DEFAULT line's value
    ("gpu02x", 7000000), ("big", 7000000), ("small2", 0),
    ("late09", 42),  # from the included file
    ("n5", None), ("gpu1x", None), ("late9", None),  # not in any host list
])
def test_a_nodes_tmpdisk_comes_from_its_line_or_the_default(conf: Path, node: str, tmp_disk) -> None:
    tmp = slurmconf.read(str(conf), node)
    assert (tmp.tmp_fs, tmp.tmp_disk_mib, tmp.node, tmp.path) == ("/scratch", tmp_disk, node, str(conf))


def test_tmpfs_defaults_to_tmp(tmp_path: Path) -> None:
    path = tmp_path / "slurm.conf"
    path.write_text("NodeName=n1\n")
    assert slurmconf.read(str(path), "n1").as_dict() == {
        "path": str(path), "node": "n1", "tmp_fs": "/tmp", "tmp_disk_mib": 0}


def test_host_lists() -> None:
    assert slurmconf.expand_hostlist("n[1-3]") == ["n1", "n2", "n3"]
    assert slurmconf.expand_hostlist("n[08-10],a") == ["n08", "n09", "n10", "a"]
    assert slurmconf.expand_hostlist("r[1-2]n[1,3]") == ["r1n1", "r1n3", "r2n1", "r2n3"]
    for bad in ("n[1-", "n[a-b]", "n[3-1]"):
        with pytest.raises(ValueError):
            slurmconf.expand_hostlist(bad)


def test_malformed_values_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "slurm.conf"
    path.write_text("NodeName=n1 TmpDisk=lots\n")
    with pytest.raises(ScratchError, match=f"{path}: TmpDisk=lots on the NodeName=n1 line is not a number"):
        slurmconf.read(str(path), "n1")
    path.write_text("NodeName=n[1-\n")
    with pytest.raises(ScratchError, match=r"NodeName=n\[1-: unclosed"):
        slurmconf.read(str(path), "n1")
    with pytest.raises(OSError):
        slurmconf.read(str(tmp_path / "missing.conf"), "n1")


def test_conf_path_prefers_the_config_then_the_environment() -> None:
    assert slurmconf.conf_path("/etc/a.conf", {"SLURM_CONF": "/b"}) == "/etc/a.conf"
    assert slurmconf.conf_path("", {"SLURM_CONF": "/b"}) == "/b"
    assert slurmconf.conf_path("", {}) == "/etc/slurm/slurm.conf"


def _tmp(tmp_fs: str = "/scratch", tmp_disk: int | None = 1000) -> slurmconf.SlurmTmp:
    return slurmconf.SlurmTmp(path="/etc/slurm/slurm.conf", node="n1", tmp_fs=tmp_fs, tmp_disk_mib=tmp_disk)


def test_no_warning_when_tmpfs_is_the_volume_and_tmpdisk_fits() -> None:
    assert slurmconf.warnings(_tmp(), "/scratch", 1000) == []
    assert slurmconf.warnings(_tmp("/scratch/"), "/scratch", None) == []  # not mounted: size unknown


def test_warnings_name_what_does_not_fit() -> None:
    [tmpfs] = slurmconf.warnings(_tmp("/tmp"), "/scratch", 2000)
    assert tmpfs.startswith("/etc/slurm/slurm.conf: TmpFS=/tmp is not [volume] mount_point /scratch")
    [too_big] = slurmconf.warnings(_tmp(tmp_disk=1001), "/scratch", 1000)
    assert "TmpDisk=1001 of node n1 exceeds the volume at /scratch (1000 MiB)" in too_big
    assert "Low TmpDisk" in too_big
    [missing] = slurmconf.warnings(_tmp(tmp_disk=None), "/scratch", 1000)
    assert "no NodeName line names node n1" in missing


def test_the_labs_slurm_conf_measures_scratch_and_sets_every_nodes_tmp_disk():
    """What the cluster tier and the systemd VM guest write: TmpFS, and TmpDisk on every NodeName."""
    from lab.slurmconf import slurm_conf_text

    text = slurm_conf_text(cluster_name="c", controller=("vm", "127.0.0.1"), nodes=[("vm", "127.0.0.1"), ("n2", "10.0.0.2")],
                           controller_dir=Path("/var/lib/c"), node_dir="/var/lib/n", hooks=Path("/usr/local/libexec/slurm-scratch"),
                           health_interval=5, tmp_fs="/scratch", tmp_disk_mib=1638)
    lines = text.splitlines()
    assert "TmpFS=/scratch" in lines
    nodes = [line for line in lines if line.startswith("NodeName=")]
    assert len(nodes) == 2 and all(" TmpDisk=1638 " in line for line in nodes)
