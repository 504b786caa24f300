"""/var/lib/slurm-scratch/volume.json: what `setup` built (survives reboot, not stop/start).

It says which disks (path, serial, model) the volume was built from, so that a missing disk can be
named, and it makes those disks "ours". Written atomically. `status` is "building" from just
before the first change to the disks, "formatted" once mkfs has finished, "ready" once mounted:
a filesystem found on a volume whose build stopped while "building" was never mounted (an
interrupted mkfs), so setup makes it again; after "formatted" it is always kept.
"""

from __future__ import annotations

import json
import os
import time

from slurm_scratch.layout import STATE_DIR
from slurm_scratch.layout import VOLUME_RECORD as STATE_FILE

VERSION = 1


def read() -> dict | None:
    try:
        with open(STATE_FILE, encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        from slurm_scratch import log

        log.warning(f"{STATE_FILE}: unreadable ({exc}); ignoring it")
        return None
    return data if isinstance(data, dict) and isinstance(data.get("members", []), list) else None


def write(data: dict) -> None:
    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    data = {"version": VERSION, **data, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
