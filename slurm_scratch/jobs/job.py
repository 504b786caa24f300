"""The job a hook runs for, taken from Slurm's environment and checked against the passwd database.

Nothing builds a path from a value that has not passed through here. Slurm gives the Prolog and
Epilog SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_GID, SLURM_JOB_USER and SLURMD_NODENAME; the
TaskProlog runs as the job user, so its identity is the process's own, not the environment's.
"""

from __future__ import annotations

import grp
import os
import pwd

from slurm_scratch.errors import JobContextError
from slurm_scratch.record import Record

MAX_JOB_ID = 2**32 - 1


class JobContext(Record):
    job_id: int
    uid: int
    gid: int
    user: str
    node: str


def _require(environ: dict[str, str], *names: str) -> str:
    for env_name in names:
        value = environ.get(env_name)
        if value is not None:
            if value == "":
                raise JobContextError(f"{env_name} is empty")
            return value
    raise JobContextError(f"{' or '.join(names)} is not set (is this running as a Slurm hook?)")


def shown(value: str) -> str:
    """A value from the environment as a message shows it: quoted, and cut short when long (a user
    can hand Slurm 100 KB; the log line must stay one readable line)."""
    if len(value) <= 64:
        return repr(value)
    return f"{value[:32]!r}... ({len(value)} characters)"


def _number(env_name: str, value: str, maximum: int) -> int:
    if not value.isascii() or not value.isdigit():
        raise JobContextError(f"{env_name}={shown(value)} is not a number")
    # Before int(): thousands of digits would hit Python's int() digit limit (a ValueError traceback).
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise JobContextError(f"{env_name}={shown(value)} is out of range")
    return int(digits)


def check_name(env_name: str, value: str) -> str:
    """A user or node name that is safe inside a path component."""
    if value == "." or ".." in value or "/" in value or any(ch.isspace() or ord(ch) < 32 or ch == "\x7f" for ch in value):
        raise JobContextError(f"{env_name}={shown(value)} contains '/', '..', NUL, whitespace or a control character")
    if value.startswith("-") or len(value) > 255:
        raise JobContextError(f"{env_name}={shown(value)} is not a valid name")
    return value


def parse_job_id(environ: dict[str, str]) -> int:
    value = _require(environ, "SLURM_JOB_ID", "SLURM_JOBID")
    env_name = "SLURM_JOB_ID" if "SLURM_JOB_ID" in environ else "SLURM_JOBID"
    job_id = _number(env_name, value, MAX_JOB_ID)
    if job_id == 0:
        raise JobContextError(f"{env_name}=0 is not a job id")
    return job_id


def node_name(environ: dict[str, str]) -> str:
    return check_name("SLURMD_NODENAME", _require(environ, "SLURMD_NODENAME"))


def from_slurm_env(environ: dict[str, str] | None = None) -> JobContext:
    """The job of a Prolog or Epilog (run as root): every id must agree with the passwd database."""
    environ = dict(os.environ) if environ is None else environ
    job_id = parse_job_id(environ)
    user = check_name("SLURM_JOB_USER", _require(environ, "SLURM_JOB_USER"))
    uid = _number("SLURM_JOB_UID", _require(environ, "SLURM_JOB_UID"), 2**32 - 2)
    gid = _number("SLURM_JOB_GID", _require(environ, "SLURM_JOB_GID"), 2**32 - 2)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise JobContextError(f"SLURM_JOB_USER={user!r} is not a known user") from None
    if entry.pw_uid != uid:
        raise JobContextError(f"SLURM_JOB_UID={uid} does not match user {user!r} (uid {entry.pw_uid})")
    if gid != entry.pw_gid and not _is_member(user, gid):
        raise JobContextError(f"SLURM_JOB_GID={gid} is neither the primary group of user {user!r} ({entry.pw_gid}) nor one it belongs to")
    return JobContext(job_id=job_id, uid=uid, gid=gid, user=user, node=node_name(environ))


def for_epilog(environ: dict[str, str] | None = None) -> JobContext:
    """The job of an Epilog: slurmd's ids and user name, checked for syntax only. The passwd database
    is never asked: the job may be ending because its user was removed, or NSS (sssd, LDAP) may be
    down, and retiring the job's directory needs only what slurmd says (the uid, for `job_%j`)."""
    environ = dict(os.environ) if environ is None else environ
    return JobContext(
        job_id=parse_job_id(environ),
        uid=_number("SLURM_JOB_UID", _require(environ, "SLURM_JOB_UID"), 2**32 - 2),
        gid=_number("SLURM_JOB_GID", _require(environ, "SLURM_JOB_GID"), 2**32 - 2),
        user=check_name("SLURM_JOB_USER", _require(environ, "SLURM_JOB_USER")),
        node=node_name(environ),
    )


def for_current_user(environ: dict[str, str] | None = None) -> JobContext:
    """The job of a TaskProlog: the job id from the environment, the identity of this process."""
    environ = dict(os.environ) if environ is None else environ
    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise JobContextError(f"uid {uid} has no passwd entry") from None
    return JobContext(
        job_id=parse_job_id(environ),
        uid=uid,
        gid=os.getgid(),
        user=check_name("user name", entry.pw_name),
        node=node_name(environ),
    )


def _is_member(user: str, gid: int) -> bool:
    try:
        return user in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False
