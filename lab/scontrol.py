"""Reading what Slurm's client commands print: one parser per output, for every builder.

Standard library only: the VM guest imports it.
"""
from __future__ import annotations

import re

TERMINAL_JOB_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
})

_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=")


def parse_record(text: str) -> dict[str, str]:
    """Split one `scontrol show -o` line into Key=Value pairs (values may contain spaces)."""
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(text))
    for this, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following else len(text)
        fields[this.group(1)] = text[this.end():end].strip()
    return fields


def first_record(stdout: str) -> dict[str, str]:
    """The first record of `scontrol show -o ...` output ({} when it printed nothing)."""
    return parse_record(stdout.splitlines()[0] if stdout.strip() else "")


def sinfo_reason_argv(node: str) -> list[str]:
    """`sinfo -R` for one node, its reason only (for nodes drained, down or failed)."""
    return ["sinfo", "-R", "-h", "-N", "-n", node, "-o", "%E"]


def sinfo_any_reason_argv(node: str) -> list[str]:
    """`sinfo` for one node, its reason whatever its state (`-R` lists drained, down and failed
    nodes only)."""
    return ["sinfo", "-h", "-N", "-n", node, "-o", "%E"]


def parse_sinfo_reason(stdout: str) -> str:
    """The reason `sinfo_reason_argv` printed ('' when the node has none)."""
    lines = stdout.splitlines()
    text = lines[0].strip() if lines else ""
    return "" if text == "none" else text


def parse_sdiag_by_message_type(stdout: str) -> dict[str, int]:
    """`sdiag`: RPC counts by message type received by slurmctld, e.g. {'REQUEST_NODE_INFO': 12}."""
    section = stdout.split("Remote Procedure Call statistics by message type", 1)[1]
    section = section.split("Remote Procedure Call statistics by user", 1)[0]
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", section, re.M)}


def parse_sdiag_by_user(stdout: str) -> dict[str, int]:
    """`sdiag`: RPC counts by user name."""
    section = stdout.split("Remote Procedure Call statistics by user", 1)[1]
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"^\s*(\S+)\s+\(\s*\d+\)\s+count:(\d+)", section, re.M)}
