"""processes.Index's reading of a namespace's mountinfo: which mounts are the volume's, and where on
the volume the other filesystems mounted on it sit (objects on those are placed there, never stat'ed)."""

from __future__ import annotations

from slurm_scratch import processes

MOUNTINFO = """\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
30 1 259:0 / /scratch rw,noatime - ext4 /dev/nvme0n1 rw
31 30 0:50 / /scratch/job_5/fuse rw - fuse.sshfs host:/x rw
33 31 0:51 / /scratch/job_5/fuse/deeper rw - fuse.other y rw
32 1 259:0 /job_5 /tmp/x rw - ext4 /dev/nvme0n1 rw
35 32 0:52 / /tmp/x/sub\\040dir rw - tmpfs tmpfs rw
34 1 0:40 / /tmp rw - tmpfs tmpfs rw
"""


def bare_index() -> processes.Index:
    index = processes.Index.__new__(processes.Index)
    index.major_minor = "259:0"
    index.namespaces = {}
    return index


def test_volume_mounts_and_what_is_mounted_on_them(monkeypatch) -> None:
    monkeypatch.setattr(processes, "_read", lambda path, size=65536: MOUNTINFO.encode())
    monkeypatch.setattr(processes.os, "readlink", lambda path: "mnt:[4026531840]")
    ours, anchored = bare_index()._volume_mounts("42")
    assert ours == {30: ("/", "/scratch"), 32: ("/job_5", "/tmp/x")}
    # A FUSE mount in a job dir, one stacked inside it (placed where the outer one sits), and a
    # mount below a bind of the job dir in another place (placed by the bind's root).
    assert anchored == {31: "/job_5/fuse", 33: "/job_5/fuse", 35: "/job_5/sub dir"}


def test_one_reading_per_namespace(monkeypatch) -> None:
    reads = []
    monkeypatch.setattr(processes, "_read", lambda path, size=65536: reads.append(path) or MOUNTINFO.encode())
    monkeypatch.setattr(processes.os, "readlink", lambda path: "mnt:[4026531840]")
    index = bare_index()
    for pid in ("1", "2", "3"):
        index._volume_mounts(pid)
    assert reads == ["/proc/1/mountinfo"]


def test_a_process_in_a_namespace_without_the_volume_is_skipped_at_once(monkeypatch) -> None:
    monkeypatch.setattr(processes, "_read", lambda path, size=65536: b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")
    monkeypatch.setattr(processes.os, "readlink", lambda path: "mnt:[4026532000]")
    assert bare_index()._volume_mounts("7") == ({}, {})
