"""The health check's run: the check lock, the checks, the exchange with Slurm (drain.reconcile),
then the housekeeping under its own lock; and the hooks' way to record a finding for it.

The locking rules and the worst-case bounds are in the health package's docstring.
"""

from __future__ import annotations

import os

from slurm_scratch import log, mounts
from slurm_scratch.config import Config
from slurm_scratch.errors import EXIT_FAILURE, EXIT_OK, ScratchError
from slurm_scratch.health.checks import run_checks
from slurm_scratch.health.findings import Finding, problems_of
from slurm_scratch.health.outputs import io_findings, record_run, write_metrics
from slurm_scratch.layout import HEALTH_LOCK as LOCK_FILE
from slurm_scratch.layout import HOUSEKEEPING_LOCK

LOCK_SLACK_SECONDS = 5.0  # over the holder's bound: process start, imports, /proc and /sys reads


def record_hook_finding(config: Config | None, finding: str, hook: str | None = None) -> None:
    """Remember why a Prolog or Epilog failed on a broken volume, for the next health check's
    drain reason (no Slurm call). `hook` defaults to what SLURM_SCRIPT_CONTEXT says."""
    from slurm_scratch.health import drain

    if hook is None:
        hook = os.environ.get("SLURM_SCRIPT_CONTEXT", "").partition("_")[0]
        hook = hook if hook in ("prolog", "epilog") else ""
    try:
        drain.record_hook_finding(finding, hook=hook)
    except OSError as exc:
        log.error(f"{hook or 'hook'}: cannot record the finding in {drain.HOOK_FILE}: {exc.strerror}")


def checks_bound(config: Config) -> float:
    """The longest `run_checks` may take: statvfs then the probe in the child (lvs runs meanwhile,
    under check_timeout)."""
    return config.health.check_timeout + config.health.probe_timeout


def lock_wait_bound(config: Config) -> float:
    """How long a full run waits for another's check lock: what that one's checks and Slurm calls
    (at most four [slurm] timeouts: `scontrol --version` for `api = auto` with pyslurm, show,
    slurmd's TmpFS measured again before a resume, update) may take."""
    return checks_bound(config) + 4 * config.slurm.timeout + LOCK_SLACK_SECONDS


def _check_and_print(config: Config, repair: bool, save: bool = True) -> list[Finding]:
    """Run the checks (and the repair when asked and nothing is mounted); print; all the findings.
    `save`: the kernel I/O error check keeps its cursor and counts (not with --report-only)."""
    try:
        findings = run_checks(config, meanwhile=lambda: io_findings(config, save))
    except OSError as exc:  # of this process (no fork, no /proc): not a finding about the volume
        raise ScratchError(f"cannot run the checks: {exc}") from None
    problems = problems_of(findings)
    if problems and repair and mounts.find_mount(config.volume.mount_point) is None:
        from slurm_scratch.volume import setup

        log.warning(f"healthcheck: {problems[0].text}; repairing ([health] repair = yes)")
        try:
            setup.ensure_mounted(config)
        except ScratchError as exc:
            log.error(f"healthcheck: repair failed: {exc}")
        io = [finding for finding in findings if finding.check == "io"]  # the kernel log is read once
        findings = run_checks(config) + io
    problems = problems_of(findings)
    if problems:
        print("\n".join(problem.text for problem in problems))
    else:
        print("ok: " + "; ".join(finding.text for finding in findings))
    return findings


def _short_of_space_only(problems: list[Finding]) -> bool:
    """A volume whose only fault is too little free space or inodes is otherwise healthy: with
    failed jobs' directories kept, its housekeeping is what gives the space back (kept directories
    go early), so it runs there too and the next check resumes the node."""
    return all(problem.check == "statvfs" or (problem.check == "probe" and "No space left" in problem.text) for problem in problems)


def main(config: Config, node: str, report_only: bool = False) -> int:
    """`report_only`: check and print, never wait for another health check, never drain, resume,
    repair or clean up (for NHC or cron)."""
    from slurm_scratch import locks
    from slurm_scratch.health import drain

    timer = log.Timer()
    if report_only:
        findings = _check_and_print(config, repair=False, save=False)
        write_metrics(config, findings, timer, node)
        return EXIT_FAILURE if problems_of(findings) else EXIT_OK
    wait = lock_wait_bound(config)
    lock_fd = locks.acquire(LOCK_FILE, wait)
    if lock_fd is None:
        log.warning(f"healthcheck: another health check has held {LOCK_FILE} for over {wait:g} s: checking and reporting only")
        findings = _check_and_print(config, repair=False, save=False)
        write_metrics(config, findings, timer, node)
        return EXIT_FAILURE if problems_of(findings) else EXIT_OK
    try:
        findings = _check_and_print(config, config.health.repair)
        problems = problems_of(findings)
        try:
            drain.reconcile(config, node, problems[0].text if problems else None, check=problems[0].check if problems else "")
        except ScratchError as exc:
            log.error(f"healthcheck: could not update the node's state in Slurm: {exc}")
        record_run(config, findings)
    finally:
        os.close(lock_fd)
    if (not problems or (config.jobs.keep_failed and _short_of_space_only(problems))) and config.health.housekeeping_seconds > 0:
        housekeeping_fd = locks.acquire(HOUSEKEEPING_LOCK)
        if housekeeping_fd is None:
            log.info("healthcheck: another health check is doing the housekeeping; skipped")
        else:
            from slurm_scratch.health.housekeeping import housekeeping

            try:
                housekeeping(config, node, config.health.housekeeping_seconds)
            finally:
                os.close(housekeeping_fd)
    write_metrics(config, findings, timer, node)
    if problems:
        log.warning(f"healthcheck: {len(problems)} problem(s): {problems[0].text}", ms=timer.ms())
    return EXIT_FAILURE if problems else EXIT_OK
