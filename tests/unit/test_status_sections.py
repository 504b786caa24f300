"""`slurm-scratch status`'s sections beyond the volume (health/status.py), rendered from reports
as their collectors return them: Slurm as last told, the latest findings, kernel I/O errors, the
trash's backlog, the metrics file's age."""

from __future__ import annotations

from slurm_scratch.health import status

NOW = 1_000_000.0


def lines(name: str, section: dict) -> list[str]:
    render = next(section_lines for key, _, section_lines in status.SECTIONS if key == name)
    return render(section, NOW)


def test_slurm_as_last_told() -> None:
    assert lines("slurm", {"drained_by_tool": "", "last_finding": "", "last_told": None, "hook_finding": None}) == [
        "slurm:      not asked since boot (no health check has needed Slurm yet)"]
    drained = lines("slurm", {"drained_by_tool": "scratch: I/O errors on /dev/nvme1n1", "last_finding": "", "last_told": NOW - 120,
                              "hook_finding": {"hook": "prolog", "finding": "/scratch: cannot create", "time": NOW - 30}})
    assert drained == ["slurm:      drained by slurm-scratch: scratch: I/O errors on /dev/nvme1n1 (as of 2 min ago)",
                       "  pending   the prolog failed 30 s ago: /scratch: cannot create"]


def test_health_findings() -> None:
    assert lines("health", {"time": None}) == ["health:     no full health check since boot"]
    problems = {"time": NOW - 5, "healthy": False, "last_healthy": NOW - 7200, "findings": [
        {"check": "mount", "healthy": True, "text": "/scratch is ext4 on /dev/md127"},
        {"check": "io", "healthy": False, "text": "I/O errors on /dev/nvme1n1"}]}
    assert lines("health", problems) == ["health:     1 problem(s) (5 s ago; last healthy 2 h ago)", "  problem   I/O errors on /dev/nvme1n1"]


def test_io_errors_trash_and_metrics() -> None:
    io = {"watched": True, "sticky": "/dev/nvme1n1", "since_boot": {"nvme1n1": 14}, "in_window": 12, "window_seconds": 3600.0,
          "max": 10, "last": "I/O error, dev nvme1n1, sector 9"}
    assert lines("io_errors", io) == [
        "io errors:  14 on nvme1n1 since boot; 12 in the last 3600 s (drain past 10)",
        "  sticky    I/O errors on /dev/nvme1n1 (clear: slurm-scratch healthcheck --clear-io-errors)",
        "  last      I/O error, dev nvme1n1, sector 9"]
    assert lines("io_errors", {"watched": False}) == ["io errors:  not watched ([health] io_errors_window = 0)"]
    assert lines("trash", {"entries": 2, "bytes": 3 << 30, "complete": False}) == [
        "trash:      2 entries, 3.0 GiB waiting for the reaper (at least: counting stopped at its time bound)"]
    assert lines("metrics", {"file": None}) == ["metrics:    off ([health] metrics_dir is empty)"]
    assert lines("metrics", {"file": "/m/slurm_scratch.prom", "written": NOW - 90, "age_seconds": 90}) == [
        "metrics:    /m/slurm_scratch.prom, written 2 min ago"]
