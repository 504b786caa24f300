"""Load and validate /etc/slurm-scratch/slurm-scratch.conf into frozen records.

The file is an INI subset: `[section]` headers, `key = value` lines, whole-line `#`/`;` comments.
It is parsed here rather than by configparser because the Prolog reads it for every job and
configparser imports `re`, a cost the hooks' budget has no room for (bench/); the subset also makes mistakes loud: an unknown
section or key, a duplicate key, or a line that is neither is an error naming file, line and key.
Every problem in the file is reported at once, not just the first.
"""

from __future__ import annotations

import os
import stat

from slurm_scratch.errors import ConfigError
from slurm_scratch.record import Record

DEFAULT_PATH = "/etc/slurm-scratch/slurm-scratch.conf"
ENV_VAR = "SLURM_SCRATCH_CONF"


class VolumeConfig(Record):
    mount_point: str
    devices: tuple[str, ...]  # ("auto",), ("aws",), ("gcp",), ("azure",) or absolute paths/globs
    backend: str
    filesystem: str
    mount_options: str
    mount_mode: int
    vg_name: str
    lv_name: str
    md_name: str
    stripe_kb: int
    label: str
    wipe: bool
    on_degraded: str
    command_timeout: float
    quotas: bool = False  # [jobs] quota is on: setup makes and mounts the filesystem with quota support


class JobsConfig(Record):
    dir: str  # absolute pattern below mount_point, with %j (last component), %u, %n, %%
    mode: int
    export: tuple[str, ...]
    kill_processes: bool
    sweep_guard: float
    reaper_max_seconds: float
    fs_timeout: float  # seconds the Prolog's work on the volume may take (a frozen disk)
    keep_failed: float  # seconds a failed job's directory is kept (0: not kept, the trash as for any job)
    keep_reclaim_free_percent: float  # kept directories go early while free space/inodes are under this
    quota: tuple  # ("off", 0), ("bytes", n), ("percent", p) or ("request", 0)
    quota_default: tuple  # ("bytes", n) or ("percent", p): for jobs that asked for nothing
    quota_project_ids: tuple  # (first, last): the ext4/xfs project ids the tool may use
    quota_query_timeout: float  # seconds `quota = request` waits for Slurm before using quota_default
    quota_gres: tuple  # ("", 0) off, or (GRES name, bytes per count): quota = request follows that GRES


class HealthConfig(Record):
    probe_timeout: float
    check_timeout: float
    min_free_percent: float
    min_free_inodes_percent: float
    repair: bool
    housekeeping_seconds: float
    metrics_dir: str  # "" = no metrics file
    io_errors_max: int
    io_errors_window: float  # seconds; 0 = the kernel log is not read


class SlurmConfig(Record):
    drain_prefix: str
    api: str
    scontrol: str
    squeue: str
    slurm_conf: str  # "" = $SLURM_CONF, else /etc/slurm/slurm.conf
    timeout: float


class Config(Record):
    path: str  # the file read, or "" when the default file does not exist (all defaults)
    volume: VolumeConfig
    jobs: JobsConfig
    health: HealthConfig
    slurm: SlurmConfig
    effective: tuple[tuple[str, str, str, bool], ...]  # (section, key, value, from_file)


# ---- value parsers: each returns the value or raises ValueError saying what is wrong ----------

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
_ENV_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _no_space(value: str) -> str:
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    return value


def parse_abs_path(value: str) -> str:
    _no_space(value)
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    if value != "/" and value.endswith("/"):
        value = value.rstrip("/")
    if os.path.normpath(value) != value or "/../" in value + "/":
        raise ValueError("must be a normalised path (no '.', '..' or '//')")
    return value


def parse_mount_point(value: str) -> str:
    value = parse_abs_path(value)
    if value == "/":
        raise ValueError("must not be /")
    return value


def parse_optional_path(value: str) -> str:
    return parse_abs_path(value) if value else ""


def parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def parse_mode(value: str) -> int:
    if not value or len(value) > 4 or any(ch not in "01234567" for ch in value):
        raise ValueError("must be an octal mode such as 0700 or 1777")
    return int(value, 8)


