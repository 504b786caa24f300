"""Drain and resume, NHC-style, with the fewest possible calls to slurmctld.

The decision is a pure function, `decide(desired, node, prefix, hook_pending, tmp_disk_explained)`:
the drain reason the health check wants (None when healthy), the node as Slurm sees it, whether a
hook finding of ours is pending (a Prolog or Epilog that failed on a broken volume), and whether a
"Low TmpDisk" drain is the volume's doing (`explains_low_tmp_disk`: slurm.conf's TmpFS is the
mount point, and the volume is missing now, or is healthy and holds the node's TmpDisk: slurmd
measured TmpFS while the volume was missing) -> one Action (none, drain, resume). Its rules:

- A node that is rebooting, powering up or down, or powered down (power save) is left alone.
- Unhealthy: a node drained with our prefix gets our current reason (if it differs); a node that is
  not drained, down or in maintenance is drained with `<prefix> <finding>`; a node drained with
  "Prolog error" or "Epilog error" while a hook finding of ours is pending gets our specific reason
  instead (so that it can be resumed automatically later), and so does a "Low TmpDisk" drain the
  volume explains; any other drained/down/maintenance node keeps its reason: nothing appended,
  nothing resumed.
- Healthy: a node drained with a reason that starts with our prefix is resumed; a node drained
  with "Prolog error" or "Epilog error" while a hook finding of ours is pending is resumed (that
  failure was ours and the volume is healthy now), and so is a "Low TmpDisk" the volume explains;
  every other reason is never resumed: a "Prolog error" or "Epilog error" with no finding of ours
  pending, a "Low TmpDisk" of a TmpFS that is not the volume, are an admin's business.

Before a resume of a node whose TmpFS is the volume, slurmd is made to measure it again when it
measured less than the node's TmpDisk (slurm.remeasure_tmp_disk: slurmd measures only when it
starts or reconfigures, and the registration a resume asks for would drain it again); `setup` does
the same when it mounts the volume under a running slurmd (`slurmd_measures_the_volume`), since
slurmctld sends no health check to a node it found invalid at registration. The resume
itself sets a reason of its own (slurm.RESUMED_REASON): Slurm 23.11 to 25.11 without accounting
storage keep the old reason after a resume.

The Prolog and Epilog never call Slurm: when the volume is broken (not mountable, read-only, EIO,
hung) they write their finding to /run/slurm-scratch/hook-finding (`record_hook_finding`) and
fail; slurmctld then drains the node with "Prolog error" or "Epilog error". That finding stays
pending until a health check has replaced or resumed such a reason with it, or for
HOOK_PENDING_SECONDS (slurmctld shows the reason only after slurmd reports the failed hook, maybe
after the next health check has run). The released version wrote /run/slurm-scratch/prolog-finding
(same format): it is read too, so that a finding pending across an upgrade is not lost.

Scale: `needs_slurm` says whether Slurm must be asked at all. What the tool did is remembered in
/run/slurm-scratch/health.state (what it found, what it drained with, when it last asked). A
healthy node whose last exchange left it healthy and not drained by us sends no RPC. Slurm is
asked (`scontrol show node`, then `update` if the decision says so) when: there is no memory
(first check since boot: /run is empty after a reboot, and a node we drained before the reboot
must still be resumed); the finding changed (appeared, cleared, or different); a hook finding is
pending; the node is unhealthy and not drained by us (another reason holds it, and an admin may
lift that at any time); or the node is unhealthy and the last look is older than CONFIRM_SECONDS
(an admin may have resumed a node we drained: it is drained again). When Slurm cannot be asked, nothing is
remembered, so the next health check asks again.
"""

from __future__ import annotations

import os
import time

from slurm_scratch.errors import ScratchError
from slurm_scratch.layout import HEALTH_STATE as STATE_FILE
from slurm_scratch.layout import HOOK_FINDING as HOOK_FILE
from slurm_scratch.layout import RELEASED_HOOK_FINDING as RELEASED_HOOK_FILE
from slurm_scratch.record import Record
from slurm_scratch.statefile import one_line as _one_line
from slurm_scratch.statefile import number, read_fields, write_fields

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: a healthy node's check never needs the Slurm backend
    from slurm_scratch.health.slurm import NodeState

CONFIRM_SECONDS = 300.0
# A hook finding stays pending this long even when Slurm does not (yet) show "Prolog error" or
# "Epilog error": slurmctld sets that reason only after slurmd reports the failed hook.
HOOK_PENDING_SECONDS = 300.0
# The reasons slurmctld drains a node with when a Prolog or Epilog exits non-zero.
HOOK_ERRORS = ("Prolog error", "Epilog error")


