"""Talking to Slurm: node state, drain, resume, which jobs run on a node.

Two backends with one interface (`node_state`, `drain`, `resume`):
- scontrol (the default, and the only one tested against a real Slurm here): `scontrol` by the
  absolute path `[slurm] scontrol`, each call under `[slurm] timeout`, with SLURM_CONF set from
  `[slurm] slurm_conf` when given (a HealthCheckProgram gets no SLURM_CONF and no PATH).
  Node state is read from `scontrol show node -o NAME` (one line; `--json` lacks fields in 22.05).
- pyslurm: used with `[slurm] api = auto` when `import pyslurm` works and its major.minor
  version equals the running Slurm's (`scontrol --version`); `api = pyslurm` insists on it.
  pyslurm talks to slurmctld inside the calling process, where no timeout can stop it: each call
  runs in a forked child (timed.in_child) that is killed at `[slurm] timeout`, as scontrol is.

Only `node_state`, `drain`, `resume` and `running_jobs` talk to slurmctld. `local_jobs` runs
`scontrol listpids`, which the scontrol man page documents as working "only with processes on the
node on which scontrol is run": it asks the slurmstepd daemons of this node through their sockets
in SlurmdSpoolDir, not slurmctld (seen on 22.05: it answers with slurmctld stopped, when
`show node` fails with "Unable to contact slurm controller"). With no job step on the node it
prints "No job steps exist on this node." and exits 1: that is an empty answer, not an error. `version` runs `scontrol --version`, which talks to nobody.
This module imports `subprocess` (through run.py) only when one of these is called.
"""

from __future__ import annotations

import os

from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError
from slurm_scratch.record import Record

# The reason a node is resumed with. Slurm 23.11 to 25.11 clears a node's reason on resume only when
# an accounting storage plugin is configured (clusteracct_storage_g_node_up returns before clearing it
# otherwise; SchedMD ticket 25266, fixed in 26.05): without slurmdbd the old `scratch:` text stayed in
# `scontrol show node` and `sinfo %E` until the next job started there, and a drain slurmctld made
# meanwhile ("Low TmpDisk" at registration) kept that text, which the health check would take for its
# own. Resuming with this reason replaces ours; a Slurm that clears reasons on resume clears it too.
RESUMED_REASON = "volume healthy, resumed by slurm-scratch"

# The reason slurmctld drains a node with when slurmd measured less than its TmpDisk (statvfs of
# TmpFS, taken when slurmd starts or reconfigures) at registration.
LOW_TMP_DISK = "Low TmpDisk"

# Node state flags (as `scontrol show node` prints them in State=BASE+FLAG+...) meaning the node
# is on its way to or from a reboot or power saving: the health check leaves such nodes alone.
TRANSITIONAL_FLAGS = frozenset({
    "REBOOT_REQUESTED", "REBOOT_ISSUED", "REBOOT",
    "POWERED_DOWN", "POWERING_DOWN", "POWER_DOWN", "POWERING_UP", "POWER_UP", "POWERED_OFF",
})


class NodeState(Record):
    name: str
    states: frozenset  # base state and flags, upper case: {"IDLE", "DRAIN"}, {"DOWN", "NOT_RESPONDING"}
    reason: str  # "" when the node has none; without Slurm's " [user@time]" suffix
    reason_user: str
    reason_time: str  # as Slurm prints it, e.g. 2026-11-29T05:01:02; "" when unknown
    tmp_disk: int = 0  # the configured TmpDisk in MiB (what Slurm schedules --tmp on); 0: none

    @property
    def low_tmp_disk(self) -> bool:
        """Drained by slurmctld because slurmd measured less than TmpDisk at registration (and
        nothing else was low)."""
        return self.drained and self.reason == LOW_TMP_DISK

    @property
    def drained(self) -> bool:
        return "DRAIN" in self.states or "DRAINED" in self.states or "DRAINING" in self.states

    @property
    def down(self) -> bool:
        return "DOWN" in self.states or "FAIL" in self.states or "FAILING" in self.states

    @property
    def maintenance(self) -> bool:
        return "MAINTENANCE" in self.states or "MAINT" in self.states

    @property
    def transitional(self) -> bool:
        return bool(self.states & TRANSITIONAL_FLAGS) or "FUTURE" in self.states


def slurm_env(config: Config) -> dict[str, str]:
    conf = config.slurm.slurm_conf or os.environ.get("SLURM_CONF", "")
    return {"SLURM_CONF": conf} if conf else {}


