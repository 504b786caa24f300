"""The metrics file for node_exporter's textfile collector: `[health] metrics_dir`/slurm_scratch.prom,
replaced by every health check (a full run or `--report-only`) when metrics_dir is set.

Made with prometheus_client (imported only here, only with metrics on: it costs the health check
tens of ms, and the per-job hooks nothing: they leave their figures in RUN_DIR, figures.py). The
file is written under a temporary name in the same directory, made world-readable (node_exporter
need not run as root), flushed to disk, then renamed over the old one: a reader sees the old file
or the new one, never half of one.

Names: one prefix, slurm_scratch_; base units (bytes, seconds); counters end in _total; no job ids.
  slurm_scratch_healthy                          1 when the latest check found no problem
  slurm_scratch_check_ok{check}                  per check that ran: 1 healthy, 0 a problem
  slurm_scratch_healthcheck_duration_seconds{part}   run (the whole check until the file), probe, kernel_log
  slurm_scratch_last_run_timestamp_seconds       when this file's check ran
  slurm_scratch_last_success_timestamp_seconds   when a check last found the volume healthy (since boot)
  slurm_scratch_volume_mounted                   1 when mounted at mount_point
  slurm_scratch_volume_size_bytes, _free_bytes, _inodes, _free_inodes   (statvfs; free = available to users)
  slurm_scratch_disks_expected, _present         member disks recorded by setup, and those present
  slurm_scratch_drained{reason}                  1 for the check whose problem the tool drained the node for
                                                  (reason: mount writable layers hung io statvfs probe errors other)
  slurm_scratch_hook_duration_seconds{hook}      histogram of Prolog and Epilog run times (since boot)
  slurm_scratch_hook_failures_total{hook}        Prolog and Epilog runs that exited non-zero
  slurm_scratch_trash_entries, slurm_scratch_trash_bytes   the reaper's backlog (bytes on disk)
  slurm_scratch_trash_scan_complete              0 when counting the bytes hit its time bound
  slurm_scratch_io_errors_total{disk}            kernel I/O errors counted per disk (since boot)
  slurm_scratch_io_errors_sticky                 1 while an "I/O errors on <disk>" finding holds
  slurm_scratch_kept_dirs                        failed jobs' directories in the kept area (keep_failed or quota on)
  slurm_scratch_quota_jobs, _quota_limit_bytes, _quota_used_bytes, _quota_jobs_over_90_percent
                                                  job directories with a quota, the sum of their limits and
                                                  of their use, those at 90% of their limit or more (quota on)
"""

from __future__ import annotations

import os

from slurm_scratch.config import Config
from slurm_scratch.health.backlog import Backlog
from slurm_scratch.health.findings import RANK, Finding
from slurm_scratch.health.hook_figures import BUCKETS, HookTotals
from slurm_scratch.layout import METRICS_FILE
from slurm_scratch.record import Record
from slurm_scratch.volume.state import VolumeRecord

PREFIX = "slurm_scratch_"
DRAIN_REASONS = (*RANK, "other")


class Figures(Record):
    """Everything the metrics file shows, gathered once per health check."""

    healthy: bool
    checks: tuple[tuple[str, bool], ...]  # (check, healthy) per check that ran
    last_run: float
    last_success: float  # 0: none since boot
    run_seconds: float
    probe_seconds: float | None
    kernel_log_seconds: float | None
    mounted: bool
    space: tuple[int, int, int, int] | None  # size_bytes, free_bytes, inodes, free_inodes
    disks_expected: int | None
    disks_present: int | None
    drained: str  # the check the tool's drain is for, "other", or "" (not drained by the tool)
    hooks: tuple[HookTotals, ...]
    backlog: Backlog | None
    io_errors: tuple[tuple[str, int], ...]  # (disk, errors since boot)
    io_sticky: bool | None  # None: the kernel log is not watched
    kept_dirs: int | None = None  # None: not read
    quota: tuple[int, int, int, int] | None = None  # jobs.quota_use.totals; None: quota off or not read


def per_check(findings: list[Finding]) -> tuple[tuple[str, bool], ...]:
    healthy: dict[str, bool] = {}
    for finding in findings:
        healthy[finding.check] = healthy.get(finding.check, True) and finding.healthy
    return tuple(healthy.items())


