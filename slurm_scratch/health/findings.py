"""A check's result (Finding) and which problem names the drain reason when there are several."""

from __future__ import annotations

from slurm_scratch.record import Record

# Which problem names the drain reason when there are several (lower first).
RANK = {"mount": 0, "writable": 1, "layers": 2, "hung": 3, "statvfs": 4, "probe": 5, "errors": 6}


class Finding(Record):
    check: str  # mount, writable, layers, statvfs, probe, errors ("hung": a check that timed out)
    healthy: bool
    text: str


def ok(check: str, text: str) -> Finding:
    return Finding(check=check, healthy=True, text=text)


def bad(check: str, text: str) -> Finding:
    return Finding(check=check, healthy=False, text=text)


def problems_of(findings: list[Finding]) -> list[Finding]:
    """The unhealthy findings, the one that names the drain reason first."""
    return sorted((f for f in findings if not f.healthy), key=lambda f: RANK.get(f.check, 9))
