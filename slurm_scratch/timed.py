"""Work that may block in the kernel, run in a forked child under a deadline.

A filesystem that hangs (a frozen or dead disk, a stuck device) leaves whoever touches it in
uninterruptible sleep. The health check's probe and the hooks' work on the volume run here: the
caller gets an answer within its timeout whatever the kernel does, and a child still stuck at the
deadline is SIGKILLed and left behind (it dies when the kernel lets go of it).
"""

from __future__ import annotations

import os
import time

from slurm_scratch.record import Record

SIGKILL = 9  # signal.SIGKILL on Linux; `import signal` costs an enum import on every hook


class ChildResult(Record):
    status: str  # "ok", "error", "timeout", or "skipped" (an earlier step timed out)
    text: str  # what the step returned, or the error's message
    kind: str  # for "error": the exception's class name (OSError, ScratchError, ...); else ""
    pid: int


class Child:
    """Steps run one after another in a forked child, each reported back as one line.

    `Child(steps)` forks and returns at once, so that the parent can do other work meanwhile;
    `results(timeouts)` collects one ChildResult per step, each step within its own timeout
    (counted from the end of the one before). A step still running at its timeout gets the
    child SIGKILLed, and the later steps are "skipped". The child lets go of stdin, stdout,
    stderr and every other inherited descriptor first: a child stuck in the kernel must hold
    neither slurmd's pipes nor any lock. A killed child stuck in uninterruptible sleep is not
    waited for.
    """

    def __init__(self, steps) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.close(read_fd)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.closerange(3, write_fd)
                os.closerange(write_fd + 1, 1024)
                for step in steps:
                    try:
                        line = "ok - " + step()
                    except OSError as exc:
                        line = f"error OSError {exc.strerror or exc}"
                    except BaseException as exc:  # noqa: BLE001 - reported to the parent
                        line = f"error {type(exc).__name__} {exc}"
                    os.write(write_fd, (" ".join(line.split()) + "\n").encode("utf-8", errors="replace"))
            finally:
                os._exit(0)
        os.close(write_fd)
        self.pid, self.fd, self.count, self.started = pid, read_fd, len(steps), time.monotonic()

    def _result(self, status: str, text: str = "", kind: str = "") -> ChildResult:
        return ChildResult(status=status, text=text, kind=kind, pid=self.pid)

    def results(self, timeouts: list[float]) -> list[ChildResult]:
        import select

        results: list[ChildResult] = []
        buffer = b""
        deadline = self.started + timeouts[0]
        try:
            while len(results) < self.count:
                while b"\n" in buffer and len(results) < self.count:
                    line, buffer = buffer.split(b"\n", 1)
                    status, kind, text = (line.decode("utf-8", errors="replace").split(" ", 2) + ["", ""])[:3]
                    results.append(self._result(status, text, "" if kind == "-" else kind))
                    if len(results) < self.count:
                        deadline = time.monotonic() + timeouts[len(results)]
                if len(results) == self.count:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._kill()
                    results.append(self._result("timeout"))
                    while len(results) < self.count:
                        results.append(self._result("skipped"))
                    return results
                if select.select([self.fd], [], [], remaining)[0]:
                    data = os.read(self.fd, 65536)
                    if not data:  # ended without reporting every step
                        while len(results) < self.count:
                            results.append(self._result("error", "the check ended without a result", "ChildError"))
                        break
                    buffer += data
        finally:
            os.close(self.fd)
        os.waitpid(self.pid, 0)
        return results

    def _kill(self) -> None:
        try:
            os.kill(self.pid, SIGKILL)
            os.waitpid(self.pid, os.WNOHANG)
        except (ProcessLookupError, ChildProcessError):
            pass


def in_child(work, timeout: float) -> ChildResult:
    """Run `work()` (returning a str) in a forked child, killed at `timeout` seconds."""
    return Child([work]).results([timeout])[0]


def start_time(pid: int) -> str | None:
    """A live process's start time (field 22 of /proc/PID/stat); None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stream:
            fields = stream.read().rpartition(")")[2].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a killed child nobody has reaped yet
        return None
    return fields[19]


def still_running(pid: int, start: str) -> bool:
    """Whether `pid` is still the (live, not zombie) process that started at `start`."""
    return start_time(pid) == start
