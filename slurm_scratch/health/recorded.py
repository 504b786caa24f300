"""What the checks need of the volume record (volume.json), cached in RUN_DIR as key=value lines.

The cache is keyed by the record's inode, size and mtime, so that a health check on a healthy node
does not import `json` to read the record.
"""

from __future__ import annotations

import os

from slurm_scratch import log
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import VOLUME_RECORD as RECORD_FILE
from slurm_scratch.layout import VOLUME_RECORD_CACHE as RECORD_CACHE
from slurm_scratch.volume.state import Member, VolumeRecord

_MEMBER_FIELDS = ("path", "serial", "model", "size_bytes", "by_id")


def recorded(config: Config) -> VolumeRecord | None:
    """The volume record (what setup built, volume.json) for this mount point, or None.

    It is cached in /run/slurm-scratch as key=value lines, keyed by the record's inode, size and
    mtime: so the health check does not import `json` on every run. The cache gives the same
    VolumeRecord as the file.
    """
    from slurm_scratch import statefile

    try:
        st = os.stat(RECORD_FILE)
    except FileNotFoundError:
        return None
    key = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cached = statefile.read_fields(RECORD_CACHE)
    record = _from_fields(cached) if cached is not None and cached.get("key") == key else None
    if record is None:
        record = _read_record()
        if record is not None:
            try:
                statefile.write_fields(RECORD_CACHE, {"key": key, **_as_fields(record)})
            except OSError as exc:
                log.warning(f"healthcheck: cannot cache the volume record in {RECORD_CACHE}: {exc.strerror}")
    if record is None or (record.mount_point or config.volume.mount_point) != config.volume.mount_point:
        return None
    return record


def _as_fields(record: VolumeRecord) -> dict[str, object]:
    """The record as key=value fields: members as `members` (their count) and `member.N.<field>`."""
    fields: dict[str, object] = {}
    for name, value in record.as_dict().items():
        if name != "members" and value is not None:
            fields[name] = value
    fields["members"] = len(record.members)
    for index, member in enumerate(record.members):
        for name in _MEMBER_FIELDS:
            value = getattr(member, name)
            fields[f"member.{index}.{name}"] = ",".join(value) if name == "by_id" else value
    return fields


def _from_fields(fields: dict[str, str]) -> VolumeRecord | None:
    try:
        members = tuple(
            Member(path=fields[f"member.{index}.path"], serial=fields[f"member.{index}.serial"],
                   model=fields[f"member.{index}.model"], size_bytes=int(fields[f"member.{index}.size_bytes"]),
                   by_id=tuple(link for link in fields[f"member.{index}.by_id"].split(",") if link))
            for index in range(int(fields["members"])))
        values: dict[str, object] = {name: fields[name] for name in _TEXT_FIELDS}
        values.update({name: fields[name] for name in ("fs_uuid", "mount_source") if name in fields})
        return VolumeRecord(**values, members=members, stripe_kb=int(fields["stripe_kb"]), version=int(fields["version"]))
    except (KeyError, ValueError):
        return None  # a cache of an older shape: read the record itself


_TEXT_FIELDS = ("status", "backend", "filesystem", "device", "mount_point", "vg_name", "lv_name", "md_name", "label", "created", "updated")


def _read_record() -> VolumeRecord | None:
    try:
        from slurm_scratch.volume import state

        return state.read()
    except ScratchError as exc:
        log.warning(f"healthcheck: cannot read the volume record: {exc}")
        return None


def field(record: VolumeRecord | None, *names: str):
    """The first of these fields the record holds a value for (not empty), else None."""
    if record is None:
        return None
    for name in names:
        value = getattr(record, name)
        if value not in (None, "", ()):
            return value
    return None


def expected_volume(config: Config, record: VolumeRecord | None) -> tuple[str, str | None, list[str] | None]:
    """(backend, device or None, member disks or None) from the record, else from config."""
    backend = field(record, "backend") or config.volume.backend
    device = field(record, "device")
    if device is None and record is None:
        if backend == "lvm":
            device = f"/dev/{config.volume.vg_name}/{config.volume.lv_name}"
        elif backend == "mdadm":
            device = f"/dev/md/{config.volume.md_name}"
    paths = [member.path or "?" for member in record.members] if record is not None and record.members else None
    return str(backend), (str(device) if device else None), paths
