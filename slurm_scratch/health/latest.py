"""The latest full health check's findings, kept in RUN_DIR for `status` and the metrics: when it
ran, whether it found the volume healthy, when it last did, and each finding."""

from __future__ import annotations

from slurm_scratch import statefile
from slurm_scratch.health.findings import Finding
from slurm_scratch.layout import HEALTH_FINDINGS
from slurm_scratch.record import Record


class Latest(Record):
    time: float  # time.time() of the run; 0 when no run is recorded
    healthy: bool
    last_healthy: float  # time.time() of the newest run that found it healthy; 0: none since boot
    findings: tuple[Finding, ...]


def load() -> Latest:
    fields = statefile.fields_or_empty(HEALTH_FINDINGS)
    findings = []
    for index in range(int(fields.get("findings", "0") or 0) if fields.get("findings", "0").isdigit() else 0):
        check, _, rest = fields.get(f"finding.{index}", "").partition(" ")
        state, _, text = rest.partition(" ")
        if check:
            findings.append(Finding(check=check, healthy=state == "ok", text=text))
    return Latest(time=statefile.number(fields.get("time")), healthy=fields.get("healthy") == "yes",
                  last_healthy=statefile.number(fields.get("last_healthy")), findings=tuple(findings))


def save(findings: list[Finding], now: float) -> Latest:
    """Record this run's findings; returns what was recorded."""
    healthy = all(finding.healthy for finding in findings)
    latest = Latest(time=now, healthy=healthy, last_healthy=now if healthy else load().last_healthy, findings=tuple(findings))
    fields: dict[str, object] = {"time": f"{now:.3f}", "healthy": "yes" if healthy else "no",
                                 "last_healthy": f"{latest.last_healthy:.3f}", "findings": len(findings)}
    for index, finding in enumerate(findings):
        fields[f"finding.{index}"] = f"{finding.check} {'ok' if finding.healthy else 'problem'} {finding.text}"
    statefile.write_fields(HEALTH_FINDINGS, fields)
    return latest