def _scontrol(config: Config, *args: str, check: bool = True, timeout: float | None = None):
    from slurm_scratch import run

    timeout = config.slurm.timeout if timeout is None else timeout
    return run.run([config.slurm.scontrol, *args], timeout=timeout, env=slurm_env(config), quiet=True, check=check)


# ---- parsing `scontrol show node -o` ------------------------------------------------------------


def _state_set(text: str) -> frozenset:
    """`IDLE+DRAIN`, `DOWN*+DRAIN`, `idle~` ... -> {"IDLE", "DRAIN"}; the sinfo-style suffixes
    (* not responding, ~ powered down, # powering up, % powering down, ! pending power down,
    @ pending reboot) become the flags they stand for."""
    suffixes = {"*": "NOT_RESPONDING", "~": "POWERED_DOWN", "#": "POWERING_UP", "%": "POWERING_DOWN",
                "!": "POWER_DOWN", "@": "REBOOT_REQUESTED", "$": "MAINTENANCE", "^": "REBOOT_ISSUED"}
    states = set()
    for part in text.split("+"):
        part = part.strip()
        while part and part[-1] in suffixes:
            states.add(suffixes[part[-1]])
            part = part[:-1]
        if part:
            states.add(part.upper())
    return frozenset(states)


def _split_reason(value: str) -> tuple[str, str, str]:
    """`scratch: x [root@2026-11-29T05:01:02]` -> ("scratch: x", "root", "2026-11-29T05:01:02")."""
    value = value.strip()
    if value.endswith("]") and " [" in value:
        text, _, suffix = value.rpartition(" [")
        user, at, when = suffix[:-1].partition("@")
        if at and when[:1].isdigit() and "T" in when:
            return text.strip(), user, when
    if value in ("(null)", "none", "None"):
        return "", "", ""
    return value, "", ""


_NODE_KEYS_AFTER_REASON = (" Comment=", " Extra=", " InstanceId=", " InstanceType=", " ResumeAfterTime=",
                           " Partitions=", " BootTime=", " LastBusyTime=", " CfgTRES=", " AllocTRES=",
                           " CapWatts=", " CurrentWatts=", " AveWatts=", " ExtSensors")