def _bounded(convert, kind: str, minimum: float, maximum: float):
    """A parser of a `kind` ("whole number", "number") between minimum and maximum (NaN never is)."""
    def parse(value: str):
        try:
            parsed = convert(value)
        except ValueError:
            raise ValueError(f"must be a {kind}") from None
        if not minimum <= parsed <= maximum:
            raise ValueError(f"must be between {minimum:g} and {maximum:g}")
        return parsed

    return parse


def integer(minimum: int, maximum: int):
    return _bounded(int, "whole number", minimum, maximum)


def number(minimum: float, maximum: float):
    return _bounded(float, "number", minimum, maximum)


def choice(*options: str):
    def parse(value: str) -> str:
        if value.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value.lower()

    return parse


def name(max_length: int):
    def parse(value: str) -> str:
        if not value or len(value) > max_length or value[0] == "-" or not set(value) <= _NAME_CHARS:
            raise ValueError(f"must be 1-{max_length} characters of A-Z a-z 0-9 . _ + - (not starting with -)")
        return value

    return parse


def parse_env_names(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names:
        raise ValueError("must name at least one environment variable")
    for env_name in names:
        if not set(env_name) <= _ENV_CHARS or env_name[0].isdigit():
            raise ValueError(f"{env_name!r} is not a valid environment variable name")
    return names


def parse_devices(value: str) -> tuple[str, ...]:
    parts = tuple(value.replace(",", " ").split())
    if not parts:
        raise ValueError("must be auto, aws, gcp, azure, or device paths/globs")
    if len(parts) == 1 and parts[0].lower() in ("auto", "aws", "gcp", "azure"):
        return (parts[0].lower(),)
    for part in parts:
        if not part.startswith("/dev/") or "/../" in part + "/":
            raise ValueError(f"{part!r}: explicit devices must be paths or globs under /dev/ (or auto, aws, gcp, azure)")
    return parts


def parse_mount_options(value: str) -> str:
    _no_space(value)
    if not value or any(not option for option in value.split(",")):
        raise ValueError("must be a comma-separated list of mount options")
    return value


def parse_prefix(value: str) -> str:
    if not value or len(value) > 32 or any(ord(ch) < 32 or ch in "\"'\\" for ch in value):
        raise ValueError("must be 1-32 printable characters without quotes or backslashes")
    return value


def parse_text(value: str) -> str:
    return _no_space(value)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(maximum: float):
    """A parser of `0` or a number with a unit: `90s`, `30m`, `24h`, `7d` (a bare number other than
    0 is refused: seconds or hours?), at most `maximum` seconds."""
    def parse(value: str) -> float:
        if value == "0":
            return 0.0
        unit = _DURATION_UNITS.get(_no_space(value)[-1:].lower())
        try:
            if unit is None:
                raise ValueError
            seconds = float(value[:-1]) * unit
        except ValueError:
            raise ValueError("must be 0 or a duration with a unit, such as 90s, 30m, 24h or 7d") from None
        if not 0 <= seconds <= maximum:
            raise ValueError(f"must be between 0 and {maximum / 86400:g}d")
        return seconds

    return parse


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size_or_percent(value: str) -> tuple:
    """`512M`, `50G`, `2T` (binary units; a bare number is bytes) or `N%` of the volume."""
    if value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            raise ValueError("must be a size such as 512M or 50G, or a percentage such as 10%") from None
        if not 0 < percent <= 100:
            raise ValueError("a percentage must be above 0 and at most 100")
        return ("percent", percent)
    number, unit = (value[:-1], value[-1].upper()) if value[-1:].isalpha() else (value, "")
    if unit not in _SIZE_UNITS or not number.isdigit() or len(number) > 19:
        raise ValueError("must be a size such as 512M or 50G (units K, M, G, T), or a percentage such as 10%")
    size = int(number) * _SIZE_UNITS[unit]
    if not 1 << 20 <= size < 1 << 60:
        raise ValueError("must be at least 1M")
    return ("bytes", size)


def parse_quota(value: str) -> tuple:
    lowered = value.lower()
    if lowered in ("off", "no", "0"):
        return ("off", 0)
    if lowered == "request":
        return ("request", 0)
    try:
        return parse_size_or_percent(value)
    except ValueError as exc:
        raise ValueError(f"must be off, request, or {str(exc).removeprefix('must be ')}") from None


def parse_quota_gres(value: str) -> tuple[str, int]:
    """Empty (off), or `<gres name>:<size per count>` such as `tmpdisk:1G`."""
    if not value:
        return ("", 0)
    gres, colon, size = value.partition(":")
    if not colon or not gres or not set(gres) <= _NAME_CHARS:
        raise ValueError("must be empty or a GRES name and the size one count stands for, such as tmpdisk:1G")
    kind, amount = parse_size_or_percent(size)
    if kind != "bytes":
        raise ValueError("the size one count stands for must be a size such as 1G, not a percentage")
    return (gres, amount)


def parse_id_range(value: str) -> tuple[int, int]:
    first, dash, last = value.partition("-")
    if not dash or not first.isdigit() or not last.isdigit() or len(first) > 10 or len(last) > 10:
        raise ValueError("must be a range of ids such as 2000000-2999999")
    if not 1 <= int(first) <= int(last) < (1 << 32) - 1:
        raise ValueError("must be ascending ids between 1 and 4294967294")
    return (int(first), int(last))


# ---- the schema: every key, its parser and its default (as it would be written in the file) ----

SCHEMA: dict[str, dict[str, tuple[object, str]]] = {
    "volume": {
        "mount_point": (parse_mount_point, "/scratch"),
        "devices": (parse_devices, "auto"),
        "backend": (choice("lvm", "mdadm", "single", "btrfs", "auto"), "lvm"),
        "filesystem": (choice("ext4", "xfs", "btrfs"), "ext4"),
        "mount_options": (parse_mount_options, "noatime,nodiratime"),
        "mount_mode": (parse_mode, "1777"),
        "vg_name": (name(64), "vg.01"),
        "lv_name": (name(64), "lv_ephemeral"),
        "md_name": (name(32), "scratch"),
        "stripe_kb": (integer(4, 4096), "64"),
        "label": (name(12), "scratch"),
        "wipe": (parse_bool, "no"),
        "on_degraded": (choice("fail", "rebuild"), "fail"),
        "command_timeout": (number(1, 86400), "600"),
    },
    "jobs": {
        "dir": (parse_text, "job_%j"),
        "mode": (parse_mode, "0700"),
        "export": (parse_env_names, "SCRATCH"),
        "kill_processes": (parse_bool, "yes"),
        "sweep_guard": (number(0, 86400 * 30), "60"),
        "reaper_max_seconds": (number(1, 86400 * 7), "3600"),
        "fs_timeout": (number(1, 3600), "30"),
        "keep_failed": (duration(366 * 86400), "0"),
        "keep_reclaim_free_percent": (number(0, 100), "10"),
        "quota": (parse_quota, "off"),
        "quota_default": (parse_size_or_percent, "10%"),
        "quota_project_ids": (parse_id_range, "2000000-2999999"),
        "quota_query_timeout": (number(0.1, 60), "2"),
        "quota_gres": (parse_quota_gres, ""),
    },
    "health": {
        "probe_timeout": (number(0.1, 3600), "10"),
        "check_timeout": (number(0.1, 3600), "30"),
        "min_free_percent": (number(0, 100), "3"),
        "min_free_inodes_percent": (number(0, 100), "3"),
        "repair": (parse_bool, "no"),
        "housekeeping_seconds": (number(0, 3600), "20"),
        "metrics_dir": (parse_optional_path, ""),
        "io_errors_max": (integer(0, 1000000), "10"),
        "io_errors_window": (duration(86400 * 30), "1h"),
    },
    "slurm": {
        "drain_prefix": (parse_prefix, "scratch:"),
        "api": (choice("auto", "scontrol", "pyslurm"), "auto"),
        "scontrol": (parse_abs_path, "/usr/bin/scontrol"),
        "squeue": (parse_abs_path, "/usr/bin/squeue"),
        "slurm_conf": (parse_optional_path, ""),
        "timeout": (number(0.5, 600), "10"),
    },
}

_RECORDS = {"volume": VolumeConfig, "jobs": JobsConfig, "health": HealthConfig, "slurm": SlurmConfig}


def config_path(environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """The config file to read and whether it was named explicitly (then it must exist)."""
    environ = os.environ if environ is None else environ
    named = environ.get(ENV_VAR, "")
    return (named, True) if named else (DEFAULT_PATH, False)


def load_config(path: str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read and validate the config; raises ConfigError listing every problem found."""
    explicit = path is not None
    if path is None:
        path, explicit = config_path(environ)
    try:
        text = _read_regular_file(path)
    except FileNotFoundError:
        if explicit:
            raise ConfigError([f"{path}: no such file (named by {ENV_VAR} or --config)"]) from None
        return parse_config("", "")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_config(text, path)


MAX_CONFIG_BYTES = 1 << 20


def _read_regular_file(path: str) -> str:
    """The text of `path`, which must be a regular file (symlinks to one are followed: config
    management keeps /etc files as links). It is first opened with O_PATH, which opens nothing, and
    judged by fstat; only a regular file is then opened, without blocking, and must be the same
    inode: a FIFO would block the hook for good, and a device may act on open or read forever."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    _check_regular(path, st)
    _check_ownership(path, st)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        opened = os.fstat(fd)
        _check_regular(path, opened)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise ConfigError([f"{path}: replaced while it was being read"])
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a config file"])
    return data.decode("utf-8")


def _check_regular(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"))
        kind = next((what for test, what in kinds if test(st.st_mode)), "not a regular file")
        raise ConfigError([f"{path}: is {kind}, not a regular file"])


def _check_ownership(path: str, st: os.stat_result) -> None:
    # Root hooks act on what this file says; a file others can change would let them steer root.
    if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
        raise ConfigError([f"{path}: must be owned by root and not writable by group or others"])


def _read_ini(text: str, path: str, problems: list[str]) -> dict[str, dict[str, tuple[str, int]]]:
    sections: dict[str, dict[str, tuple[str, int]]] = {}
    current: str | None = None
    in_bad_section = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{path}:{lineno}"
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            current = None
            in_bad_section = True
            if not line.endswith("]"):
                problems.append(f"{where}: malformed section header {line!r}")
                continue
            section = line[1:-1].strip().lower()
            if section not in SCHEMA:
                problems.append(f"{where}: unknown section [{section}] (known: {', '.join(SCHEMA)})")
            elif section in sections:
                problems.append(f"{where}: section [{section}] appears twice")
            else:
                sections[section] = {}
                current = section
                in_bad_section = False
            continue
        if "=" not in line:
            problems.append(f"{where}: expected 'key = value', got {line!r}")
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        key = key.lower()
        if current is None:
            if not in_bad_section:  # keys of a bad section were reported with its header
                problems.append(f"{where}: key {key!r} before any [section]")
            continue
        if key not in SCHEMA[current]:
            problems.append(f"{where}: [{current}] {key}: unknown key (known: {', '.join(SCHEMA[current])})")
        elif key in sections[current]:
            problems.append(f"{where}: [{current}] {key}: set twice")
        else:
            sections[current][key] = (value, lineno)
    return sections


def parse_config(text: str, path: str) -> Config:
    """Validate INI text (as read from `path`, "" for built-in defaults) into a Config."""
    shown = path or "<defaults>"
    problems: list[str] = []
    given = _read_ini(text, shown, problems)
    records = {}
    effective = []
    for section, keys in SCHEMA.items():
        values = {}
        for key, (parser, default) in keys.items():
            raw, lineno = given.get(section, {}).get(key, (default, 0))
            try:
                values[key] = parser(raw)  # type: ignore[operator]
            except ValueError as exc:
                values[key] = None
                problems.append(f"{shown}:{lineno}: [{section}] {key} = {raw!r}: {exc}")
            effective.append((section, key, raw, lineno > 0))
        records[section] = values
    if not problems:
        _check_jobs_dir(records, shown, given, problems)
        _check_volume(records, shown, problems)
        _check_keep(records, shown, given, problems)
        _check_quota(records, shown, given, problems)
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        volume=VolumeConfig(**records["volume"], quotas=records["jobs"]["quota"][0] != "off"),
        jobs=JobsConfig(**records["jobs"]),
        health=HealthConfig(**records["health"]),
        slurm=SlurmConfig(**records["slurm"]),
        effective=tuple(effective),
    )


def _check_jobs_dir(records: dict, shown: str, given: dict, problems: list[str]) -> None:
    from slurm_scratch.jobs import pattern as job_pattern

    mount_point = records["volume"]["mount_point"]
    raw = records["jobs"]["dir"]
    lineno = given.get("jobs", {}).get("dir", ("", 0))[1]
    pattern = raw if raw.startswith("/") else f"{mount_point}/{raw}"
    problem = job_pattern.problem(pattern, mount_point)
    if problem is not None:
        problems.append(f"{shown}:{lineno}: [jobs] dir = {raw!r}: {problem}")
        return
    records["jobs"]["dir"] = pattern


def _check_volume(records: dict, shown: str, problems: list[str]) -> None:
    volume = records["volume"]
    if volume["mount_mode"] & 0o022 and not volume["mount_mode"] & 0o1000:
        problems.append(f"{shown}: [volume] mount_mode = {volume['mount_mode']:04o}: a mount point others can write to "
                        "needs the sticky bit (e.g. 1777), or users could rename and replace each other's job directories")
    if (volume["backend"] == "btrfs") != (volume["filesystem"] == "btrfs") and volume["backend"] != "single":
        problems.append(f"{shown}: [volume] backend = {volume['backend']} and filesystem = {volume['filesystem']}: "
                        "the btrfs backend stripes with btrfs itself, so it needs filesystem = btrfs (and only it does)")


def _check_keep(records: dict, shown: str, given: dict, problems: list[str]) -> None:
    """Job directories never lie in the kept area or the trash; with failed jobs' directories kept,
    they must be reclaimed before the health check drains the node for lack of space or inodes:
    the reclaim threshold lies above both drain thresholds."""
    from slurm_scratch.layout import KEPT_NAME, TRASH_NAME

    jobs, health = records["jobs"], records["health"]
    below = records["volume"]["mount_point"] + "/"
    first = jobs["dir"][len(below) :].split("/")[0] if jobs["dir"].startswith(below) else ""
    if first in (KEPT_NAME, TRASH_NAME):  # the housekeeping would take running jobs' directories there for its own
        lineno = given.get("jobs", {}).get("dir", ("", 0))[1]
        problems.append(f"{shown}:{lineno}: [jobs] dir = {jobs['dir']!r}: must not lie in {first}, the tool's own directory")
    if not jobs["keep_failed"]:
        return
    if not health["housekeeping_seconds"]:
        lineno = given.get("jobs", {}).get("keep_failed", ("", 0))[1]
        problems.append(f"{shown}:{lineno}: [jobs] keep_failed = {jobs['keep_failed']:g} s needs [health] housekeeping_seconds "
                        "above 0: the health check's housekeeping is what deletes kept directories")
    drain_at = max(health["min_free_percent"], health["min_free_inodes_percent"])
    if jobs["keep_reclaim_free_percent"] <= drain_at:
        lineno = given.get("jobs", {}).get("keep_reclaim_free_percent", ("", 0))[1]
        problems.append(f"{shown}:{lineno}: [jobs] keep_reclaim_free_percent = {jobs['keep_reclaim_free_percent']:g}: must be above "
                        f"[health] min_free_percent and min_free_inodes_percent ({drain_at:g}) when keep_failed is set, "
                        "so that kept directories are deleted before the node would drain for lack of space")


def _check_quota(records: dict, shown: str, given: dict, problems: list[str]) -> None:
    """With [jobs] quota on, users may write only in their job directories (elsewhere on the volume
    no quota applies): the mount point defaults to 0755, and one others can write to is an error."""
    if records["jobs"]["quota"][0] == "off":
        return
    if "mount_mode" not in given.get("volume", {}):
        records["volume"]["mount_mode"] = 0o755
    elif records["volume"]["mount_mode"] & 0o022:
        problems.append(f"{shown}: [volume] mount_mode = {records['volume']['mount_mode']:04o} with [jobs] quota: users could "
                        "write outside their job directories, where no quota applies; use 0755 (the default with a quota)")


def render(config: Config) -> str:
    """The effective configuration as INI text; keys not set in the file are marked as defaults."""
    lines = [f"# effective configuration ({config.path or 'built-in defaults: no config file'})"]
    current = None
    for section, key, value, from_file in config.effective:
        if section != current:
            lines.append(f"\n[{section}]")
            current = section
        if key == "dir" and section == "jobs":
            value = config.jobs.dir
        lines.append(f"{key} = {value}" + ("" if from_file else "    # default"))
    return "\n".join(lines) + "\n"
