"""The kernel I/O error check's logic without a kernel: parsing /dev/kmsg records, which messages
count and which disk they name, the window, the threshold, stickiness and the per-boot cursor
(the state file lives in a temporary directory). Real kernel messages: tests/host/test_io_errors_kernel.py."""

from __future__ import annotations

import pytest

from slurm_scratch import config as config_module
from slurm_scratch.health import io_errors, kmsg
from slurm_scratch.health.kmsg import KernelLog, KernelMessage
from slurm_scratch.volume.state import Member, VolumeRecord

NAMES = {"nvme1n1": "/dev/nvme1n1", "nvme1": "/dev/nvme1n1", "loop3": "/dev/loop3", "loop4": "/dev/loop4"}


def message(text: str, level: int = 3, seq: int = 1, seconds: float = 100.0) -> KernelMessage:
    return KernelMessage(seq=seq, level=level, seconds=seconds, text=text)


def test_a_kmsg_record_is_parsed() -> None:
    parsed = kmsg.parse(b"3,4242,11524790359,-;I/O error, dev loop1, sector 2 op 0x1:(WRITE) flags 0x3000\n SUBSYSTEM=block\n DEVICE=b7:1\n")
    assert parsed == KernelMessage(seq=4242, level=3, seconds=11524.790359, text="I/O error, dev loop1, sector 2 op 0x1:(WRITE) flags 0x3000")
    assert kmsg.parse(b"garbage") is None and kmsg.parse(b"x,y,z;text") is None


@pytest.mark.parametrize("text, level, disk", [
    ("I/O error, dev loop3, sector 17926 op 0x0:(READ) flags 0x80700 phys_seg 56 prio class 2", 3, "loop3"),
    ("critical medium error, dev nvme1n1, sector 9 op 0x0:(READ)", 3, "nvme1n1"),
    ("nvme nvme1: I/O 123 QID 4 timeout, aborting", 4, "nvme1"),
    ("nvme nvme1: resetting controller", 4, "nvme1"),
    ("nvme1n1: I/O Cmd(0x2) @ LBA 0, 8 blocks, I/O Error (sct 0x2 / sc 0x81)", 3, "nvme1n1"),
    ("EXT4-fs error (device loop3): ext4_journal_check_start:87: comm cat: Detected aborted journal", 2, "loop3"),
    ("BTRFS error (device loop3): bdev /dev/loop4 errs: wr 1, rd 0, flush 0, corrupt 0, gen 0", 3, "loop4"),
])
def test_what_counts_and_which_disk_it_names(text: str, level: int, disk: str) -> None:
    found = message(text, level)
    assert io_errors.counts(found) and io_errors.disk_named(found, NAMES) == disk


@pytest.mark.parametrize("text, level", [
    ("Buffer I/O error on dev loop3, logical block 1, lost async page write", 3),  # one per page of a counted request
    ("operation not supported error, dev loop3, sector 0 op 0x3:(DISCARD)", 3),
    ("EXT4-fs (loop3): mounted filesystem r/w with ordered data mode", 6),
    ("I/O error, dev loop3, sector 2", 6),  # not warning level or worse
])
def test_what_does_not_count(text: str, level: int) -> None:
    assert not io_errors.counts(message(text, level))


def test_errors_on_other_devices_name_no_watched_disk() -> None:
    assert io_errors.disk_named(message("I/O error, dev loop30, sector 2"), NAMES) is None
    assert io_errors.disk_named(message("I/O error, dev nvme1n11, sector 2"), NAMES) is None


def test_member_disks_of_the_record_and_their_nvme_controllers_are_watched() -> None:
    record = VolumeRecord(backend="lvm", members=(Member(path="/dev/nvme1n1"), Member(path="/dev/nvme2n1")))
    assert io_errors.watched(record, None) == {"nvme1n1": "/dev/nvme1n1", "nvme2n1": "/dev/nvme2n1",
                                               "nvme1": "/dev/nvme1n1", "nvme2": "/dev/nvme2n1"}


class FakeKernel:
    def __init__(self, monkeypatch, tmp_path, boot: str = "boot-1") -> None:
        self.boot, self.messages, self.reads = boot, [], []
        monkeypatch.setattr(io_errors, "IO_ERRORS_STATE", str(tmp_path / "io-errors"))
        monkeypatch.setattr(kmsg, "boot_id", lambda: self.boot)
        monkeypatch.setattr(kmsg, "read_after", self.read_after)
        monkeypatch.setattr(io_errors, "watched", lambda record, mount: NAMES)
        monkeypatch.setattr(io_errors.time, "monotonic", lambda: 1000.0)

    def log(self, text: str, seconds: float = 990.0, level: int = 3) -> None:
        seq = len(self.messages) + 1
        self.messages.append(message(text, level, seq, seconds))

    def read_after(self, cursor: int) -> KernelLog:
        self.reads.append(cursor)
        after = tuple(m for m in self.messages if m.seq > cursor)
        return KernelLog(messages=after, last_seq=self.messages[-1].seq if self.messages else cursor, lost=0, complete=True)


