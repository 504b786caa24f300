"""processes.Index's reading of a namespace's mountinfo: which mounts are the volume's, and where on
the volume the other filesystems mounted on it sit (objects on those are placed there, never stat'ed)."""

from __future__ import annotations

from slurm_scratch.jobs import processes

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


def learnt_index(parents: dict[int, int], held: dict[int, dict[int, set[str]]], procs: dict[int, tuple[int, int]]) -> processes.Index:
    index = processes.Index.__new__(processes.Index)
    index.parents, index.held = parents, held
    index.procs = {pid: (uids, b"1") for pid, uids in procs.items()}
    index._targets, index._by_target = set(), None
    return index


def test_holders_of_nested_and_deep_directories() -> None:
    # root 1 > job dir 10 > 11 > job dir 20 (made inside by the user) > 21; job dir 30 elsewhere.
    parents = {10: 1, 11: 10, 20: 11, 21: 20, 30: 1}
    held = {21: {500: {"cwd"}}, 11: {501: {"fd 3"}}, 30: {502: {"exe"}, 503: {"map"}}}
    index = learnt_index(parents, held, {500: (4201, 4201), 501: (4201, 4201), 502: (4202, 4202), 503: (0, 4201)})
    index.want([10, 30])
    assert index.holders(10, 4201) == {500: {"cwd"}, 501: {"fd 3"}}
    assert index.holders(20, 4201) == {500: {"cwd"}}  # asked later: answered too
    assert index.holders(30, 4202) == {502: {"exe"}}
    assert index.holders(30, 4201) == {503: {"map"}}  # a setuid-style process: real uid the user's
    assert index.holders(1, 4201) == {500: {"cwd"}, 501: {"fd 3"}, 503: {"map"}}
    assert index.holders(99, 4201) == {}


def test_thousands_of_held_directories_under_a_deep_chain_are_one_linear_pass() -> None:
    # A chain 8,000 levels deep below job dir 10 and 20,000 directories held at its bottom: walking
    # every held directory's ancestors would be 160 million steps; the memoised pass is ~30,000.
    depth, leaves = 8000, 20000
    parents = {10: 1}
    parents.update({100 + level: (100 + level - 1 if level else 10) for level in range(depth)})
    bottom = 100 + depth - 1
    parents.update({10**6 + leaf: bottom for leaf in range(leaves)})
    held = {10**6 + leaf: {7000 + leaf % 7: {"cwd"}} for leaf in range(leaves)}
    index = learnt_index(parents, held, {7000 + n: (4201, 4201) for n in range(7)})
    assert sorted(index.holders(10, 4201)) == list(range(7000, 7007))
