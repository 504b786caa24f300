"""The volume's part of `slurm-scratch status` (health/status.py): disks found and skipped (with
why), backend, volume state, filesystem, mount, size and free space. Read-only."""

from __future__ import annotations

import os

from slurm_scratch.config import VolumeConfig
from slurm_scratch.errors import ScratchError


def _disk(disk) -> dict:
    return {"path": disk.path, "model": disk.model, "serial": disk.serial, "size_bytes": disk.size_bytes, "by_id": list(disk.by_id)}


def collect(volume: VolumeConfig) -> dict:
    from slurm_scratch.volume.setup import make_plan

    report: dict = {"mount_point": volume.mount_point, "devices": " ".join(volume.devices)}
    try:
        discovery, observed, plan = make_plan(volume)
    except ScratchError as exc:
        report.update(state="error", error=str(exc), disks=[], skipped=[], not_selected=[], backend=volume.backend, mounted=False)
        return report
    report["selector"] = discovery.selector
    report["disks"] = [{**_disk(c.disk), "ours": c.ours, "will_wipe": c.wipe,
                        "signature": c.signature.describe() if c.signature else ""} for c in discovery.candidates]
    report["skipped"] = [{**_disk(s.disk), "reason": s.reason} for s in discovery.skipped]
    report["not_selected"] = [{**_disk(s.disk), "reason": s.reason} for s in discovery.not_selected]
    report["backend"] = plan.backend
    report["members"] = [disk.path for disk in plan.members]
    report["notes"] = list(plan.notes)
    mount = observed.mount
    report["mounted"] = mount is not None
    if mount is not None:
        report["device"] = mount.source
        report["filesystem"] = mount.fstype
        try:
            st = os.statvfs(volume.mount_point)
            report["size_bytes"] = st.f_blocks * st.f_frsize
            report["free_bytes"] = st.f_bavail * st.f_frsize
            report["inodes"] = st.f_files
            report["free_inodes"] = st.f_favail
        except OSError as exc:
            report["error"] = f"statvfs {volume.mount_point}: {exc.strerror}"
    else:
        report["device"] = plan.device
        report["filesystem"] = plan.fstype
    if plan.failure:
        report["state"] = plan.state if plan.state == "degraded" else "error"
        report["error"] = plan.failure
    elif mount is not None and plan.state == "mounted":
        report["state"] = "mounted"
    else:
        report["state"] = "not mounted"
    report["setup_would"] = plan.lines()
    report["recorded"] = observed.recorded.as_json() if observed.recorded is not None else None
    return report


def size_text(value: int) -> str:
    number = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if number < 1024 or unit == "PiB":
            return f"{number:.1f} {unit}" if unit != "B" else f"{int(number)} B"
        number /= 1024
    return str(value)


def render(report: dict) -> str:
    lines = [f"volume:     {report['mount_point']}: {report['state']}"]
    if report.get("error"):
        lines.append(f"problem:    {report['error']}")
    lines.append(f"backend:    {report.get('backend', '?')}" + (f" ({len(report.get('members', []))} disk(s))" if report.get("members") else ""))
    if report.get("device"):
        lines.append(f"device:     {report['device']}" + (f" ({report['filesystem']})" if report.get("filesystem") else ""))
    if "size_bytes" in report:
        inodes = f" ({report['free_inodes']} of {report['inodes']} inodes free)" if report.get("inodes") else ""
        lines.append(f"size:       {size_text(report['size_bytes'])}, free {size_text(report['free_bytes'])}{inodes}")
    lines.append(f"devices:    {report.get('devices')} -> {report.get('selector', '?')}")
    for disk in report.get("disks", []):
        extra = "ours" if disk["ours"] else ("will be wiped: " + disk["signature"] if disk["will_wipe"] else (disk["signature"] or "blank"))
        lines.append(f"  found     {disk['path']}  {size_text(disk['size_bytes'])}  {disk['model'] or '-'}  {disk['serial'] or '-'}  [{extra}]")
    for disk in report.get("skipped", []):
        lines.append(f"  skipped   {disk['path']}  {disk['model'] or '-'}  {disk['serial'] or '-'}: {disk['reason']}")
    for disk in report.get("not_selected", []):
        lines.append(f"  not used  {disk['path']}: {disk['reason']}")
    for note in report.get("notes", []):
        lines.append(f"note:       {note}")
    if report.get("setup_would"):
        lines.append("setup would:")
        lines.extend(f"  {line}" for line in report["setup_would"])
    return "\n".join(lines)
