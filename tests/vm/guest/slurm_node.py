"""A one-node Slurm cluster inside the test VM: munged, slurmctld and slurmd (Debian bookworm's
Slurm 22.05, in the image), with the project's hooks from the shared checkout (/src/hooks) as
Prolog, Epilog, TaskProlog and HealthCheckProgram. Runs as root in the guest only.

Every daemon is started directly (no wrapper) and stopped by the PID recorded at start; the
files this writes outside its own work folder (/etc/hosts, /etc/passwd, /etc/group, the tool's
/etc/slurm-scratch/slurm-scratch.conf) are put back by `stop()`.

Only the standard library: the host imports this module when it collects the guest tests.
"""
from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Callable, TypeVar

from lab import guest_node as node
from lab.munge import start_munged
from lab.process import process_alive, stop_process, wait_for
from lab.scontrol import TERMINAL_JOB_STATES, first_record, parse_sinfo_reason, sinfo_reason_argv
from lab.slurmconf import make_controller_dir, slurm_conf_text
from lab.nvme_disks import sh

NODE_NAME = "vm"  # the guest's host name (vm_image.py writes /etc/hostname)
ADDRESS = "127.0.0.1"
HOOKS = node.SOURCE / "hooks"
TOOL_CONF = Path("/etc/slurm-scratch/slurm-scratch.conf")  # what hooks without SLURM_SCRATCH_CONF read
HEALTH_LOCK = Path("/run/slurm-scratch/health.lock")  # health.LOCK_FILE
HOUSEKEEPING_LOCK = Path("/run/slurm-scratch/housekeeping.lock")  # health.HOUSEKEEPING_LOCK
MUNGE_KEY = Path("/etc/munge/munge.key")  # made by munge's postinst in the image
MUNGE_RUN = Path("/run/munge")
HEALTH_INTERVAL_S = 5
# glibc's getaddrinfo(AI_ADDRCONFIG), which slurmctld uses for its listening socket, answers
# nothing while 127.0.0.1 is the only IPv4 address: a second loopback address fixes that.
EXTRA_LOOPBACK = "127.0.0.2/32"
# slurmd 22.05 initialises its cgroup plugin even with proctrack/linuxproc and task/none; its
# cgroup/v2 plugin needs systemd's dbus, so it gets cgroup/v1 on a tmpfs (nothing uses it).
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Files of the guest this changes; their content is restored by stop().
TOUCHED_FILES = (Path("/etc/hosts"), Path("/etc/passwd"), Path("/etc/group"), TOOL_CONF)

T = TypeVar("T")


class SlurmNodeError(AssertionError):
    pass


def poll(what: str, condition: Callable[[], T], timeout_s: float, interval_s: float = 0.5,
         describe: Callable[[], str] | None = None) -> T:
    """`condition()` until it is truthy (returned) or `timeout_s` passed (an AssertionError
    naming `what` and, if given, `describe()`)."""
    return wait_for(what, condition, timeout_s, interval_s, error=SlurmNodeError, describe=describe)


def stop_pid(process: subprocess.Popen, grace_s: float = 15) -> bool:
    """TERM the process by its PID, then KILL after `grace_s`; True once it has exited."""
    return stop_process(process.pid, process, grace_s)


