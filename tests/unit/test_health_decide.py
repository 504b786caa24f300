"""The drain/resume decision (state in, action out) and when Slurm is asked at all."""

from __future__ import annotations

import pytest

from slurm_scratch.health import drain
from slurm_scratch.health.slurm import NodeState

PREFIX = "scratch:"
BROKEN = "scratch: /scratch not mounted"


def node(states: str, reason: str = "") -> NodeState:
    return NodeState(name="n1", states=frozenset(states.split("+")), reason=reason, reason_user="", reason_time="")


@pytest.mark.parametrize(
    "desired, state, reason, pending, kind, new_reason",
    [
        # unhealthy
        (BROKEN, "IDLE", "", False, "drain", BROKEN),
        (BROKEN, "ALLOCATED", "", False, "drain", BROKEN),
        (BROKEN, "IDLE+RESERVED", "", False, "drain", BROKEN),
        (BROKEN, "IDLE+DRAIN", BROKEN, False, "none", ""),
        (BROKEN, "IDLE+DRAIN", "scratch: /scratch read-only", False, "drain", BROKEN),
        (BROKEN, "IDLE+DRAIN", "maintenance by admin", False, "none", ""),
        (BROKEN, "DOWN+NOT_RESPONDING", "Not responding", False, "none", ""),
        (BROKEN, "IDLE+MAINTENANCE+RESERVED", "", False, "none", ""),
        (BROKEN, "IDLE+DRAIN", "Prolog error", False, "none", ""),
        (BROKEN, "IDLE+DRAIN", "Prolog error", True, "drain", BROKEN),
        (BROKEN, "IDLE+DRAIN", "Epilog error", False, "none", ""),
        (BROKEN, "IDLE+DRAIN", "Epilog error", True, "drain", BROKEN),
        (BROKEN, "MIXED+DRAIN", "Epilog error", True, "drain", BROKEN),
        (BROKEN, "DOWN", "Epilog error", True, "none", ""),
        (BROKEN, "IDLE+POWERED_DOWN", "", False, "none", ""),
        (BROKEN, "IDLE+REBOOT_REQUESTED", "", False, "none", ""),
        # healthy
        (None, "IDLE", "", False, "none", ""),
        (None, "IDLE+DRAIN", BROKEN, False, "resume", BROKEN),
        (None, "MIXED+DRAIN", "scratch: probe timed out after 10 s", False, "resume", "scratch: probe timed out after 10 s"),
        (None, "IDLE+DRAIN", "maintenance by admin", False, "none", ""),
        (None, "IDLE+DRAIN", "Prolog error", False, "none", ""),
        (None, "IDLE+DRAIN", "Prolog error", True, "resume", "Prolog error"),
        (None, "IDLE+DRAIN", "Epilog error", False, "none", ""),
        (None, "IDLE+DRAIN", "Epilog error", True, "resume", "Epilog error"),
        (None, "IDLE", "", True, "none", ""),
        (None, "IDLE+DRAIN", "Epilogue trouble (admin)", True, "none", ""),
        (None, "IDLE+DRAIN+REBOOT_REQUESTED", "Epilog error", True, "none", ""),
        (None, "DOWN", "scratch: /scratch not mounted", False, "none", ""),
        (None, "IDLE+DRAIN+REBOOT_ISSUED", BROKEN, False, "none", ""),
        (None, "IDLE+DRAIN+POWERING_DOWN", BROKEN, False, "none", ""),
    ],
)
def test_decide(desired, state, reason, pending, kind, new_reason) -> None:
    action = drain.decide(desired, node(state, reason), PREFIX, pending)
    assert (action.kind, action.reason) == (kind, new_reason), action.why


LOW = "Low TmpDisk"