def parse_show_node(text: str, name: str) -> NodeState:
    """The state of `name` from `scontrol show node -o NAME` output (one line per node)."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("NodeName="):
            continue
        node_name = line.split(None, 1)[0][len("NodeName="):]
        if node_name != name:
            continue
        state_at = line.find(" State=")
        if state_at < 0:
            raise ScratchError(f"scontrol show node {name}: no State= field in {line[:120]!r}")
        states = _state_set(line[state_at + 7 :].split(None, 1)[0] if line[state_at + 7 :].strip() else "")
        reason, user, when = "", "", ""
        reason_at = line.find(" Reason=")
        if reason_at >= 0:
            value = line[reason_at + 8 :]
            # Reason holds spaces; in one-line output it runs to its " [user@time]" suffix, or else
            # to the next field scontrol may print after it.
            end = value.find("] ")
            if end >= 0 and "@" in value[:end]:
                value = value[: end + 1]
            else:
                cut = min((value.find(key) for key in _NODE_KEYS_AFTER_REASON if value.find(key) >= 0), default=-1)
                if cut >= 0:
                    value = value[:cut]
            reason, user, when = _split_reason(value)
        tmp_disk_at = line.find(" TmpDisk=")
        tmp_disk = line[tmp_disk_at + 9 :].split(None, 1)[0] if tmp_disk_at >= 0 else "0"
        return NodeState(name=name, states=states, reason=reason, reason_user=user, reason_time=when,
                         tmp_disk=int(tmp_disk) if tmp_disk.isdigit() else 0)
    raise ScratchError(f"scontrol show node {name}: node {name!r} not in the output (is it a node of this cluster?)")


def parse_version(text: str) -> tuple[int, int]:
    """`slurm 22.05.8` / `slurm-wlm 24.11.5` / `25.11.0` -> (22, 5) / (24, 11) / (25, 11)."""
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1])
    raise ScratchError(f"cannot read a Slurm version from {text.strip()[:80]!r}")


class SlurmdStatus(Record):
    pid: int  # slurmd's PID (as this node sees it)
    tmp_disk: int  # what slurmd measured TmpFS at, MiB ("Actual temp disk space")


def parse_show_slurmd(text: str) -> SlurmdStatus:
    """`scontrol show slurmd`: `Slurmd PID = 123`, `Actual temp disk space = 975 MB` lines."""
    fields = {}
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            fields[key.strip()] = value.split()[0] if value.split() else ""
    pid, tmp_disk = fields.get("Slurmd PID", ""), fields.get("Actual temp disk space", "")
    if not pid.isdigit() or not tmp_disk.isdigit():
        raise ScratchError(f"scontrol show slurmd: no Slurmd PID or Actual temp disk space in {text.strip()[:200]!r}")
    return SlurmdStatus(pid=int(pid), tmp_disk=int(tmp_disk))


def parse_listpids(text: str) -> set[int]:
    """Job ids in `scontrol listpids` output (header `PID JOBID STEPID LOCALID GLOBALID`)."""
    jobs = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            jobs.add(int(fields[1]))
    return jobs


# ---- the scontrol backend -------------------------------------------------------------------


class ScontrolBackend:
    name = "scontrol"

    def __init__(self, config: Config) -> None:
        self.config = config

    def node_state(self, node: str) -> NodeState:
        return parse_show_node(_scontrol(self.config, "show", "node", "-o", node).stdout, node)

    def drain(self, node: str, reason: str) -> None:
        _scontrol(self.config, "update", f"nodename={node}", "state=drain", f"reason={reason}")

    def resume(self, node: str) -> None:
        _scontrol(self.config, "update", f"nodename={node}", "state=resume", f"reason={RESUMED_REASON}")


# ---- the pyslurm backend --------------------------------------------------------------------


class PyslurmBackend:
    """pyslurm >= 23.2's object API: `Node.load(name)` (or `Node(name).reload()`), `Node.modify`.
    With a `timeout`, each call runs in a forked child killed at that many seconds (None: in this
    process, unbounded)."""

    name = "pyslurm"

    def __init__(self, module, timeout: float | None = None) -> None:
        self.pyslurm = module
        self.timeout = timeout

    def _bounded(self, what: str, work) -> str:
        """`work()` (returning a str, raising ScratchError) under the timeout."""
        if self.timeout is None:
            return work()
        from slurm_scratch import timed

        result = timed.in_child(work, self.timeout)
        if result.status == "ok":
            return result.text
        if result.status == "timeout":
            raise ScratchError(f"pyslurm: {what}: no answer within [slurm] timeout = {self.timeout:g} s")
        raise ScratchError(result.text if result.kind == "ScratchError" else f"pyslurm: {what}: {result.text}")

    def _load(self, node: str):
        node_class = self.pyslurm.Node
        if hasattr(node_class, "load"):
            return node_class.load(node)
        return node_class(node).reload()

    def node_state(self, node: str) -> NodeState:
        def work() -> str:  # the fields as hex: the child's one line of answer keeps no spaces
            try:
                loaded = self._load(node)
            except Exception as exc:  # pyslurm raises its own RPCError
                raise ScratchError(f"pyslurm: cannot load node {node}: {exc}") from None
            reason = str(loaded.reason or "")
            fields = (str(loaded.state or ""), reason if reason != "(null)" else "",
                      str(getattr(loaded, "reason_user", "") or ""), str(getattr(loaded, "reason_time", "") or ""),
                      str(getattr(loaded, "temporary_disk", 0) or 0))
            return ",".join(field.encode("utf-8", errors="replace").hex() for field in fields)

        answer = self._bounded(f"load node {node}", work).split(",")
        if len(answer) != 5:
            raise ScratchError(f"pyslurm: load node {node}: unexpected answer {answer!r}")
        state, reason, user, when, tmp_disk = (bytes.fromhex(field).decode("utf-8", errors="replace") for field in answer)
        return NodeState(name=node, states=_state_set(state), reason=reason, reason_user=user, reason_time=when,
                         tmp_disk=int(tmp_disk) if tmp_disk.isdigit() else 0)

    def _modify(self, node: str, **changes: str) -> None:
        def work() -> str:
            try:
                self.pyslurm.Node(node).modify(self.pyslurm.Node(**changes))
            except Exception as exc:
                raise ScratchError(f"pyslurm: cannot update node {node} ({changes}): {exc}") from None
            return ""

        self._bounded(f"update node {node}", work)

    def drain(self, node: str, reason: str) -> None:
        self._modify(node, state="DRAIN", reason=reason)

    def resume(self, node: str) -> None:
        self._modify(node, state="RESUME", reason=RESUMED_REASON)


def slurmd_status(config: Config, timeout: float | None = None) -> SlurmdStatus:
    """This node's slurmd (`scontrol show slurmd`: answered by the local slurmd, not slurmctld)."""
    return parse_show_slurmd(_scontrol(config, "show", "slurmd", timeout=timeout).stdout)