class Memory(Record):
    finding: str  # the drain reason the last exchange with Slurm was about; "" = healthy
    drained: str  # the reason this tool left the node drained with; "" = not drained by us
    confirmed: float  # time.time() of that exchange


class HookFinding(Record):
    time: float
    finding: str
    hook: str  # "prolog", "epilog", or "" (unknown, or written by the released version)
    path: str  # the file it was read from


class Action(Record):
    kind: str  # "none", "drain" or "resume"
    reason: str  # drain: the reason to set; resume: the reason being cleared
    why: str  # one line for the log
    drained: str  # what to remember as drained by us once the action succeeded
    hook_handled: bool  # the pending hook finding is dealt with (forget it)


# ---- the decision (pure) --------------------------------------------------------------------


def reason_for(finding_text: str, prefix: str) -> str:
    return f"{prefix} {finding_text}"


def needs_slurm(desired: str | None, memory: Memory | None, hook_pending: bool, now: float) -> bool:
    if memory is None or hook_pending:
        return True
    if (desired or "") != memory.finding:
        return True
    if desired is not None and memory.drained != desired:
        return True  # broken but not drained by us (another reason holds it): that may end any time
    if desired is not None and now - memory.confirmed >= CONFIRM_SECONDS:
        return True
    return False


def decide(desired: str | None, node: NodeState, prefix: str, hook_pending: bool, tmp_disk_explained: bool = False) -> Action:
    ours = node.reason.startswith(prefix)
    hook_error = node.reason.startswith(HOOK_ERRORS)
    held = node.drained or node.down or node.maintenance

    def action(kind: str, reason: str, why: str, drained: str, hook_handled: bool = False) -> Action:
        return Action(kind=kind, reason=reason, why=why, drained=drained, hook_handled=hook_handled)

    if node.transitional:
        flags = "+".join(sorted(node.states))
        return action("none", "", f"node is {flags}: left alone", node.reason if ours and node.drained else "")
    if desired is not None:
        if node.drained and ours:
            if node.reason == desired:
                return action("none", "", f"already drained: {desired}", desired)
            return action("drain", desired, f"drained with {node.reason!r}; the finding is now {desired!r}", desired)
        if node.drained and hook_error and hook_pending:
            return action("drain", desired, f"replacing {node.reason!r} (our hook's failure) with {desired!r}", desired, True)
        if tmp_disk_explained and node.low_tmp_disk:
            return action("drain", desired, f"replacing {node.reason!r} (slurmd measured TmpFS without the volume) with {desired!r}", desired)
        if held:
            state = "drained" if node.drained else "down" if node.down else "in maintenance"
            return action("none", "", f"node already {state} ({node.reason or 'no reason'}): keeping that", "")
        return action("drain", desired, f"draining: {desired}", desired)
    if node.drained and ours:
        return action("resume", node.reason, f"healthy again: resuming (was {node.reason!r})", "")
    if node.drained and hook_error and hook_pending:
        return action("resume", node.reason, f"healthy: resuming {node.reason!r} (our hook's failure, now repaired)", "", True)
    if tmp_disk_explained and node.low_tmp_disk:
        return action("resume", node.reason, f"healthy: resuming {node.reason!r} (the volume holds TmpDisk={node.tmp_disk} again)", "")
    if node.drained or node.down:
        return action("none", "", f"healthy; the node keeps {node.reason or 'its state'!r} (not ours)", "")
    return action("none", "", "healthy", "")


# ---- local memory ---------------------------------------------------------------------------


def load_memory() -> Memory | None:
    fields = read_fields(STATE_FILE)
    if fields is None:
        return None
    return Memory(finding=fields.get("finding", ""), drained=fields.get("drained", ""), confirmed=number(fields.get("confirmed")))


def save_memory(memory: Memory) -> None:
    write_fields(STATE_FILE, memory.as_dict())


def record_hook_finding(finding: str, now: float | None = None, hook: str = "") -> None:
    """What the Prolog or Epilog does when the volume is broken: one small file, no Slurm call."""
    fields = {"time": time.time() if now is None else now, "finding": _one_line(finding)[:400]}
    if hook:
        fields["hook"] = hook
    write_fields(HOOK_FILE, fields)


def _load_finding(path: str) -> HookFinding | None:
    try:
        fields = read_fields(path)
    except OSError:  # not a regular file we can read: no finding of ours
        return None
    if fields is None:
        return None
    return HookFinding(time=number(fields.get("time")), finding=fields.get("finding", ""), hook=fields.get("hook", ""), path=path)