@pytest.mark.parametrize(
    "desired, state, reason, explained, kind, new_reason",
    [
        # the volume explains it: replaced with our reason while broken, resumed once healthy
        (BROKEN, "IDLE+DRAIN", LOW, True, "drain", BROKEN),
        (None, "IDLE+DRAIN", LOW, True, "resume", LOW),
        # it does not (TmpFS is another filesystem, the volume is smaller than TmpDisk): Slurm's
        (BROKEN, "IDLE+DRAIN", LOW, False, "none", ""),
        (None, "IDLE+DRAIN", LOW, False, "none", ""),
        # only a drain with exactly that reason
        (None, "IDLE+DRAIN", "Low RealMemory (reported:1 < 90.00% of configured:100), Low TmpDisk", True, "none", ""),
        (None, "IDLE+DRAIN", "admin: Low TmpDisk expected", True, "none", ""),
        (None, "DOWN", LOW, True, "none", ""),
        (None, "IDLE", "", True, "none", ""),
    ],
)
def test_a_low_tmp_disk_drain_the_volume_explains_is_ours(desired, state, reason, explained, kind, new_reason) -> None:
    action = drain.decide(desired, node(state, reason), PREFIX, False, explained)
    assert (action.kind, action.reason) == (kind, new_reason), action.why
    assert action.drained == (desired if kind == "drain" else "")


def test_the_prefix_is_a_plain_prefix() -> None:
    # "scratchy ..." starts with "scratch" but not with the configured "scratch:" prefix.
    assert drain.decide(None, node("IDLE+DRAIN", "scratchy disk"), "scratch:", False).kind == "none"


def test_what_is_remembered_as_drained_by_us() -> None:
    assert drain.decide(BROKEN, node("IDLE"), PREFIX, False).drained == BROKEN
    assert drain.decide(BROKEN, node("IDLE+DRAIN", BROKEN), PREFIX, False).drained == BROKEN
    assert drain.decide(BROKEN, node("IDLE+DRAIN", "admin"), PREFIX, False).drained == ""
    assert drain.decide(None, node("IDLE+DRAIN", BROKEN), PREFIX, False).drained == ""


@pytest.mark.parametrize("hook_error", ["Prolog error", "Epilog error"])
def test_hook_finding_is_handled_only_where_a_hook_error_was_replaced_or_resumed(hook_error) -> None:
    assert drain.decide(BROKEN, node("IDLE+DRAIN", hook_error), PREFIX, True).hook_handled
    assert drain.decide(None, node("IDLE+DRAIN", hook_error), PREFIX, True).hook_handled
    assert drain.decide(BROKEN, node("IDLE+DRAIN", hook_error), PREFIX, True).drained == BROKEN
    # Slurm may not show the hook's error yet (or our reason holds the node): keep it pending.
    assert not drain.decide(BROKEN, node("IDLE"), PREFIX, True).hook_handled
    assert not drain.decide(None, node("IDLE"), PREFIX, True).hook_handled
    assert not drain.decide(BROKEN, node("IDLE+DRAIN", BROKEN), PREFIX, True).hook_handled


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(drain, "HOOK_FILE", str(tmp_path / "hook-finding"))
    monkeypatch.setattr(drain, "RELEASED_HOOK_FILE", str(tmp_path / "prolog-finding"))
    return tmp_path


def test_hook_finding_names_its_hook_and_is_forgotten_only_up_to_what_was_seen(run_dir) -> None:
    drain.record_hook_finding("/scratch read-only", now=100.0, hook="epilog")
    seen = drain.load_hook_finding()
    assert (seen.finding, seen.hook, seen.time) == ("/scratch read-only", "epilog", 100.0)
    drain.record_hook_finding("/scratch: Input/output error", now=200.0, hook="prolog")  # a newer one
    drain.forget_hook_finding(seen)
    assert drain.load_hook_finding().finding == "/scratch: Input/output error"
    drain.forget_hook_finding(drain.load_hook_finding())
    assert drain.load_hook_finding() is None


