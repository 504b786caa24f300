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

_CACHED_KEYS = ("status", "mount_point", "backend", "filesystem", "device", "mount_source", "fs_uuid", "vg_name", "lv_name", "md_name")


def recorded(config: Config) -> dict | None:
    """The volume record (what setup built, volume.json) for this mount point, or None.

    What the checks need of it is cached in /run/slurm-scratch as key=value lines, keyed by the
    record's inode, size and mtime: so the health check does not import `json` on every run.
    """
    from slurm_scratch import statefile

    try:
        st = os.stat(RECORD_FILE)
    except FileNotFoundError:
        return None
    key = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cached = statefile.read_fields(RECORD_CACHE)
    if cached is not None and cached.get("key") == key:
        record: dict | None = {name: cached.get(name, "") for name in _CACHED_KEYS}
        record["members"] = [path for path in cached.get("members", "").split(",") if path]  # type: ignore[index]
    else:
        record = _read_record()
        if record is not None:
            fields = {"key": key, **{name: str(record.get(name) or "") for name in _CACHED_KEYS}}
            _, _, members = expected_volume(config, record)
            fields["members"] = ",".join(members or [])
            try:
                statefile.write_fields(RECORD_CACHE, fields)
            except OSError as exc:
                log.warning(f"healthcheck: cannot cache the volume record in {RECORD_CACHE}: {exc.strerror}")
    if record is None or (record.get("mount_point") or config.volume.mount_point) != config.volume.mount_point:
        return None
    return record


def _read_record() -> dict | None:
    try:
        from slurm_scratch.volume import state

        value = state.read()
    except ScratchError as exc:
        log.warning(f"healthcheck: cannot read the volume record: {exc}")
        return None
    return value if isinstance(value, dict) else None


def field(record: dict | None, *names: str):
    if not record:
        return None
    for name in names:
        if record.get(name) not in (None, "", [], ()):
            return record[name]
    return None


def expected_volume(config: Config, record: dict | None) -> tuple[str, str | None, list[str] | None]:
    """(backend, device or None, member disks or None) from the record, else from config."""
    backend = field(record, "backend") or config.volume.backend
    device = field(record, "device")
    members = field(record, "members")
    if device is None and record is None:
        if backend == "lvm":
            device = f"/dev/{config.volume.vg_name}/{config.volume.lv_name}"
        elif backend == "mdadm":
            device = f"/dev/md/{config.volume.md_name}"
    if members is not None and not isinstance(members, (list, tuple)):
        members = None
    paths = [str(m.get("path", "?")) if isinstance(m, dict) else str(m) for m in members] if members else None
    return str(backend), (str(device) if device else None), paths
