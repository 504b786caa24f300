"""LVM's reports (pvs, vgs, lvs): one way to ask for them and one parser, for discovery, setup,
status and the health check.

Every report is read as `--noheadings --nameprefixes --unquoted` lines
(`LVM2_VG_NAME=vg.01 LVM2_PV_COUNT=2`): LVM names, tags, attributes and numbers hold no blanks, so
one split per line reads any report, and no reader pays for importing json (the health check asks
`lvs` on every run).
"""

from __future__ import annotations

from slurm_scratch import log, run

LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}  # slurmd and the hooks leak descriptors into us
REPORT_OPTIONS = ("--noheadings", "--nameprefixes", "--unquoted", "--config", "log/command_names=0")


def parse_report(text: str) -> list[dict[str, str]]:
    """The rows of a report, each {field: value} with the fields named as `-o` names them."""
    rows = []
    for line in text.splitlines():
        row = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key.startswith("LVM2_"):
                row[key[5:].lower()] = value
        if row:
            rows.append(row)
    return rows


def report(tool: str, fields: str, *args: str, timeout: float, readonly: bool = False) -> list[dict[str, str]] | None:
    """`tool -o fields args...` (pvs, vgs or lvs) as rows; None when the tool failed.

    `readonly` (the health check): `--readonly`, which takes no LVM lock, and rows are read even
    from a failed run that printed some (a VG with a missing disk), silently. Otherwise (discovery,
    setup) a failed run is logged and gives None. A timeout raises run.CommandError."""
    argv = [tool, *(["--readonly"] if readonly else []), *REPORT_OPTIONS, "-o", fields, *args]
    result = run.run(argv, timeout=timeout, check=False, quiet=True, env=LVM_ENV)
    if result.returncode == 0 or (readonly and result.stdout.strip()):
        return parse_report(result.stdout)
    if not readonly:
        log.warning(f"{tool} failed (exit {result.returncode}): {result.stderr.strip()}")
    return None


def tags(value: str) -> tuple[str, ...]:
    """A report's comma-separated tag list (vg_tags, lv_tags)."""
    return tuple(tag for tag in value.split(",") if tag)


def number(value: str | None) -> int:
    try:
        return int((value or "").strip() or 0)
    except ValueError:
        return 0