def test_the_released_versions_prolog_finding_is_read_and_forgotten(run_dir) -> None:
    (run_dir / "prolog-finding").write_text("time=100.5\nfinding=/scratch is not mounted and setup failed\n")
    seen = drain.load_hook_finding()
    assert (seen.finding, seen.hook, seen.time) == ("/scratch is not mounted and setup failed", "", 100.5)
    drain.forget_hook_finding(seen)
    assert not (run_dir / "prolog-finding").exists() and drain.load_hook_finding() is None


def test_a_hook_finding_that_is_not_a_regular_file_is_no_finding(run_dir) -> None:
    (run_dir / "hook-finding").mkdir()
    assert drain.load_hook_finding() is None


def memory(finding: str = "", drained: str = "", confirmed: float = 1000.0) -> drain.Memory:
    return drain.Memory(finding=finding, drained=drained, confirmed=confirmed)


def test_healthy_node_not_drained_by_us_asks_nobody() -> None:
    assert not drain.needs_slurm(None, memory(), False, now=1000.0 + 10**6)


@pytest.mark.parametrize(
    "desired, remembered, pending, now, asks",
    [
        (None, None, False, 1000.0, True),  # first check since boot: /run is empty
        (BROKEN, memory(), False, 1010.0, True),  # a finding appeared
        (None, memory(BROKEN, BROKEN), False, 1010.0, True),  # it cleared while we had drained
        ("scratch: /scratch read-only", memory(BROKEN, BROKEN), False, 1010.0, True),  # it changed
        (BROKEN, memory(BROKEN, BROKEN), False, 1010.0, False),  # same finding, recently confirmed
        (BROKEN, memory(BROKEN, ""), False, 1010.0, True),  # broken, held by another reason: ask again
        (BROKEN, memory(BROKEN, BROKEN), False, 1000.0 + drain.CONFIRM_SECONDS, True),  # re-confirm
        (None, memory(), True, 1010.0, True),  # a hook finding (failed Prolog or Epilog) is pending
        (BROKEN, memory(BROKEN, BROKEN), True, 1010.0, True),  # ... even while drained by us
    ],
)
def test_needs_slurm(desired, remembered, pending, now, asks) -> None:
    assert drain.needs_slurm(desired, remembered, pending, now) is asks


def _low(tmp_disk: int = 1000):
    return NodeState(name="n1", states=frozenset({"IDLE", "DRAIN"}), reason="Low TmpDisk", reason_user="slurm",
                     reason_time="", tmp_disk=tmp_disk)


@pytest.mark.parametrize(
    "tmp_fs, check, volume, explained",
    [
        ("/scratch", "mount", None, True),  # slurmd measured /scratch while the volume was missing
        ("/scratch", "healthy", 1000, True),  # it is back and holds TmpDisk
        ("/scratch", "healthy", 999, False),  # TmpDisk is more than the volume: the admin's to fix
        ("/scratch", "writable", 1000, False),  # a read-only volume does not measure smaller
        ("/tmp", "mount", None, False),  # slurmd measures another filesystem
        ("/tmp", "healthy", 1000, False),
        (None, "mount", None, False),  # no slurm.conf here (configless): not ours to judge
    ],
)
def test_which_low_tmp_disk_the_volume_explains(tmp_path, monkeypatch, tmp_fs, check, volume, explained) -> None:
    from slurm_scratch import config, slurmconf

    conf = tmp_path / "slurm.conf"
    if tmp_fs is not None:
        conf.write_text(f"TmpFS={tmp_fs}\nNodeName=n1 TmpDisk=1000\n")
    settings = config.parse_config(f"[volume]\nmount_point = /scratch\n[slurm]\nslurm_conf = {conf}\n", "test.conf")
    monkeypatch.setattr(slurmconf, "volume_mib", lambda mount_point: volume)
    assert drain.explains_low_tmp_disk(settings, _low(), check) is explained
    assert not drain.explains_low_tmp_disk(settings, node("IDLE+DRAIN", "admin"), check)
