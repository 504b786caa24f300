"""Health checks and drain/resume (issue 4 fills this in)."""

from __future__ import annotations

from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError


def record_prolog_finding(config: Config, finding: str) -> None:
    """Remember why a Prolog failed, for the next health check's drain reason."""


def main(config: Config, node: str) -> int:
    raise ScratchError("healthcheck is not implemented yet")
