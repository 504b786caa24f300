"""`slurm-scratch status [--json]`: the node at a glance, read-only, asking Slurm nothing.

The report is the volume's (volume/status.py: disks used and skipped, backend, state, mount, size
and free space; its keys stay at the top level of `--json`) followed by SECTIONS, each one key of
`--json` and a line or a few of text: what the tool last told Slurm (the node's state as last
seen), slurm.conf's TmpFS and this node's TmpDisk, the latest health findings, kernel I/O errors,
the trash's backlog, failed jobs' kept directories (jobs/kept.py), each job directory's quota use
(jobs/quota_use.py), the metrics file's age. A
section is a pair of functions, (collect(config, node, volume report) -> dict, or None when there
is nothing to show; render(dict, now) -> lines): add one to SECTIONS to show more.
"""

from __future__ import annotations

import os
import time

from slurm_scratch.config import Config
from slurm_scratch.errors import EXIT_FAILURE, EXIT_OK
from slurm_scratch.volume import status as volume_status
from slurm_scratch.volume.status import size_text


def _ago(timestamp: float, now: float) -> str:
    seconds = max(0.0, now - timestamp)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def slurm_section(config: Config, node: str, volume: dict) -> dict:
    from slurm_scratch.health import drain

    memory = drain.load_memory()
    pending = drain.load_hook_finding()
    return {"drained_by_tool": memory.drained if memory else "", "last_finding": memory.finding if memory else "",
            "last_told": memory.confirmed if memory else None,
            "hook_finding": {"hook": pending.hook, "finding": pending.finding, "time": pending.time} if pending else None}


def slurm_lines(section: dict, now: float) -> list[str]:
    if section["last_told"] is None:
        line = "not asked since boot (no health check has needed Slurm yet)"
    elif section["drained_by_tool"]:
        line = f"drained by slurm-scratch: {section['drained_by_tool']} (as of {_ago(section['last_told'], now)})"
    else:
        line = f"not drained by slurm-scratch (last exchange {_ago(section['last_told'], now)})"
    lines = [f"slurm:      {line}"]
    if section["hook_finding"]:
        hook = section["hook_finding"]
        lines.append(f"  pending   the {hook['hook'] or 'hook'} failed {_ago(hook['time'], now)}: {hook['finding']}")
    return lines


def health_section(config: Config, node: str, volume: dict) -> dict:
    from slurm_scratch.health import latest

    found = latest.load()
    return {"time": found.time or None, "healthy": found.healthy if found.time else None, "last_healthy": found.last_healthy or None,
            "findings": [{"check": f.check, "healthy": f.healthy, "text": f.text} for f in found.findings]}


def health_lines(section: dict, now: float) -> list[str]:
    if section["time"] is None:
        return ["health:     no full health check since boot"]
    problems = [finding for finding in section["findings"] if not finding["healthy"]]
    if not problems:
        return [f"health:     ok ({_ago(section['time'], now)})"]
    since = f"; last healthy {_ago(section['last_healthy'], now)}" if section["last_healthy"] else ""
    return [f"health:     {len(problems)} problem(s) ({_ago(section['time'], now)}{since})"] + [f"  problem   {p['text']}" for p in problems]


def io_section(config: Config, node: str, volume: dict) -> dict:
    from slurm_scratch.health import io_errors

    if config.health.io_errors_window <= 0:
        return {"watched": False}
    state = io_errors.current()
    return {"watched": True, "sticky": f"/dev/{state.sticky}" if state.sticky else "", "since_boot": state.totals,
            "in_window": sum(io_errors.recent(state.events, time.monotonic(), config.health.io_errors_window).values()),
            "window_seconds": config.health.io_errors_window, "max": config.health.io_errors_max, "last": state.last}


def io_lines(section: dict, now: float) -> list[str]:
    if not section["watched"]:
        return ["io errors:  not watched ([health] io_errors_window = 0)"]
    if not section["since_boot"]:
        return ["io errors:  none in the kernel log since boot"]
    counts = ", ".join(f"{count} on {name}" for name, count in sorted(section["since_boot"].items()))
    lines = [f"io errors:  {counts} since boot; {section['in_window']} in the last {section['window_seconds']:g} s (drain past {section['max']})"]
    if section["sticky"]:
        lines.append(f"  sticky    I/O errors on {section['sticky']} (clear: slurm-scratch healthcheck --clear-io-errors)")
    if section["last"]:
        lines.append(f"  last      {section['last']}")
    return lines


def trash_section(config: Config, node: str, volume: dict) -> dict:
    from slurm_scratch import mounts
    from slurm_scratch.health.backlog import measure

    if mounts.find_mount(config.volume.mount_point) is None:
        return {"entries": None}
    backlog = measure(config, 2.0)
    if backlog.error:
        return {"entries": None, "error": backlog.error}
    return {"entries": backlog.entries, "bytes": backlog.bytes, "complete": backlog.complete}


def trash_lines(section: dict, now: float) -> list[str]:
    if section["entries"] is None:
        return [f"trash:      ({section.get('error') or 'volume not mounted'})"]
    more = "" if section["complete"] else " (at least: counting stopped at its time bound)"
    return [f"trash:      {section['entries']} entr{'y' if section['entries'] == 1 else 'ies'}, {size_text(section['bytes'])} waiting for the reaper{more}"]


