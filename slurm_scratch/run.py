"""The one way slurm-scratch runs external commands.

Hooks start with no PATH (Slurm gives them none), so every tool is run by absolute path, with a
fixed PATH and C locale, under a timeout; each command and its duration is logged. Output is
captured and returned as text.
"""

from __future__ import annotations

import os

from slurm_scratch import log
from slurm_scratch.errors import ScratchError
from slurm_scratch.record import Record

SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
FIXED_ENV = {"PATH": ":".join(SEARCH_PATH), "LC_ALL": "C", "LANG": "C"}


class CommandError(ScratchError):
    def __init__(self, argv: list[str], returncode: int | None, output: str, timed_out: bool = False):
        self.argv = argv
        self.returncode = returncode
        self.output = output
        self.timed_out = timed_out
        what = "timed out" if timed_out else f"exited with {returncode}"
        detail = output.strip().splitlines()[-3:] if output.strip() else []
        super().__init__(f"{' '.join(argv)} {what}" + (": " + " | ".join(detail) if detail else ""))


class Result(Record):
    argv: list
    returncode: int
    stdout: str
    stderr: str


def tool(name: str) -> str:
    """The absolute path of `name` in the fixed search path, or a ScratchError saying it is missing."""
    if name.startswith("/"):
        if os.access(name, os.X_OK):
            return name
        raise ScratchError(f"{name}: not an executable file")
    for directory in SEARCH_PATH:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise ScratchError(f"{name}: not found in {':'.join(SEARCH_PATH)} (is its package installed?)")


def run(
    argv: list[str],
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    quiet: bool = False,
) -> Result:
    """Run argv (argv[0] resolved with `tool`) and return its Result.

    The command runs in its own session so that a timeout kills it and all its children.
    `check=True` raises CommandError on a non-zero exit; a timeout always raises.
    """
    import subprocess  # here, not at the top: `tool` is used on hot paths that run nothing

    argv = [tool(argv[0]), *argv[1:]]
    timer = log.Timer()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**FIXED_ENV, **(env or {})},
        start_new_session=True,
        close_fds=True,
    )
    try:
        stdout, stderr = process.communicate(input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(process)
        stdout, stderr = process.communicate()
        log.error(f"command timed out after {timeout:g} s: {' '.join(argv)}", ms=timer.ms())
        raise CommandError(argv, None, stderr or stdout or "", timed_out=True) from None
    result = Result(argv=argv, returncode=process.returncode, stdout=stdout, stderr=stderr)
    if not quiet or process.returncode != 0:
        log.info(f"ran {' '.join(argv)} rc={process.returncode}", ms=timer.ms())
    if check and process.returncode != 0:
        raise CommandError(argv, process.returncode, stderr or stdout)
    return result


def _kill_session(process) -> None:
    import signal

    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