class SlurmNode:
    """`start()` writes the configs and starts munged + slurmctld + slurmd; `stop()` stops them
    (by PID) and puts every touched file back. `users` are created as (name, uid)."""

    def __init__(self, workdir: Path, tool_settings: dict[str, dict[str, str]]) -> None:
        self.workdir = workdir
        self.tool_settings = tool_settings
        self.slurm_conf = workdir / "etc" / "slurm.conf"
        self.munged: subprocess.Popen | None = None
        self.slurmctld: subprocess.Popen | None = None
        self.slurmd: subprocess.Popen | None = None
        self._saved: dict[Path, bytes | None] = {}
        self._made_dirs: list[Path] = []
        self.users: dict[str, int] = {}
        self._added_address = False
        self._mounted_cgroup = False

    # -- set-up ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Work folder, /etc/hosts, slurm.conf and the tool's config (no daemon yet)."""
        self._saved = {path: path.read_bytes() if path.exists() else None
                       for path in TOUCHED_FILES}
        self.workdir.mkdir(mode=0o755, parents=True)
        for sub in ("etc", "ctld", "slurmd", "munge", "home"):
            (self.workdir / sub).mkdir(mode=0o755)
        Path("/etc/hosts").write_text(f"127.0.0.1 localhost\n{ADDRESS} {NODE_NAME}\n")
        sh("ip", "addr", "add", EXTRA_LOOPBACK, "dev", "lo")
        self._added_address = True
        if not os.path.ismount(CGROUP_ROOT):
            sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "cgroup", str(CGROUP_ROOT))
            self._mounted_cgroup = True
        self._write_slurm_conf()
        self.write_tool_conf()

    def write_tool_conf(self, overrides: dict[str, dict[str, str]] | None = None) -> Path:
        """/etc/slurm-scratch/slurm-scratch.conf: the settings given at construction, plus
        `[slurm] slurm_conf` (a HealthCheckProgram gets no SLURM_CONF), plus `overrides`."""
        sections = {section: dict(keys) for section, keys in self.tool_settings.items()}
        sections.setdefault("slurm", {})["slurm_conf"] = str(self.slurm_conf)
        for section, keys in (overrides or {}).items():
            sections.setdefault(section, {}).update(keys)
        if not TOOL_CONF.parent.is_dir():
            TOOL_CONF.parent.mkdir(mode=0o755, parents=True)
            self._made_dirs.append(TOOL_CONF.parent)
        volume = sections.pop("volume", {})
        return node.write_config(TOOL_CONF, volume, sections)

    def _write_slurm_conf(self) -> None:
        ctld = self.workdir / "ctld"
        make_controller_dir(ctld)
        slurmd = self.workdir / "slurmd"
        (slurmd / "spool").mkdir(mode=0o755)
        self.slurm_conf.write_text(slurm_conf_text(
            cluster_name="fullstack", controller=(NODE_NAME, ADDRESS), nodes=[(NODE_NAME, ADDRESS)],
            controller_dir=ctld, node_dir=str(slurmd), hooks=HOOKS,
            health_interval=HEALTH_INTERVAL_S))
        self.slurm_conf.chmod(0o644)
        cgroup_conf = self.slurm_conf.with_name("cgroup.conf")
        cgroup_conf.write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=yes\n")
        cgroup_conf.chmod(0o644)

    def add_user(self, name: str, uid: int) -> Path:
        """An ordinary user (own group, home in the work folder); returns the home."""
        home = self.workdir / "home" / name
        with open("/etc/group", "a") as group:
            group.write(f"{name}:x:{uid}:\n")
        with open("/etc/passwd", "a") as passwd:
            passwd.write(f"{name}:x:{uid}:{uid}::{home}:/bin/sh\n")
        home.mkdir(mode=0o755)
        os.chown(home, uid, uid)
        self.users[name] = uid
        return home

    # -- daemons -----------------------------------------------------------------------------
    def start(self) -> None:
        self.start_munged()
        self.start_slurmctld()
        self.start_slurmd()

    def _daemon(self, argv: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.workdir / log_name, "ab")
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    cwd="/", start_new_session=True,
                                    env={"PATH": node.TOOL_PATH, "LANG": "C.UTF-8"})
        finally:
            log.close()

    def start_munged(self) -> None:
        if not MUNGE_RUN.exists():
            MUNGE_RUN.mkdir(mode=0o755)
            self._made_dirs.append(MUNGE_RUN)
        munge = pwd.getpwnam("munge")
        os.chown(MUNGE_RUN, munge.pw_uid, munge.pw_gid)
        self.munged = start_munged(MUNGE_KEY, self.workdir / "munge")

    def start_slurmctld(self) -> None:
        self.slurmctld = self._daemon(["/usr/sbin/slurmctld", "-D", "-f", str(self.slurm_conf)],
                                      "slurmctld.out")
        poll("slurmctld to answer", lambda: self._alive(self.slurmctld, "slurmctld") and
             self.scontrol("ping", check=False).stdout.count("UP") >= 1, 60,
             describe=lambda: self.log_tail("ctld/slurmctld.log"))

    def start_slurmd(self) -> None:
        self.slurmd = self._daemon(["/usr/sbin/slurmd", "-D", "-f", str(self.slurm_conf)],
                                   "slurmd.out")
        poll("slurmd to register", lambda: self._alive(self.slurmd, "slurmd") and
             "NOT_RESPONDING" not in self.node_state() and "UNKNOWN" not in self.node_state(),
             60, describe=self.describe_node)

    def stop_slurmd(self) -> None:
        """Stop slurmd by its PID, after any health check it started has finished (one that
        still ran would hold /scratch busy). A health check slurmd started while the checks were
        paused waits for the lock and runs once it is let go, after slurmd is gone: its PID is
        recorded (slurmd's health-check children, just before slurmd stops) and waited for,
        bounded."""
        if self.slurmd is None:
            return
        with self.health_checks_paused():
            checks = _health_checks_of(self.slurmd.pid)
            if not stop_pid(self.slurmd):
                raise SlurmNodeError(f"slurmd PID {self.slurmd.pid} did not stop")
        self.slurmd = None
        poll("the health checks slurmd started to end",
             lambda: not any(process_alive(pid) for pid in checks), 180, 0.2)

    def _alive(self, process: subprocess.Popen, name: str) -> bool:
        if process.poll() is not None:
            raise SlurmNodeError(f"{name} exited {process.returncode}: "
                                 f"{self.log_tail(name + '.out')}")
        return True

    def stop(self) -> list[str]:
        """Stop every daemon by PID (slurmd, slurmctld, munged) and restore the touched files.
        Returns what could not be undone."""
        problems = []
        if self.slurmctld is not None and self.slurmctld.poll() is None:
            for user in self.users:  # a test that failed mid-job leaves no job step behind
                subprocess.run(["scancel", "-u", user], capture_output=True, timeout=30,
                               env=self.client_env())
        for name in ("slurmd", "slurmctld", "munged"):
            process = getattr(self, name)
            if process is not None and not stop_pid(process):
                problems.append(f"{name} PID {process.pid} did not stop")
            setattr(self, name, None)
        for path, content in self._saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        if self._added_address:
            result = sh("ip", "addr", "del", EXTRA_LOOPBACK, "dev", "lo", check=False)
            if result.returncode != 0:
                problems.append(f"ip addr del {EXTRA_LOOPBACK}: {result.stderr.strip()}")
            self._added_address = False
        if self._mounted_cgroup:
            result = sh("umount", str(CGROUP_ROOT), check=False)
            if result.returncode != 0:
                problems.append(f"umount {CGROUP_ROOT}: {result.stderr.strip()}")
            self._mounted_cgroup = False
        for directory in reversed(self._made_dirs):
            shutil.rmtree(directory, ignore_errors=True)
        return problems

    @staticmethod
    def health_checks_paused():
        """Hold the tool's health-check and housekeeping locks: a check that starts meanwhile
        waits for them (bounded) and touches nothing until they are let go; waits (bounded) for
        a check or housekeeping that is running."""
        return _HealthLock()

    # -- clients -----------------------------------------------------------------------------
    def client_env(self, home: str = "/root") -> dict[str, str]:
        return {"PATH": node.TOOL_PATH, "LANG": "C.UTF-8", "HOME": home,
                "SLURM_CONF": str(self.slurm_conf)}

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30,
                                env=self.client_env())
        if check and result.returncode != 0:
            raise SlurmNodeError(f"scontrol {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr.strip()}")
        return result

    def node_info(self) -> dict[str, str]:
        return first_record(self.scontrol("show", "node", "-o", NODE_NAME, check=False).stdout)

    def node_state(self) -> str:
        return self.node_info().get("State", "")

    def node_reason(self) -> str:
        """The node's drain/down reason as `sinfo -R` shows it ('' when it has none)."""
        result = subprocess.run(sinfo_reason_argv(NODE_NAME), capture_output=True, text=True,
                                timeout=30, env=self.client_env())
        return parse_sinfo_reason(result.stdout)

    def describe_node(self) -> str:
        return (f"scontrol show node: {self.node_info()}\n--- slurmd.log tail ---\n"
                f"{self.log_tail('slurmd/slurmd.log')}")

    def submit(self, user: str, script: str) -> int:
        """sbatch `script` as `user` from their home; output in <home>/slurm-<id>.out."""
        entry = pwd.getpwnam(user)
        home = entry.pw_dir
        argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
                "--", "sbatch", "--parsable", f"--chdir={home}", f"--output={home}/slurm-%j.out",
                "-N1", "-n1"]
        result = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30,
                                env=self.client_env(home), cwd=home)
        if result.returncode != 0:
            raise SlurmNodeError(f"sbatch as {user} exited {result.returncode}: {result.stderr}")
        return int(result.stdout.strip().split(";")[0])

    def job_info(self, job_id: int) -> dict[str, str]:
        return first_record(self.scontrol("show", "job", "-o", str(job_id)).stdout)

    def wait_job(self, job_id: int, timeout_s: float = 60) -> dict[str, str]:
        """Poll until the job ended (and is no longer completing); returns its record."""
        def ended():
            info = self.job_info(job_id)
            return info if info.get("JobState") in TERMINAL_JOB_STATES else None
        return poll(f"job {job_id} to end", ended, timeout_s,
                    describe=lambda: f"{self.job_info(job_id)}\n{self.describe_node()}")

    def log_tail(self, relative: str, lines: int = 30) -> str:
        path = self.workdir / relative
        if not path.exists():
            return f"({path} does not exist)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _health_checks_of(pid: int) -> list[int]:
    """The PIDs of the health checks `pid` (slurmd) runs: its children running the tool's hook."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            try:
                if b"healthcheck" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


class _HealthLock:
    def __init__(self, timeout_s: float = 60) -> None:
        self.timeout_s = timeout_s
        self.fds: list[int] = []

    def __enter__(self) -> None:
        HEALTH_LOCK.parent.mkdir(mode=0o755, exist_ok=True)
        try:
            for path in (HEALTH_LOCK, HOUSEKEEPING_LOCK):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self.fds.append(fd)

                def locked(fd: int = fd) -> bool:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return True
                    except BlockingIOError:
                        return False

                poll(f"the running health check to let go of {path}", locked, self.timeout_s, 0.1)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