def metrics_section(config: Config, node: str, volume: dict) -> dict:
    from slurm_scratch.layout import METRICS_FILE

    if not config.health.metrics_dir:
        return {"file": None}
    path = f"{config.health.metrics_dir}/{METRICS_FILE}"
    try:
        written = os.stat(path).st_mtime
    except OSError:
        written = None
    return {"file": path, "written": written, "age_seconds": None if written is None else max(0.0, time.time() - written)}


def metrics_lines(section: dict, now: float) -> list[str]:
    if section["file"] is None:
        return ["metrics:    off ([health] metrics_dir is empty)"]
    if section["written"] is None:
        return [f"metrics:    {section['file']}: not written yet"]
    return [f"metrics:    {section['file']}, written {_ago(section['written'], now)}"]


def kept_section(config: Config, node: str, volume: dict) -> dict | None:
    from slurm_scratch.jobs import kept

    return kept.report(config)


def kept_lines(section: dict, now: float) -> list[str]:
    problem = f" ({section['problem']})" if section.get("problem") else ""
    lines = [f"kept:       {len(section['dirs'])} in {section['area']}{problem}"]
    for entry in section["dirs"]:
        owner = entry["user"] if entry["uid"] is None else f"{entry['user']} (uid {entry['uid']})"
        until = "due now" if entry["due"] else f"until {entry['until']}"
        lines.append(f"  {entry['path']}  job {entry['job_id'] or '?'}  {owner}  kept {entry['kept_at'] or '?'}  {until}")
    return lines


def quota_section(config: Config, node: str, volume: dict) -> dict | None:
    """Each job directory's quota (None when [jobs] quota is off); read within a time bound."""
    from slurm_scratch.jobs import quota_use

    if config.jobs.quota[0] == "off":
        return None
    if not volume.get("mounted"):
        return {"dirs": [], "error": "volume not mounted"}
    use = quota_use.measure(config, node, 4.0)
    return {"dirs": [{"path": found.path, "job_id": found.job_id, "limit_bytes": found.limit_bytes, "used_bytes": found.used_bytes}
                     for found in use.dirs], "error": use.error}


def quota_lines(section: dict, now: float) -> list[str]:
    if section["error"]:
        return [f"quota:      ({section['error']})"]
    dirs = section["dirs"]
    used, limit = sum(entry["used_bytes"] for entry in dirs), sum(entry["limit_bytes"] for entry in dirs)
    lines = [f"quota:      {len(dirs)} job director{'y' if len(dirs) == 1 else 'ies'} with a quota, {size_text(used)} used of {size_text(limit)}"]
    for entry in dirs:
        share = f" ({100 * entry['used_bytes'] / entry['limit_bytes']:.0f}%)" if entry["limit_bytes"] else ""
        limit_text = size_text(entry["limit_bytes"]) if entry["limit_bytes"] else "none"
        lines.append(f"  {entry['path']}  job {entry['job_id']}  limit {limit_text}  used {size_text(entry['used_bytes'])}{share}")
    return lines


def tmp_disk_section(config: Config, node: str, volume: dict) -> dict | None:
    """slurm.conf's TmpFS and this node's TmpDisk beside the volume's size (None when slurm.conf
    cannot be read here, e.g. a configless node)."""
    from slurm_scratch import slurmconf
    from slurm_scratch.errors import ScratchError

    try:
        tmp = slurmconf.read(slurmconf.conf_path(config.slurm.slurm_conf), node)
    except (OSError, ScratchError):
        return None
    size = volume["size_bytes"] >> 20 if volume.get("mounted") and "size_bytes" in volume else None
    return {**tmp.as_dict(), "volume_mib": size, "warnings": slurmconf.warnings(tmp, config.volume.mount_point, size)}


def tmp_disk_lines(section: dict, now: float) -> list[str]:
    tmp_disk = "not a node in it" if section["tmp_disk_mib"] is None else f"TmpDisk={section['tmp_disk_mib']} MiB"
    size = f", volume {section['volume_mib']} MiB" if section["volume_mib"] is not None else ""
    lines = [f"tmpdisk:    TmpFS={section['tmp_fs']} {tmp_disk}{size} (node {section['node']}, {section['path']})"]
    return lines + [f"warning:    {warning}" for warning in section["warnings"]]


SECTIONS = [
    ("slurm", slurm_section, slurm_lines),
    ("tmp_disk", tmp_disk_section, tmp_disk_lines),  # slurm.conf's TmpFS/TmpDisk, when readable here
    ("health", health_section, health_lines),
    ("io_errors", io_section, io_lines),
    ("trash", trash_section, trash_lines),
    ("kept", kept_section, kept_lines),  # only when keeping is on or something is kept
    ("quota", quota_section, quota_lines),  # only when [jobs] quota is on
    ("metrics", metrics_section, metrics_lines),
]


def collect(config: Config, node: str) -> dict:
    report = volume_status.collect(config.volume)
    for name, section, _ in SECTIONS:
        shown = section(config, node, report)
        if shown is not None:
            report[name] = shown
    return report


def render(report: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [volume_status.render(report)]
    for name, _, section_lines in SECTIONS:
        if name in report:
            lines += section_lines(report[name], now)
    return "\n".join(lines)


def main(config: Config, as_json: bool, node: str) -> int:
    """`slurm-scratch status`: exit 0 when the volume is mounted."""
    report = collect(config, node)
    if as_json:
        import json

        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return EXIT_OK if report["state"] == "mounted" else EXIT_FAILURE
