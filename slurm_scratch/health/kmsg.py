"""The kernel log as /dev/kmsg gives it: the records after a sequence number, read without ever
blocking (O_NONBLOCK: the end of the log is EAGAIN) and within a bound of records and time.

A record is `<priority>,<sequence>,<microseconds since boot>,<flags>[,...];<text>` followed by
continuation lines (` KEY=value`, ignored). Sequence numbers restart at every boot: a cursor is
only meaningful with the boot id it was taken in (`boot_id`).
"""

from __future__ import annotations

import os
import time

from slurm_scratch.record import Record

KMSG = "/dev/kmsg"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
MAX_RECORDS = 200_000  # the ring buffer holds far fewer; a bound against a flood written while we read
MAX_SECONDS = 2.0
RECORD_BYTES = 8192  # one read() returns one whole record, at most this long (the kernel's limit)


class KernelMessage(Record):
    seq: int
    level: int  # 0 emergency .. 7 debug
    seconds: float  # since boot (the kernel's clock, as time.monotonic() counts)
    text: str


class KernelLog(Record):
    messages: tuple[KernelMessage, ...]  # those after the cursor, oldest first
    last_seq: int  # the newest record's sequence number seen (the next cursor); -1 when none
    lost: int  # records after the cursor the ring buffer had already dropped
    complete: bool  # the end of the log was reached within the bounds


def boot_id(path: str = BOOT_ID) -> str:
    try:
        with open(path, "rb") as stream:  # bytes: no codec module to import on every health check
            return stream.read().decode("ascii", errors="replace").strip()
    except OSError:
        return ""


def parse(record: bytes) -> KernelMessage | None:
    """One /dev/kmsg record, or None when it is not one."""
    header, sep, rest = record.partition(b";")
    fields = header.split(b",")
    if not sep or len(fields) < 3:
        return None
    try:
        priority, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    text = rest.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    return KernelMessage(seq=seq, level=priority & 7, seconds=usec / 1e6, text=text)


def read_after(cursor: int, path: str = KMSG, max_records: int = MAX_RECORDS, max_seconds: float = MAX_SECONDS) -> KernelLog:
    """The records with a sequence number above `cursor` (-1: all the ring buffer still holds).

    Raises OSError when the log cannot be opened (absent, or no CAP_SYSLOG with dmesg_restrict)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    messages: list[KernelMessage] = []
    last, first_seen, complete = cursor, None, False
    deadline = time.monotonic() + max_seconds
    try:
        for count in range(max_records):
            if count % 256 == 0 and time.monotonic() > deadline:
                break
            try:
                data = os.read(fd, RECORD_BYTES)
            except BlockingIOError:
                complete = True
                break
            except BrokenPipeError:  # overwritten while we read: the next read gives the oldest left
                continue
            if not data:
                complete = True
                break
            try:  # the sequence number first: the records up to the cursor are only counted past
                seq = int(data.split(b",", 2)[1])
            except (IndexError, ValueError):
                continue
            if first_seen is None:
                first_seen = seq
            last = max(last, seq)
            if seq > cursor:
                message = parse(data)
                if message is not None:
                    messages.append(message)
    finally:
        os.close(fd)
    lost = max(0, first_seen - cursor - 1) if first_seen is not None and cursor >= 0 else 0
    return KernelLog(messages=tuple(messages), last_seq=last, lost=lost, complete=complete)