def remeasure_tmp_disk(config: Config, wanted: int, status: SlurmdStatus | None = None) -> int:
    """Make this node's slurmd measure TmpFS again when it measured less than `wanted` MiB (the
    node's TmpDisk): slurmd measures only when it starts or reconfigures, and registers that
    value, so a node resumed after the volume came back would be drained again with "Low TmpDisk".
    SIGHUP is slurmd's own reconfigure (22.05 re-reads its config in place; 23.11 and later
    re-execute slurmd, running jobs kept). All of it within [slurm] timeout; returns what slurmd
    measures now. ScratchError when slurmd cannot be asked or still measures less. `status`: what
    `slurmd_status` just said, if the caller asked."""
    import signal
    import time

    deadline = time.monotonic() + config.slurm.timeout
    status = status or slurmd_status(config)
    if status.tmp_disk >= wanted:
        return status.tmp_disk
    from slurm_scratch import log

    log.info(f"slurmd measured {status.tmp_disk} MiB of TmpFS, {wanted} wanted: telling it to measure again (SIGHUP)")
    try:
        os.kill(status.pid, signal.SIGHUP)
    except OSError as exc:
        raise ScratchError(f"cannot signal slurmd (PID {status.pid}) to measure TmpFS again: {exc.strerror}") from None
    while time.monotonic() < deadline - 0.2:
        time.sleep(0.2)
        try:  # refused while a re-executed slurmd starts
            status = slurmd_status(config, timeout=max(deadline - time.monotonic(), 0.1))
        except ScratchError:
            continue
        if status.tmp_disk >= wanted:
            return status.tmp_disk
    raise ScratchError(f"slurmd still measures {status.tmp_disk} MiB of TmpFS after SIGHUP ({wanted} wanted)")


def version(config: Config) -> tuple[int, int]:
    """The installed Slurm's version (`scontrol --version`: local, no RPC)."""
    return parse_version(_scontrol(config, "--version").stdout)


def _import_pyslurm():
    try:
        import pyslurm  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - a broken build raises more than ImportError
        return None
    return pyslurm


def pyslurm_version(module) -> tuple[int, int] | None:
    text = getattr(module, "__version__", None)
    if text is None and callable(getattr(module, "version", None)):
        text = module.version()
    try:
        return parse_version(str(text)) if text else None
    except ScratchError:
        return None


def backend(config: Config):
    """The backend `[slurm] api` asks for: auto = pyslurm when it imports and matches Slurm."""
    if config.slurm.api == "scontrol":
        return ScontrolBackend(config)
    module = _import_pyslurm()
    if module is None:
        if config.slurm.api == "pyslurm":
            raise ScratchError("[slurm] api = pyslurm, but `import pyslurm` fails")
        return ScontrolBackend(config)
    wanted = version(config)
    found = pyslurm_version(module)
    if found == wanted:
        return PyslurmBackend(module, config.slurm.timeout)
    message = f"pyslurm {'.'.join(map(str, found)) if found else '(unknown version)'} does not match Slurm {wanted[0]}.{wanted[1]:02d}"
    if config.slurm.api == "pyslurm":
        raise ScratchError(f"[slurm] api = pyslurm: {message}")
    from slurm_scratch import log

    log.info(f"{message}: using scontrol")
    return ScontrolBackend(config)


# ---- jobs -----------------------------------------------------------------------------------


def running_jobs(config: Config, node: str) -> set[int]:
    """Ids of the jobs Slurm has on `node` (any state but finished); ScratchError if Slurm cannot say."""
    from slurm_scratch import run

    result = run.run(
        [config.slurm.squeue, "--noheader", "--nodelist", node, "--format", "%A"],
        timeout=config.slurm.timeout,
        env=slurm_env(config),
        quiet=True,
    )
    jobs = set()
    for line in result.stdout.split():
        if not line.isdigit():
            raise ScratchError(f"squeue printed {line!r} where a job id was expected")
        jobs.add(int(line))
    return jobs


def local_jobs(config: Config, node: str) -> set[int]:
    """Ids of the jobs with processes on this node, from `scontrol listpids` (this node's
    slurmstepd daemons, not slurmctld); ScratchError if scontrol cannot say."""
    result = _scontrol(config, "listpids", "*", node, check=False)
    if result.returncode != 0 and "No job steps exist" not in result.stdout + result.stderr:
        raise ScratchError(f"scontrol listpids exited with {result.returncode}: {(result.stderr or result.stdout).strip()[:200]}")
    return parse_listpids(result.stdout)
