"""Drain and resume, NHC-style, with the fewest possible calls to slurmctld.

The decision is a pure function, `decide(desired, node, prefix, prolog_pending)`: the drain reason
the health check wants (None when healthy), the node as Slurm sees it, and whether a Prolog failure
of ours is pending -> one Action (none, drain, resume). Its rules:

- A node that is rebooting, powering up or down, or powered down (power save) is left alone.
- Unhealthy: a node drained with our prefix gets our current reason (if it differs); a node that is
  not drained, down or in maintenance is drained with `<prefix> <finding>`; a node drained with
  "Prolog error" while a Prolog failure of ours is pending gets our specific reason instead (so
  that it can be resumed automatically later); any other drained/down/maintenance node keeps its
  reason: nothing appended, nothing resumed.
- Healthy: a node drained with a reason that starts with our prefix is resumed; a node drained
  with "Prolog error" while a Prolog failure of ours is pending is resumed (that failure was ours
  and the volume is healthy now); every other reason is never resumed.

The Prolog never calls Slurm: when the volume is broken at job start it writes its finding to
/run/slurm-scratch/prolog-finding (`record_prolog_finding`) and fails; slurmctld then drains the
node with "Prolog error". That finding stays pending until a health check has replaced or resumed
a "Prolog error" with it, or for PROLOG_PENDING_SECONDS (slurmctld may show "Prolog error" only
after the next health check has run).

Scale: `needs_slurm` says whether Slurm must be asked at all. What the tool did is remembered in
/run/slurm-scratch/health.state (what it found, what it drained with, when it last asked). A
healthy node whose last exchange left it healthy and not drained by us sends no RPC. Slurm is
asked (`scontrol show node`, then `update` if the decision says so) when: there is no memory
(first check since boot: /run is empty after a reboot, and a node we drained before the reboot
must still be resumed); the finding changed (appeared, cleared, or different); a Prolog failure is
pending; the node is unhealthy and not drained by us (another reason holds it, and an admin may
lift that at any time); or the node is unhealthy and the last look is older than CONFIRM_SECONDS
(an admin may have resumed a node we drained: it is drained again). When Slurm cannot be asked, nothing is
remembered, so the next health check asks again.
"""

from __future__ import annotations

import os
import time

from slurm_scratch.record import Record
from slurm_scratch.slurm import NodeState

RUN_DIR = "/run/slurm-scratch"
STATE_FILE = f"{RUN_DIR}/health.state"
PROLOG_FILE = f"{RUN_DIR}/prolog-finding"
CONFIRM_SECONDS = 300.0
# A Prolog finding stays pending this long even when Slurm does not (yet) show "Prolog error":
# slurmctld sets that reason only after slurmd reports the failed Prolog.
PROLOG_PENDING_SECONDS = 300.0
PROLOG_ERROR = "Prolog error"


class Memory(Record):
    finding: str  # the drain reason the last exchange with Slurm was about; "" = healthy
    drained: str  # the reason this tool left the node drained with; "" = not drained by us
    confirmed: float  # time.time() of that exchange


class PrologFinding(Record):
    time: float
    finding: str


class Action(Record):
    kind: str  # "none", "drain" or "resume"
    reason: str  # drain: the reason to set; resume: the reason being cleared
    why: str  # one line for the log
    drained: str  # what to remember as drained by us once the action succeeded
    prolog_handled: bool  # the pending Prolog finding is dealt with (forget it)


# ---- the decision (pure) --------------------------------------------------------------------


def reason_for(finding_text: str, prefix: str) -> str:
    return f"{prefix} {finding_text}"


def needs_slurm(desired: str | None, memory: Memory | None, prolog_pending: bool, now: float) -> bool:
    if memory is None or prolog_pending:
        return True
    if (desired or "") != memory.finding:
        return True
    if desired is not None and memory.drained != desired:
        return True  # broken but not drained by us (another reason holds it): that may end any time
    if desired is not None and now - memory.confirmed >= CONFIRM_SECONDS:
        return True
    return False


