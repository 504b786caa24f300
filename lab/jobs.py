"""A scratch volume on a real loop filesystem and Slurm-like job hooks against it (host tests).

Hooks run the way slurmd runs them: as separate processes started with `env -i` plus the variables
Slurm sets, cwd /, as root (Prolog, Epilog) or as the job user (TaskProlog, via setpriv). Every
process a test starts is recorded and ended by its PID; the reaper processes the Epilogs fork are
found by a tag in their environment (inherited, never re-exec'd) and waited for before the
filesystem is unmounted.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

from lab.kernel import is_mounted, sh
from lab.process import wait_for
from lab.toolconf import write_tool_conf

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "hooks"
TRASH = ".slurm-scratch-trash"
NODE = "node1"
T = TypeVar("T")
TAG_VAR = "SLURM_SCRATCH_TEST_TAG"  # not read by the tool: lets teardown find the detached reapers


def with_overrides(env: dict[str, str], overrides: dict[str, object]) -> dict[str, str]:
    """`env` with `overrides` applied: a value of None removes that variable."""
    removed = [key for key, value in overrides.items() if value is None]
    env.update((key, str(value)) for key, value in overrides.items() if value is not None)
    for key in removed:
        env.pop(key, None)
    return env


def write_config(path: Path, mount_point: str, sections: dict[str, dict[str, str]] | None = None) -> Path:
    """The tool's config at `path`: `mount_point` and `sections`."""
    settings: dict[str, dict[str, str]] = {"volume": {"mount_point": mount_point}}
    for section, keys in (sections or {}).items():
        settings.setdefault(section, {}).update(keys)
    return write_tool_conf(path, settings)


