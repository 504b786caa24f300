"""The striped scratch volume (issue 3 fills this in): observe -> plan -> apply, per backend."""

from __future__ import annotations

from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError


def ensure_mounted(config: Config) -> None:
    """Make sure the volume is mounted at [volume] mount_point (the Prolog's self-heal)."""
    raise ScratchError(f"{config.volume.mount_point} is not mounted and volume setup is not implemented yet")


def setup_main(config: Config, dry_run: bool) -> int:
    raise ScratchError("setup is not implemented yet")


def status_main(config: Config, as_json: bool) -> int:
    raise ScratchError("status is not implemented yet")
