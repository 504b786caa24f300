"""A check's result (Finding) and which problem names the drain reason when there are several."""

from __future__ import annotations

from slurm_scratch.record import Record

# Which problem names the drain reason when there are several (lower first).
# Kernel I/O errors on a disk ("io") come before what they cause (read-only, a failed probe).
RANK = {"mount": 0, "io": 1, "writable": 2, "layers": 3, "hung": 4, "statvfs": 5, "probe": 6, "errors": 7}


class Finding(Record):
    check: str  # mount, writable, layers, statvfs, probe, errors, io ("hung": a check that timed out)
    healthy: bool
    text: str
    value: str = ""  # what was measured, for the metrics: statvfs "blocks bavail files favail frsize", probe ms


def ok(check: str, text: str) -> Finding:
    return Finding(check=check, healthy=True, text=text)


def bad(check: str, text: str) -> Finding:
    return Finding(check=check, healthy=False, text=text)


def problems_of(findings: list[Finding]) -> list[Finding]:
    """The unhealthy findings, the one that names the drain reason first."""
    return sorted((f for f in findings if not f.healthy), key=lambda f: RANK.get(f.check, 9))