def poll(condition, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Call `condition` until it returns something truthy, at most `timeout` seconds (then an
    AssertionError: a test's wait that fails is a failed test)."""
    return wait_for(what, condition, timeout, interval, error=AssertionError)


def snapshot(root: str | Path) -> dict[str, tuple]:
    """Every entry below (and including) root, never following a symlink: type, mode, owner, size,
    link target, and a regular file's contents."""
    root = str(root)
    entries: dict[str, tuple] = {}

    def visit(path: str, relative: str) -> None:
        st = os.lstat(path)
        content: object = None
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as stream:
                content = stream.read()
        size = None if stat.S_ISDIR(st.st_mode) else st.st_size  # a directory's size is the filesystem's business
        entries[relative] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, content)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(f"{path}/{name}", f"{relative}/{name}")

    visit(root, ".")
    return entries


def make_canary(parent: str | Path) -> Path:
    """A root-owned directory tree outside the scratch volume that no hook may ever change."""
    canary = Path(tempfile.mkdtemp(prefix="ss-canary-", dir=str(parent)))
    canary.chmod(0o755)
    (canary / "precious.txt").write_text("precious data\n")
    (canary / "precious.txt").chmod(0o644)
    (canary / "sub").mkdir(mode=0o755)
    (canary / "sub" / "deep.txt").write_text("deeper\n")
    (canary / "secret").write_text("root only\n")
    (canary / "secret").chmod(0o600)
    return canary


class Scratch:
    """A mounted scratch filesystem, its config file, and ways to run the hooks and CLI against it."""

    def __init__(self, base: Path, mount_point: Path, fstype: str, device: str) -> None:
        self.base = base
        self.mount_point = mount_point
        self.fstype = fstype
        self.device = device
        self.config = base / "slurm-scratch.conf"
        self.tag = uuid.uuid4().hex
        self.processes: list[subprocess.Popen] = []
        self.configure()

    # ---- configuration -------------------------------------------------------------------------

    def configure(self, sections: dict[str, dict[str, str]] | None = None, mount_point: str | None = None) -> Path:
        return write_config(self.config, mount_point or str(self.mount_point), sections)

    @property
    def trash(self) -> Path:
        return self.mount_point / TRASH

    def trash_entries(self) -> list[str]:
        try:
            return sorted(os.listdir(self.trash))
        except FileNotFoundError:
            return []

    def job_dir(self, job_id: int, pattern: str = "job_%j", user: str = "sstest1", node: str = NODE) -> Path:
        name = pattern.replace("%j", str(job_id)).replace("%u", user).replace("%n", node)
        return self.mount_point / name

    # ---- running things --------------------------------------------------------------------------

    def job_env(self, job_id: object, user: str = "sstest1", context: str = "prolog_slurmd", **overrides: object) -> dict[str, str]:
        """The environment slurmd gives a Prolog/Epilog; an override of None removes that variable."""
        entry = pwd.getpwnam(user)
        env = {
            "SLURMD_NODENAME": NODE,
            "SLURM_CLUSTER_NAME": "testcluster",
            "SLURM_CONF": "/etc/slurm/slurm.conf",
            "SLURM_JOB_ID": str(job_id),
            "SLURM_JOBID": str(job_id),
            "SLURM_JOB_UID": str(entry.pw_uid),
            "SLURM_JOB_GID": str(entry.pw_gid),
            "SLURM_JOB_USER": user,
            "SLURM_UID": str(entry.pw_uid),
            "SLURM_JOB_PARTITION": "debug",
            "SLURM_JOB_CPUS_PER_NODE": "1",
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NODELIST": NODE,
            "SLURM_JOB_WORK_DIR": "/tmp",
            "SLURM_JOB_RESTART_COUNT": "0",
            "SLURM_SCRIPT_CONTEXT": context,
            "SLURM_SCRATCH_CONF": str(self.config),
            TAG_VAR: self.tag,
        }
        if context == "epilog_slurmd":
            env.update(SLURM_JOB_EXIT_CODE="0", SLURM_JOB_EXIT_CODE2="0:0", SLURM_JOB_DERIVED_EC="0")
        return with_overrides(env, overrides)

    def task_env(self, job_id: object, **overrides: object) -> dict[str, str]:
        """What a TaskProlog sees (the submitter's environment plus job variables), reduced to the job's."""
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "SLURM_JOB_ID": str(job_id),
            "SLURM_JOBID": str(job_id),
            "SLURM_STEP_ID": "0",
            "SLURMD_NODENAME": NODE,
            "SLURM_SCRATCH_CONF": str(self.config),
            TAG_VAR: self.tag,
        }
        return with_overrides(env, overrides)

    def hook(self, name: str, env: dict[str, str], hooks_dir: Path = HOOKS, user: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run hooks/<name> under `env -i` plus `env`, cwd /, as root or (user) as that user."""
        argv = ["/usr/bin/env", "-i", *(f"{key}={value}" for key, value in env.items()), str(hooks_dir / name)]
        if user is not None:
            argv = ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *argv]
        return subprocess.run(argv, cwd="/", capture_output=True, text=True, timeout=timeout)

    def prolog(self, job_id: object, user: str = "sstest1", **kwargs) -> subprocess.CompletedProcess:
        return self.hook("prolog", self.job_env(job_id, user, "prolog_slurmd"), **kwargs)

    def epilog(self, job_id: object, user: str = "sstest1", **kwargs) -> subprocess.CompletedProcess:
        return self.hook("epilog", self.job_env(job_id, user, "epilog_slurmd"), **kwargs)

    def task_prolog(self, job_id: object, user: str = "sstest1", **kwargs) -> subprocess.CompletedProcess:
        return self.hook("task_prolog", self.task_env(job_id), user=user, **kwargs)

    def cli(self, *args: str, timeout: float = 120, config: bool = True) -> subprocess.CompletedProcess:
        """`python3 -m slurm_scratch [--config FILE] ARGS` from the checkout, with a minimal environment."""
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LC_ALL": "C", TAG_VAR: self.tag}
        argv = ["/usr/bin/python3", "-m", "slurm_scratch", *(["--config", str(self.config)] if config else []), *args]
        return subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=timeout)

    def start_as(self, user: str, argv: list[str], cwd: str | Path = "/") -> subprocess.Popen:
        """A long-running process of `user` (recorded, and ended by its PID at teardown)."""
        process = subprocess.Popen(
            ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *argv],
            cwd=str(cwd),
            env={"PATH": "/usr/bin:/bin", TAG_VAR: self.tag},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def as_user(self, user: str, script: str, *args: str) -> subprocess.CompletedProcess:
        """Run a shell script as `user` (what a job would do), checked."""
        argv = ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", "/bin/sh", "-ec", script, "sh", *args]
        return subprocess.run(argv, cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=True)

    # ---- waiting and teardown --------------------------------------------------------------------

    def while_frozen(self, action: Callable[[], T]) -> T:
        """`action()` with the volume frozen (fsfreeze), thawed afterwards whatever happens."""
        sh("fsfreeze", "-f", str(self.mount_point))
        try:
            return action()
        finally:
            sh("fsfreeze", "-u", str(self.mount_point), check=False)

    def wait_trash_empty(self, timeout: float = 60) -> None:
        poll(lambda: not self.trash_entries(), timeout, what=f"{self.trash} to be emptied by the reaper")

    def live_reapers(self) -> list[int]:
        """Reapers the Epilogs of this volume forked (they carry the tag; our own processes aside)."""
        ours = {process.pid for process in self.processes}
        return [pid for pid in self.tagged_pids() if pid not in ours]

    def wait_reapers(self, timeout: float = 60) -> None:
        """Until every reaper an Epilog of this volume started has exited."""
        poll(lambda: not self.live_reapers(), timeout, what="the reapers to exit")

    def tagged_pids(self) -> list[int]:
        """Processes started for this volume (hooks, reapers, user processes), found by our tag."""
        needle = f"{TAG_VAR}={self.tag}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as stream:
                    if needle in stream.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return [pid for pid in found if not _is_zombie(pid)]

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        # Reapers finish by themselves (the trash of a test is small); a stuck one is ended by PID.
        deadline = time.monotonic() + 60
        while self.tagged_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.tagged_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Unmount here, retrying while anything still lets go, so that the loop factory finds it clean.
        deadline = time.monotonic() + 30
        while is_mounted(str(self.mount_point)) and time.monotonic() < deadline:
            if sh("umount", str(self.mount_point), check=False).returncode != 0:
                time.sleep(0.1)
        if not is_mounted(str(self.mount_point)):
            shutil.rmtree(self.base, ignore_errors=True)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def scratch_volume(loops, fstype: str, size_mb: int = 512, mount_mode: int = 0o1777):
    """A fresh `fstype` filesystem mounted at <base>/scratch (base reachable by the test users),
    its root set to `mount_mode` as `slurm-scratch setup` would, and a config naming it."""
    base = Path(tempfile.mkdtemp(prefix="ss-host-", dir="/tmp"))
    base.chmod(0o755)
    mount_point = base / "scratch"
    filesystem = loops.filesystem(fstype, size_mb=size_mb, mount_point=str(mount_point))
    mount_point.chmod(mount_mode)
    scratch = Scratch(base, mount_point, fstype, filesystem.device)
    try:
        yield scratch
    finally:
        scratch.close()
