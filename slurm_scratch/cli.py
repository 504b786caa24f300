"""Command line and hook entry points; thin: each command loads only the modules it needs.

`hook(name)` serves the executables in hooks/ (no argparse: the Prolog, Epilog and TaskProlog run
for every job). `main()` is the `slurm-scratch` console script and `python3 -m slurm_scratch`.
Exit codes: 0 ok, 1 failed (the message says why), 2 usage, 3 configuration error, 4 the job
environment from Slurm is invalid.
"""

from __future__ import annotations

import os
import sys

from slurm_scratch import log
from slurm_scratch.config import Config, load_config
from slurm_scratch.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError, ScratchError


def _node_name(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("SLURMD_NODENAME"):
        return os.environ["SLURMD_NODENAME"]
    return os.uname().nodename.split(".")[0]


def _volume_fault(config: Config, message: str) -> str:
    """Leave a hook's finding on a faulty volume for the next health check, which drains with its
    own reason (the hook itself never calls Slurm); the message, for the error the hook raises."""
    from slurm_scratch.health import entry

    entry.record_hook_finding(config, message)
    return message


def cmd_prolog(config_path: str | None) -> int:
    from slurm_scratch.jobs import job, jobdir

    config = load_config(config_path)
    context = job.from_slurm_env()
    try:
        try:
            jobdir.create(config, context)
        except jobdir.VolumeNotMounted as not_mounted:
            from slurm_scratch.volume import setup

            log.warning(f"prolog: {not_mounted}; running setup", job=context.job_id)
            try:
                setup.ensure_mounted(config)
            except ScratchError as exc:
                _volume_fault(config, str(exc))
                raise
            jobdir.create(config, context)  # a volume just mounted can hang or fail too: below
    except jobdir.VolumeHung as hung:  # frozen or dead
        _volume_fault(config, str(hung))
        raise
    except OSError as exc:  # mounted but broken (EROFS, EIO, ENOSPC)
        raise ScratchError(_volume_fault(
            config, f"{config.volume.mount_point}: cannot create the job directory: {exc.strerror or exc}")) from None
    return EXIT_OK


def cmd_epilog(config_path: str | None) -> int:
    """What the user did (a mount on the directory, an account gone from NSS, someone else's entry)
    never fails the Epilog; a faulty volume does, after recording the finding for the health check."""
    from slurm_scratch.jobs import job, jobdir

    config = load_config(config_path)
    context = job.for_epilog()
    try:
        jobdir.retire(config, context)
    except jobdir.VolumeHung as hung:  # frozen or dead
        _volume_fault(config, str(hung))
        raise
    except (OSError, ScratchError) as exc:  # EROFS, EIO, a trash that is not ours: the volume's fault
        raise ScratchError(_volume_fault(
            config, f"{config.volume.mount_point}: cannot retire the job directory: "
                    f"{getattr(exc, 'strerror', None) or exc}")) from None
    return EXIT_OK


def cmd_task_prolog(config_path: str | None) -> int:
    """Never fails the job: any problem becomes a `print` line in the job's output."""
    from slurm_scratch.jobs import job, jobdir

    log.configure(stderr=False)
    try:
        config = load_config(config_path)
        lines = jobdir.export_lines(config, job.for_current_user())
    except ScratchError as exc:
        lines = [f"print slurm-scratch: {line}" for line in str(exc).splitlines()]
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the job must still start
        lines = [f"print slurm-scratch: internal error, $SCRATCH not set: {exc!r}"]
        log.error(f"task-prolog: internal error: {exc!r}")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return EXIT_OK


def cmd_healthcheck(config_path: str | None, node: str | None = None, report_only: bool = False, clear_io_errors: bool = False) -> int:
    from slurm_scratch.health import entry

    config = load_config(config_path)
    if clear_io_errors:
        from slurm_scratch.health import io_errors

        cleared = io_errors.clear()
        log.info(f"healthcheck: cleared {cleared} (--clear-io-errors)")
        print(f"cleared: {cleared}")
    return entry.main(config, _node_name(node), report_only)


def cmd_setup(config_path: str | None, dry_run: bool = False) -> int:
    from slurm_scratch.volume import setup

    config = load_config(config_path)
    was_mounted = os.path.ismount(config.volume.mount_point)
    status = setup.setup_main(config, dry_run)
    if status == EXIT_OK and not dry_run and not was_mounted:
        from slurm_scratch.health import drain

        drain.slurmd_measures_the_volume(config)
    return status


def cmd_status(config_path: str | None, as_json: bool = False) -> int:
    from slurm_scratch.health import status

    return status.main(load_config(config_path), as_json, _node_name())


def cmd_reap(config_path: str | None) -> int:
    from slurm_scratch.jobs import trash
    from slurm_scratch.layout import TRASH_NAME

    config = load_config(config_path)
    deleted = trash.reap(config, wait=True)
    print(f"reaped {deleted} trash entr{'y' if deleted == 1 else 'ies'}")
    left = trash.trash_entries(config)
    if left:
        raise ScratchError(f"{len(left)} left in {config.volume.mount_point}/{TRASH_NAME} (the log says why): {', '.join(left)}")
    return EXIT_OK


def cmd_sweep(config_path: str | None, node: str | None = None) -> int:
    from slurm_scratch.health import slurm
    from slurm_scratch.jobs import sweep, trash

    config = load_config(config_path)
    node = _node_name(node)
    report = sweep.sweep(config, node, slurm.running_jobs(config, node))
    for path in report.unattributed:
        print(f"left alone (not a job directory of this tool): {path}")
    print(
        f"swept {len(report.retired)} orphaned job directories; kept {len(report.running)} of running jobs "
        f"and {len(report.young)} younger than {config.jobs.sweep_guard:g} s; {len(report.unattributed)} left alone"
    )
    trash.reap(config, wait=True)
    return EXIT_OK


def cmd_check_config(config_path: str | None) -> int:
    from slurm_scratch.config import render

    config: Config = load_config(config_path)
    sys.stdout.write(render(config))
    _warn_about_slurm_conf(config)
    return EXIT_OK


def _warn_about_slurm_conf(config: Config) -> None:
    """check-config's warnings (exit 0) when slurm.conf's TmpFS/TmpDisk do not fit the volume."""
    from slurm_scratch import slurmconf

    path = slurmconf.conf_path(config.slurm.slurm_conf)
    try:
        tmp = slurmconf.read(path, _node_name())
        problems = slurmconf.warnings(tmp, config.volume.mount_point, slurmconf.volume_mib(config.volume.mount_point))
    except OSError as exc:
        problems = [f"{path}: cannot read it ({exc.strerror}): TmpFS and TmpDisk not checked"]
    except ScratchError as exc:
        problems = [str(exc)]
    for problem in problems:
        sys.stderr.write(f"warning: {problem}\n")


HOOK_COMMANDS = {
    "prolog": cmd_prolog,
    "epilog": cmd_epilog,
    "task_prolog": cmd_task_prolog,
    "healthcheck": cmd_healthcheck,
}


def _guarded(name: str, call) -> int:
    try:
        return call()
    except ConfigError as exc:
        for problem in exc.problems:
            log.error(f"{name}: configuration: {problem}")
        return exc.exit_code
    except ScratchError as exc:
        log.error(f"{name}: {exc}")
        return exc.exit_code
    except OSError as exc:  # not foreseen by the code above: still one clear line, not a traceback
        log.error(f"{name}: unexpected error: {exc}")
        return EXIT_FAILURE


def hook(name: str, started: float | None = None) -> int:
    """Entry point of hooks/<name>, as slurm.conf runs it (empty environment, no arguments).
    `started`: time.monotonic() when the hook's interpreter began (for the Prolog's and Epilog's figures)."""
    if name not in HOOK_COMMANDS:
        sys.stderr.write(f"slurm-scratch: unknown hook {name!r} (expected one of {', '.join(HOOK_COMMANDS)})\n")
        return EXIT_USAGE
    log.configure(f"slurm-scratch-{name.replace('_', '-')}", stderr=name != "task_prolog")
    timer = log.Timer()
    status = _guarded(name, lambda: HOOK_COMMANDS[name](None))
    _record_figure(name, timer, started, status)
    return status


def _record_figure(name: str, timer: log.Timer, started: float | None, status: int) -> None:
    """The Prolog's and Epilog's figures for the metrics (figures.py: nothing when metrics are off)."""
    if name not in ("prolog", "epilog"):  # figures.HOOKS: the TaskProlog and the health check do not import it
        return
    from slurm_scratch.layout import HOOK_FIGURES

    if not os.path.exists(HOOK_FIGURES):  # metrics off (the file exists only while they are on): no import
        return
    from slurm_scratch import figures

    figures.record(name, timer.ms() + ((timer.start - started) * 1000.0 if started is not None else 0.0), status)


def _parser():
    import argparse

    parser = argparse.ArgumentParser(prog="slurm-scratch", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE", help="config file (default: $SLURM_SCRATCH_CONF or /etc/slurm-scratch/slurm-scratch.conf)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    setup = commands.add_parser("setup", help="build and mount the scratch volume (idempotent)")
    setup.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    commands.add_parser("prolog", help="create the job's directory (Slurm Prolog)")
    commands.add_parser("epilog", help="retire the job's directory (Slurm Epilog)")
    commands.add_parser("task-prolog", help="print export lines for the job's tasks (Slurm TaskProlog)")
    health = commands.add_parser("healthcheck", help="check the volume; drain or resume the node")
    health.add_argument("--node", help="Slurm node name (default: $SLURMD_NODENAME or the short host name)")
    health.add_argument("--report-only", action="store_true", help="check and report only: no drain, resume or clean-up (for NHC, cron)")
    health.add_argument("--clear-io-errors", action="store_true", help="forget the kernel I/O errors counted so far (and a sticky 'I/O errors on <disk>' finding), then check")
    status = commands.add_parser("status", help="show disks, volume, space, Slurm state, health, I/O errors, trash, metrics")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("reap", help="empty the trash now")
    sweep = commands.add_parser("sweep", help="retire directories of jobs that no longer run here")
    sweep.add_argument("--node", help="Slurm node name (default: $SLURMD_NODENAME or the short host name)")
    commands.add_parser("check-config", help="validate the config file and print the effective configuration")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure(f"slurm-scratch-{args.command}", stderr=args.command != "task-prolog")
    calls = {
        "setup": lambda: cmd_setup(args.config, args.dry_run),
        "prolog": lambda: cmd_prolog(args.config),
        "epilog": lambda: cmd_epilog(args.config),
        "task-prolog": lambda: cmd_task_prolog(args.config),
        "healthcheck": lambda: cmd_healthcheck(args.config, args.node, args.report_only, args.clear_io_errors),
        "status": lambda: cmd_status(args.config, args.json),
        "reap": lambda: cmd_reap(args.config),
        "sweep": lambda: cmd_sweep(args.config, args.node),
        "check-config": lambda: cmd_check_config(args.config),
    }
    timer = log.Timer()
    status = _guarded(args.command, calls[args.command])
    _record_figure(args.command, timer, None, status)
    return status
