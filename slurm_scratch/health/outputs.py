"""What a health check leaves for operators after its checks: the latest findings (for `status`),
the hooks' figures folded into totals, and the metrics file; and the kernel I/O error check,
timed, which the checks of health/checks.py are joined by.

A full run records and folds under the check lock (`record_run`), and writes the metrics after
its housekeeping (`write_metrics`, so that the trash's backlog is what housekeeping left);
`--report-only` only writes the metrics. None of it fails the health check: a problem is logged.
"""

from __future__ import annotations

import time

from slurm_scratch import log
from slurm_scratch.config import Config
from slurm_scratch.health.findings import Finding


def io_findings(config: Config, save: bool) -> list[Finding]:
    """The kernel I/O error finding (none when [health] io_errors_window = 0); its value: the ms
    reading the kernel log took. `save`: advance the cursor and keep the counts (full runs)."""
    if config.health.io_errors_window <= 0:
        return []
    from slurm_scratch.health import io_errors
    from slurm_scratch.health.recorded import recorded

    timer = log.Timer()
    try:
        finding = io_errors.check(config, recorded(config), save_state=save)
    except OSError as exc:  # the state file: not a finding about the volume
        log.error(f"healthcheck: kernel I/O errors not checked: {exc}")
        return []
    return [finding.replace(value=f"{timer.ms():.3f}")] if finding is not None else []


def record_run(config: Config, findings: list[Finding]) -> None:
    """A full run's record (under the check lock): the latest findings, the hooks' figures."""
    from slurm_scratch.health import hook_figures, latest

    try:
        latest.save(findings, time.time())
        if config.health.metrics_dir:
            hook_figures.fold()
        else:
            hook_figures.stop()
    except OSError as exc:
        log.error(f"healthcheck: cannot record this run in /run/slurm-scratch: {exc}")


def write_metrics(config: Config, findings: list[Finding], timer: log.Timer, node: str = "") -> None:
    """Replace the metrics file, when [health] metrics_dir is set."""
    if not config.health.metrics_dir:
        return
    from slurm_scratch.health import latest

    now = time.time()
    healthy = all(finding.healthy for finding in findings)
    try:
        from slurm_scratch.health import metrics

        last = latest.load()
        last_success = now if healthy else last.last_healthy
        io_ms = next((finding.value for finding in findings if finding.check == "io" and finding.value), None)
        figures = metrics.gather(config, findings, timer.ms() / 1000.0, float(io_ms) / 1000.0 if io_ms else None, last_success, now, node)
        metrics.write(config.health.metrics_dir, metrics.render(figures))
    except ImportError as exc:
        log.error(f"healthcheck: no metrics: prometheus_client is missing ({exc})")
    except OSError as exc:
        log.error(f"healthcheck: cannot write the metrics file in {config.health.metrics_dir}: {exc}")