def space_of(findings: list[Finding]) -> tuple[int, int, int, int] | None:
    """From the statvfs finding's value: "blocks bavail files favail frsize"."""
    for finding in findings:
        parts = finding.value.split() if finding.check == "statvfs" else []
        if len(parts) == 5 and all(part.isdigit() for part in parts):
            blocks, bavail, files, favail, frsize = (int(part) for part in parts)
            return blocks * frsize, bavail * frsize, files, favail
    return None


def probe_seconds(findings: list[Finding]) -> float | None:
    for finding in findings:
        if finding.check == "probe" and finding.value:
            try:
                return float(finding.value) / 1000.0
            except ValueError:
                return None
    return None


def disks(record: VolumeRecord | None, sysfs: str = "/sys") -> tuple[int | None, int | None]:
    """(recorded member disks, those whose block device exists), or (None, None) without a record."""
    if record is None or not record.members:
        return None, None
    present = sum(1 for member in record.members
                  if member.path and os.path.exists(f"{sysfs}/class/block/{os.path.basename(os.path.realpath(member.path))}"))
    return len(record.members), present


def drained_for(drained_reason: str, problems: list[Finding], prefix: str) -> str:
    """Which check the tool's drain is for (bounded: DRAIN_REASONS), "" when the tool has not drained."""
    if not drained_reason:
        return ""
    for problem in problems:
        if drained_reason == f"{prefix} {problem.text}" and problem.check in RANK:
            return problem.check
    return "other"


# ---- the families (pure) ---------------------------------------------------------------------


def families(figures: Figures) -> list:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily | None:
        return None if value is None else GaugeMetricFamily(PREFIX + name, doc, value=float(value))

    found = [
        gauge("healthy", "1 when the latest health check found no problem with the scratch volume", figures.healthy),
        gauge("last_run_timestamp_seconds", "When the health check that wrote this file ran", figures.last_run),
        gauge("last_success_timestamp_seconds", "When a health check last found the volume healthy (0: not since boot)", figures.last_success),
        gauge("volume_mounted", "1 when the scratch volume is mounted at its mount point", figures.mounted),
        gauge("disks_expected", "Member disks the volume was built from (volume record)", figures.disks_expected),
        gauge("disks_present", "Recorded member disks whose block device is present", figures.disks_present),
    ]
    checks = GaugeMetricFamily(PREFIX + "check_ok", "Each health check's result: 1 healthy, 0 a problem", labels=["check"])
    for check, healthy in figures.checks:
        checks.add_metric([check], float(healthy))
    found.append(checks)
    durations = GaugeMetricFamily(PREFIX + "healthcheck_duration_seconds", "How long parts of the latest health check took", labels=["part"])
    for part, seconds in (("run", figures.run_seconds), ("probe", figures.probe_seconds), ("kernel_log", figures.kernel_log_seconds)):
        if seconds is not None:
            durations.add_metric([part], seconds)
    found.append(durations)
    if figures.space is not None:
        for name, doc, value in zip(("volume_size_bytes", "volume_free_bytes", "volume_inodes", "volume_free_inodes"),
                                    ("Size of the scratch filesystem", "Bytes available to users", "Inodes of the filesystem (0: no fixed limit)", "Inodes available to users"),
                                    figures.space):
            found.append(gauge(name, doc, value))
    drained = GaugeMetricFamily(PREFIX + "drained", "1 for the problem the tool has the node drained for", labels=["reason"])
    for reason in DRAIN_REASONS:
        drained.add_metric([reason], float(figures.drained == reason))
    found.append(drained)
    durations_hist = HistogramMetricFamily(PREFIX + "hook_duration_seconds", "Prolog and Epilog run times, since boot", labels=["hook"])
    failures = CounterMetricFamily(PREFIX + "hook_failures", "Prolog and Epilog runs that exited non-zero, since boot", labels=["hook"])
    for totals in figures.hooks:
        buckets = [(f"{bound:g}", float(count)) for bound, count in zip(BUCKETS, totals.buckets)] + [("+Inf", float(totals.runs))]
        durations_hist.add_metric([totals.hook], buckets, totals.seconds)
        failures.add_metric([totals.hook], float(totals.failures))
    if figures.hooks:
        found += [durations_hist, failures]
    if figures.backlog is not None:
        found += [gauge("trash_entries", "Entries in the trash waiting for the reaper", figures.backlog.entries),
                  gauge("trash_bytes", "Bytes on disk below the trash's entries", figures.backlog.bytes),
                  gauge("trash_scan_complete", "0 when counting the trash's bytes hit its time bound", figures.backlog.complete)]
    if figures.io_sticky is not None:
        errors = CounterMetricFamily(PREFIX + "io_errors", "Kernel I/O errors naming a member disk or the volume, since boot", labels=["disk"])
        for disk, count in figures.io_errors:
            errors.add_metric([disk], float(count))
        found += [errors, gauge("io_errors_sticky", "1 while an 'I/O errors on <disk>' finding holds the node", figures.io_sticky)]
    found.append(gauge("kept_dirs", "Failed jobs' directories in the kept area", figures.kept_dirs))
    if figures.quota is not None:
        for name, doc, value in zip(("quota_jobs", "quota_limit_bytes", "quota_used_bytes", "quota_jobs_over_90_percent"),
                                    ("Job directories with a quota", "Sum of the job directories' quota limits",
                                     "Sum of the bytes the job directories with a quota use", "Job directories using 90% of their quota or more"),
                                    figures.quota):
            found.append(gauge(name, doc, value))
    return [family for family in found if family is not None]