def load_hook_finding() -> HookFinding | None:
    """The pending hook finding: ours, else the released version's (the newer when both exist)."""
    found = [finding for finding in (_load_finding(HOOK_FILE), _load_finding(RELEASED_HOOK_FILE)) if finding is not None]
    return max(found, key=lambda finding: finding.time) if found else None


def forget_hook_finding(seen: HookFinding) -> None:
    """Remove the hook finding(s), unless a newer one replaced it meanwhile."""
    for path in (HOOK_FILE, RELEASED_HOOK_FILE):
        current = _load_finding(path)
        if current is not None and current.time <= seen.time:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


# ---- one reconciliation -----------------------------------------------------------------------


def tmp_fs_is_the_volume(config) -> bool:
    """slurm.conf's TmpFS is the volume's mount point (False when slurm.conf cannot be read here,
    e.g. a configless node: then no TmpDisk matter is the tool's)."""
    from slurm_scratch import slurmconf

    try:
        tmp = slurmconf.read(slurmconf.conf_path(config.slurm.slurm_conf), "")
    except (OSError, ScratchError):
        return False
    return os.path.normpath(tmp.tmp_fs) == os.path.normpath(config.volume.mount_point)


def explains_low_tmp_disk(config, state: NodeState, check: str) -> bool:
    """Whether a "Low TmpDisk" drain is the volume's doing: slurmd measures TmpFS, which is the
    mount point, and either the volume is missing or not ours there now (the mount finding), or it
    is healthy and holds the node's TmpDisk (so slurmd measured it while it was missing)."""
    if not state.low_tmp_disk or check not in ("mount", "healthy") or not tmp_fs_is_the_volume(config):
        return False
    if check == "mount":
        return True
    from slurm_scratch import slurmconf

    volume = slurmconf.volume_mib(config.volume.mount_point)
    return volume is not None and volume >= state.tmp_disk


def slurmd_measures_the_volume(config) -> None:
    """After setup mounted the volume on a node whose slurmd runs (a repair): slurmd measured TmpFS,
    the mount point, without it and registers that, and slurmctld (23.11 and later) sends no health
    check to a node it drained with "Low TmpDisk" for it, so nothing would resume the node. Make
    slurmd measure again (its registration then clears that state; the next health check resumes the
    node). Nothing when TmpFS is not the mount point or slurmd does not run (setup at boot)."""
    from slurm_scratch import log, slurmconf
    from slurm_scratch.health import slurm

    volume = slurmconf.volume_mib(config.volume.mount_point)
    if volume is None or not tmp_fs_is_the_volume(config):
        return
    try:
        status = slurm.slurmd_status(config)
    except ScratchError:
        return  # no slurmd here (yet): it will measure the volume when it starts
    try:
        slurm.remeasure_tmp_disk(config, volume, status)
    except ScratchError as exc:
        log.warning(f"setup: {exc}")


def reconcile(config, node: str, finding_text: str | None, now: float | None = None, check: str = "") -> Action | None:
    """Bring the node's Slurm state in line with the health check's finding (None = healthy;
    `check`: the check that found it, e.g. "mount").

    Returns the Action taken, or None when Slurm was not asked (nothing changed). Raises
    ScratchError when Slurm could not be asked or refused; the memory is then left as it was, so
    that the next health check tries again.
    """
    now = time.time() if now is None else now
    prefix = config.slurm.drain_prefix
    desired = reason_for(finding_text, prefix) if finding_text is not None else None
    memory = load_memory()
    pending = load_hook_finding()
    if not needs_slurm(desired, memory, pending is not None, now):
        return None
    from slurm_scratch import log
    from slurm_scratch.health import slurm

    backend = slurm.backend(config)
    state = backend.node_state(node)
    explained = explains_low_tmp_disk(config, state, "healthy" if desired is None else check)
    action = decide(desired, state, prefix, pending is not None, explained)
    why = action.why
    if action.hook_handled and pending is not None:
        why += f"; the {pending.hook or 'hook'} found: {pending.finding}"
    if action.kind == "drain":
        backend.drain(node, action.reason)
        log.warning(f"healthcheck: drained {node}: {action.reason} ({why})")
    elif action.kind == "resume":
        if state.tmp_disk and (explained or tmp_fs_is_the_volume(config)):
            slurm.remeasure_tmp_disk(config, state.tmp_disk)  # else its registration drains again
        backend.resume(node)
        log.info(f"healthcheck: resumed {node} ({why})")
    elif desired is not None or (memory is not None and memory.drained):
        log.info(f"healthcheck: {node}: {action.why}")
    save_memory(Memory(finding=desired or "", drained=action.drained, confirmed=now))
    if pending is not None and (action.hook_handled or now - pending.time >= HOOK_PENDING_SECONDS):
        forget_hook_finding(pending)
    return action