def config(**health: str):
    text = "[health]\n" + "".join(f"{key} = {value}\n" for key, value in health.items())
    return config_module.parse_config(text, "test.conf")


def test_threshold_window_stickiness_and_clearing(monkeypatch, tmp_path) -> None:
    kernel = FakeKernel(monkeypatch, tmp_path)
    conf = config(io_errors_max="2", io_errors_window="60s")
    kernel.log("I/O error, dev loop3, sector 1")  # before the node's first check: not counted
    assert io_errors.check(conf, None).text == "no kernel I/O errors"
    for _ in range(2):
        kernel.log("I/O error, dev loop3, sector 2")
    kernel.log("I/O error, dev loop4, sector 2", seconds=100.0)  # outside the window
    found = io_errors.check(conf, None)
    assert found.healthy and found.text.startswith("2 kernel I/O error(s)")
    assert io_errors.current().totals == {"loop3": 2, "loop4": 1}
    kernel.log("I/O error, dev loop3, sector 3")
    assert io_errors.check(conf, None) == io_errors.bad("io", "I/O errors on /dev/loop3")
    assert io_errors.check(conf, None) == io_errors.bad("io", "I/O errors on /dev/loop3"), "sticky on a quiet run"
    monkeypatch.setattr(io_errors, "watched", lambda record, mount: {"loop4": "/dev/loop4"})  # rebuilt without loop3
    assert io_errors.check(conf, None, save_state=False).text == "no kernel I/O errors", "a disk no longer in the volume lapses"
    monkeypatch.setattr(io_errors, "watched", lambda record, mount: NAMES)
    assert io_errors.clear() == "I/O errors on /dev/loop3"
    assert io_errors.check(conf, None).healthy
    assert io_errors.current().totals == {"loop3": 3, "loop4": 1}, "the cursor stayed: nothing counted twice"


def test_report_only_saves_nothing_and_a_reattached_device_starts_afresh(monkeypatch, tmp_path) -> None:
    kernel = FakeKernel(monkeypatch, tmp_path)
    conf = config(io_errors_max="1")
    io_errors.check(conf, None)
    kernel.log("I/O error, dev loop3, sector 2")
    io_errors.check(conf, None, save_state=False)
    assert io_errors.current().totals == {}
    io_errors.check(conf, None)
    kernel.log("loop3: detected capacity change from 0 to 262144", level=6)
    kernel.log("I/O error, dev loop3, sector 2")
    assert io_errors.check(conf, None).healthy, "one error since the device was attached anew"


def test_the_cursor_belongs_to_its_boot(monkeypatch, tmp_path) -> None:
    kernel = FakeKernel(monkeypatch, tmp_path)
    conf = config(io_errors_max="0")
    kernel.log("Linux version 6.x", level=5)
    io_errors.check(conf, None)
    kernel.log("I/O error, dev loop3, sector 2")
    assert not io_errors.check(conf, None).healthy
    assert kernel.reads == [-1, 1]  # first check: the whole log, for its last sequence number only
    kernel.boot, kernel.messages = "boot-2", []
    kernel.log("EXT4-fs (loop3): mounted filesystem", level=6)
    assert io_errors.check(conf, None).text == "no kernel I/O errors", "a reboot with healthy disks clears"
    assert kernel.reads[-1] == -1 and io_errors.current().boot == "boot-2"


def test_the_window_off_reads_nothing(monkeypatch, tmp_path) -> None:
    kernel = FakeKernel(monkeypatch, tmp_path)
    assert io_errors.check(config(io_errors_window="0"), None) is None and kernel.reads == []


def test_config_durations_and_errors() -> None:
    assert config(io_errors_window="90s").health.io_errors_window == 90
    assert config(io_errors_window="30m").health.io_errors_window == 1800
    assert config(io_errors_window="24h").health.io_errors_window == 86400
    assert config(io_errors_window="120s").health.io_errors_window == 120
    with pytest.raises(config_module.ConfigError) as error:
        config(io_errors_window="soon", io_errors_max="-1", metrics_dir="relative/dir")
    problems = "\n".join(error.value.problems)
    assert "[health] io_errors_window = 'soon': must be 0 or a duration" in problems
    assert "[health] io_errors_max = '-1'" in problems and "[health] metrics_dir = 'relative/dir': must be an absolute path" in problems
