"""/var/lib/slurm-scratch/volume.json: what `setup` built (survives reboot, not stop/start).

It says which disks (path, serial, model) the volume was built from, so that a missing disk can be
named, and it makes those disks "ours". Written atomically. `status` is "building" from just
before the first change to the disks, "formatted" once mkfs has finished, "ready" once mounted:
a filesystem found on a volume whose build stopped while "building" was never mounted (an
interrupted mkfs), so setup makes it again; after "formatted" it is always kept.

The file stays JSON (the released format); in the program it is one typed record, VolumeRecord,
read by setup, status and health alike. This module imports no `json` until a file is read or
written, so the health check can build the record from its key=value cache without it.
"""

from __future__ import annotations

import os
import time

from slurm_scratch.layout import STATE_DIR
from slurm_scratch.layout import VOLUME_RECORD as STATE_FILE
from slurm_scratch.record import Record

VERSION = 1


class Member(Record):
    """One disk the volume was built from."""

    path: str = ""
    serial: str = ""
    model: str = ""
    size_bytes: int = 0
    by_id: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: object) -> "Member":
        if not isinstance(value, dict):
            return cls(path=str(value))
        return cls(path=str(value.get("path") or ""), serial=str(value.get("serial") or ""),
                   model=str(value.get("model") or ""), size_bytes=_int(value.get("size_bytes")),
                   by_id=tuple(str(link) for link in value.get("by_id") or ()))

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "serial": self.serial, "model": self.model, "size_bytes": self.size_bytes, "by_id": list(self.by_id)}


class VolumeRecord(Record):
    """The built volume, as volume.json holds it. fs_uuid and mount_source are None when the file
    does not hold them (mount_source is written once "ready")."""

    status: str = ""
    backend: str = ""
    filesystem: str = ""
    device: str = ""
    mount_point: str = ""
    members: tuple[Member, ...] = ()
    vg_name: str = ""
    lv_name: str = ""
    md_name: str = ""
    label: str = ""
    stripe_kb: int = 0
    fs_uuid: str | None = None
    mount_source: str | None = None
    created: str = ""
    updated: str = ""
    version: int = VERSION

    @classmethod
    def from_json(cls, data: dict) -> "VolumeRecord":
        text = ("status", "backend", "filesystem", "device", "mount_point", "vg_name", "lv_name", "md_name", "label", "created", "updated")
        values: dict[str, object] = {name: str(data.get(name) or "") for name in text}
        for name in ("fs_uuid", "mount_source"):
            if name in data:
                values[name] = str(data[name] or "")
        return cls(**values, stripe_kb=_int(data.get("stripe_kb")), version=_int(data.get("version", VERSION)),
                   members=tuple(Member.from_json(member) for member in data.get("members") or ()))

    def as_json(self) -> dict[str, object]:
        """The record as volume.json holds it (fs_uuid, mount_source only when known)."""
        data = {name: value for name, value in self.as_dict().items() if value is not None}
        data["members"] = [member.as_json() for member in self.members]
        return data

    def member_paths(self) -> tuple[str, ...]:
        return tuple(member.path for member in self.members)


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def read() -> VolumeRecord | None:
    import json

    try:
        with open(STATE_FILE, encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        from slurm_scratch import log

        log.warning(f"{STATE_FILE}: unreadable ({exc}); ignoring it")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("members", []), list):
        return None
    return VolumeRecord.from_json(data)


def write(record: VolumeRecord) -> None:
    """Write the record, stamped with this VERSION and the time now."""
    import json

    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    data = {**record.as_json(), "version": VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    temporary = f"{STATE_FILE}.tmp.{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, sort_keys=True)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, STATE_FILE)


def remove() -> None:
    try:
        os.unlink(STATE_FILE)
    except FileNotFoundError:
        pass