def render(figures: Figures) -> bytes:
    """The file's text, in Prometheus's text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    class Collector:
        def collect(self):
            return families(figures)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)


def write(directory: str, text: bytes) -> str:
    """Replace directory/slurm_scratch.prom with `text`: temporary file, 0644, fsync, rename."""
    path = f"{directory}/{METRICS_FILE}"
    temporary = f"{directory}/.{METRICS_FILE}.{os.getpid()}.tmp"  # not *.prom: the collector ignores it
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC  # a new file of ours, never one planted there
    try:
        fd = os.open(temporary, flags, 0o644)
    except FileExistsError:  # left by a run killed mid-write that had this PID
        os.unlink(temporary)
        fd = os.open(temporary, flags, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask
        view = memoryview(text)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    os.close(fd)
    os.replace(temporary, path)
    return path


# ---- one health check's metrics ---------------------------------------------------------------


def gather(config: Config, findings: list[Finding], run_seconds: float, kernel_log_seconds: float | None, last_success: float, now: float,
           node: str = "") -> Figures:
    from slurm_scratch.health import drain, hook_figures, io_errors
    from slurm_scratch.health.backlog import measure
    from slurm_scratch.health.findings import problems_of
    from slurm_scratch.health.recorded import recorded

    problems = problems_of(findings)
    checks = per_check(findings)
    mounted = dict(checks).get("mount", False)
    record = recorded(config)
    expected, present = disks(record)
    memory = drain.load_memory()
    hooks = hook_figures.load()[0]
    hung = any(problem.check == "hung" for problem in problems)
    backlog = measure(config, min(2.0, config.health.check_timeout)) if mounted and not hung else None
    backlog = backlog if backlog is None or not backlog.error else None  # not measured: left out
    io_state = io_errors.current() if config.health.io_errors_window > 0 else None
    names = io_errors.watched(record, None) if io_state is not None else {}
    use = None
    if mounted and not hung and (config.jobs.quota[0] != "off" or config.jobs.keep_failed):
        from slurm_scratch.jobs import quota_use

        use = quota_use.measure(config, node, min(2.0, config.health.check_timeout))
        use = use if not use.error else None  # not measured: left out
    return Figures(
        healthy=not problems, checks=checks, last_run=now, last_success=last_success, run_seconds=run_seconds,
        probe_seconds=probe_seconds(findings), kernel_log_seconds=kernel_log_seconds, mounted=bool(mounted),
        space=space_of(findings), disks_expected=expected, disks_present=present,
        drained=drained_for(memory.drained if memory is not None else "", problems, config.slurm.drain_prefix),
        hooks=tuple(hooks[hook] for hook in sorted(hooks)), backlog=backlog,
        io_errors=tuple(sorted((names.get(name, f"/dev/{name}"), count) for name, count in io_state.totals.items())) if io_state else (),
        io_sticky=bool(io_state.sticky) if io_state is not None else None,
        kept_dirs=use.kept if use is not None else None,
        quota=quota_use.totals(use.dirs) if use is not None and config.jobs.quota[0] != "off" else None,
    )