def decide(desired: str | None, node: NodeState, prefix: str, prolog_pending: bool) -> Action:
    ours = node.reason.startswith(prefix)
    prolog_error = node.reason.startswith(PROLOG_ERROR)
    held = node.drained or node.down or node.maintenance

    def action(kind: str, reason: str, why: str, drained: str, prolog_handled: bool = False) -> Action:
        return Action(kind=kind, reason=reason, why=why, drained=drained, prolog_handled=prolog_handled)

    if node.transitional:
        flags = "+".join(sorted(node.states))
        return action("none", "", f"node is {flags}: left alone", node.reason if ours and node.drained else "")
    if desired is not None:
        if node.drained and ours:
            if node.reason == desired:
                return action("none", "", f"already drained: {desired}", desired)
            return action("drain", desired, f"drained with {node.reason!r}; the finding is now {desired!r}", desired)
        if node.drained and prolog_error and prolog_pending:
            return action("drain", desired, f"replacing {node.reason!r} (our Prolog failure) with {desired!r}", desired, True)
        if held:
            state = "drained" if node.drained else "down" if node.down else "in maintenance"
            return action("none", "", f"node already {state} ({node.reason or 'no reason'}): keeping that", "")
        return action("drain", desired, f"draining: {desired}", desired)
    if node.drained and ours:
        return action("resume", node.reason, f"healthy again: resuming (was {node.reason!r})", "")
    if node.drained and prolog_error and prolog_pending:
        return action("resume", node.reason, f"healthy: resuming {node.reason!r} (our Prolog failure, now repaired)", "", True)
    if node.drained or node.down:
        return action("none", "", f"healthy; the node keeps {node.reason or 'its state'!r} (not ours)", "")
    return action("none", "", "healthy", "")


# ---- local memory ---------------------------------------------------------------------------


def read_fields(path: str) -> dict[str, str] | None:
    """A small `key=value` per line state file (None when there is none); cheaper than JSON."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read()
    except FileNotFoundError:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value
    return fields


def write_fields(path: str, fields: dict[str, object]) -> None:
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    text = "".join(f"{key}={_one_line(str(value))}\n" for key, value in fields.items())
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode("utf-8", errors="replace"))
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _float(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def load_memory() -> Memory | None:
    fields = read_fields(STATE_FILE)
    if fields is None:
        return None
    return Memory(finding=fields.get("finding", ""), drained=fields.get("drained", ""), confirmed=_float(fields.get("confirmed")))


def save_memory(memory: Memory) -> None:
    write_fields(STATE_FILE, memory.as_dict())


def record_prolog_finding(finding: str, now: float | None = None) -> None:
    """What the Prolog does when the volume is broken at job start: one small file, no Slurm call."""
    write_fields(PROLOG_FILE, {"time": time.time() if now is None else now, "finding": _one_line(finding)[:400]})


def load_prolog_finding() -> PrologFinding | None:
    fields = read_fields(PROLOG_FILE)
    if fields is None:
        return None
    return PrologFinding(time=_float(fields.get("time")), finding=fields.get("finding", ""))


def forget_prolog_finding(seen: PrologFinding) -> None:
    """Remove the Prolog finding, unless a newer one replaced it meanwhile."""
    if load_prolog_finding() == seen:
        try:
            os.unlink(PROLOG_FILE)
        except FileNotFoundError:
            pass


# ---- one reconciliation -----------------------------------------------------------------------


def reconcile(config, node: str, finding_text: str | None, now: float | None = None) -> Action | None:
    """Bring the node's Slurm state in line with the health check's finding (None = healthy).

    Returns the Action taken, or None when Slurm was not asked (nothing changed). Raises
    ScratchError when Slurm could not be asked or refused; the memory is then left as it was, so
    that the next health check tries again.
    """
    from slurm_scratch import log, slurm

    now = time.time() if now is None else now
    prefix = config.slurm.drain_prefix
    desired = reason_for(finding_text, prefix) if finding_text is not None else None
    memory = load_memory()
    prolog = load_prolog_finding()
    if not needs_slurm(desired, memory, prolog is not None, now):
        return None
    backend = slurm.backend(config)
    state = backend.node_state(node)
    action = decide(desired, state, prefix, prolog is not None)
    if action.kind == "drain":
        backend.drain(node, action.reason)
        log.warning(f"healthcheck: drained {node}: {action.reason} ({action.why})")
    elif action.kind == "resume":
        backend.resume(node)
        log.info(f"healthcheck: resumed {node} ({action.why})")
    elif desired is not None or (memory is not None and memory.drained):
        log.info(f"healthcheck: {node}: {action.why}")
    save_memory(Memory(finding=desired or "", drained=action.drained, confirmed=now))
    if prolog is not None and (action.prolog_handled or now - prolog.time >= PROLOG_PENDING_SECONDS):
        forget_prolog_finding(prolog)
    return action
