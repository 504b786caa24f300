"""Parsing Slurm's output (lines captured from Slurm 22.05.8 here) and choosing the backend."""

from __future__ import annotations

import sys
import types

import pytest

from slurm_scratch import config
from slurm_scratch.health import slurm
from slurm_scratch.errors import ScratchError

IDLE = (
    "NodeName=slt Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=3.67 AvailableFeatures=(null) "
    "ActiveFeatures=(null) Gres=(null) NodeAddr=127.0.0.1 NodeHostName=slt Version=22.05.8 OS=Linux 6.18.44-fc-v669 "
    "#1 SMP PREEMPT_DYNAMIC @0  RealMemory=1000 AllocMem=0 FreeMem=20222 Sockets=2 Boards=1 State=IDLE "
    "ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=p  BootTime=2026-11-29T04:55:32 "
    "SlurmdStartTime=2026-11-29T05:15:33 LastBusyTime=2026-11-29T05:15:34 CfgTRES=cpu=2,mem=1000M,billing=2 AllocTRES= "
    "CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s"
)
DRAINED = IDLE.replace("State=IDLE ", "State=IDLE+DRAIN ") + " Reason=scratch: /scratch not mounted [root@2026-11-29T05:15:35]"
WITH_COMMENT = (
    IDLE.replace("State=IDLE ", "State=IDLE+DRAIN+NOT_RESPONDING ")
    + " Reason=x [root@2026-11-29T05:15:35] Comment=a comment here"
)
DOWN = IDLE.replace("State=IDLE ", "State=DOWN+NOT_RESPONDING ") + " Reason=admin down [root@2026-11-29T05:15:35]"


def test_idle_node_has_no_reason() -> None:
    node = slurm.parse_show_node(IDLE + "\n", "slt")
    assert node.states == {"IDLE"} and node.reason == "" and not node.drained and not node.down


def test_drained_node_reason_without_user_and_time() -> None:
    node = slurm.parse_show_node(DRAINED, "slt")
    assert node.drained and node.states == {"IDLE", "DRAIN"}
    assert (node.reason, node.reason_user, node.reason_time) == ("scratch: /scratch not mounted", "root", "2026-11-29T05:15:35")


def test_reason_followed_by_another_field() -> None:
    node = slurm.parse_show_node(WITH_COMMENT, "slt")
    assert node.reason == "x" and node.states == {"IDLE", "DRAIN", "NOT_RESPONDING"}


def test_down_node() -> None:
    node = slurm.parse_show_node(DOWN, "slt")
    assert node.down and not node.drained and node.reason == "admin down"


def test_other_node_or_garbage_is_an_error() -> None:
    with pytest.raises(ScratchError, match="not in the output"):
        slurm.parse_show_node(IDLE, "n2")
    with pytest.raises(ScratchError, match="not in the output"):
        slurm.parse_show_node("Node n1 not found\n", "n1")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("IDLE+POWERED_DOWN", {"IDLE", "POWERED_DOWN"}),
        ("IDLE+CLOUD+POWERED_DOWN", {"IDLE", "CLOUD", "POWERED_DOWN"}),
        ("MIXED+DRAIN+REBOOT_REQUESTED", {"MIXED", "DRAIN", "REBOOT_REQUESTED"}),
        ("idle~", {"IDLE", "POWERED_DOWN"}),
        ("down*", {"DOWN", "NOT_RESPONDING"}),
        ("ALLOCATED+MAINTENANCE+RESERVED", {"ALLOCATED", "MAINTENANCE", "RESERVED"}),
    ],
)
def test_state_flags(text: str, expected: set) -> None:
    node = slurm.parse_show_node(IDLE.replace("State=IDLE ", f"State={text} "), "slt")
    assert node.states == expected


def test_transitional_states() -> None:
    for text in ("IDLE+POWERED_DOWN", "IDLE+POWERING_UP", "DOWN+REBOOT_ISSUED", "IDLE+DRAIN+REBOOT_REQUESTED", "FUTURE"):
        assert slurm.parse_show_node(IDLE.replace("State=IDLE ", f"State={text} "), "slt").transitional, text
    assert not slurm.parse_show_node(DRAINED, "slt").transitional


def test_versions() -> None:
    assert slurm.parse_version("slurm-wlm 22.05.8\n") == (22, 5)
    assert slurm.parse_version("slurm 24.11.5") == (24, 11)
    assert slurm.parse_version("25.11.0") == (25, 11)
    with pytest.raises(ScratchError):
        slurm.parse_version("no version here")


def test_listpids() -> None:
    text = "PID      JOBID    STEPID   LOCALID GLOBALID\n4242     17       batch    0       0\n4250     17       0        0       0\n4300     23       extern   -       -\n"
    assert slurm.parse_listpids(text) == {17, 23}
    assert slurm.parse_listpids("No job steps exist on this node.\nPID      JOBID    STEPID   LOCALID GLOBALID\n") == set()


def _config(api: str = "auto"):
    return config.parse_config(f"[slurm]\napi = {api}\n", "test.conf")


def test_slurm_conf_from_config_or_environment(monkeypatch) -> None:
    monkeypatch.delenv("SLURM_CONF", raising=False)
    assert slurm.slurm_env(_config()) == {}
    monkeypatch.setenv("SLURM_CONF", "/etc/other/slurm.conf")
    assert slurm.slurm_env(_config()) == {"SLURM_CONF": "/etc/other/slurm.conf"}
    configured = config.parse_config("[slurm]\nslurm_conf = /opt/slurm/etc/slurm.conf\n", "test.conf")
    assert slurm.slurm_env(configured) == {"SLURM_CONF": "/opt/slurm/etc/slurm.conf"}


# ---- pyslurm, through a stand-in module (pyslurm cannot be built against any Slurm here) ------


class _StandInNode:
    """The part of pyslurm's Node API the backend uses: Node.load(name), Node(**changes), modify()."""

    calls: list = []
    nodes: dict = {}

    def __init__(self, name=None, **changes) -> None:
        self.name = name
        self.changes = changes

    @classmethod
    def load(cls, name):
        if name not in cls.nodes:
            raise RuntimeError(f"Node '{name}' does not exist")
        loaded = cls(name)
        loaded.state, loaded.reason = cls.nodes[name]
        return loaded

    def modify(self, changes) -> None:
        type(self).calls.append((self.name, changes.changes))


@pytest.fixture
def stand_in(monkeypatch):
    module = types.ModuleType("pyslurm")
    module.__version__ = "22.5.1"
    _StandInNode.calls = []
    _StandInNode.nodes = {"n1": ("IDLE+DRAIN", "scratch: /scratch read-only")}
    module.Node = _StandInNode
    monkeypatch.setitem(sys.modules, "pyslurm", module)
    monkeypatch.setattr(slurm, "version", lambda config: (22, 5))
    return module


def test_auto_uses_pyslurm_when_it_matches_slurm(stand_in) -> None:
    backend = slurm.backend(_config("auto"))
    assert backend.name == "pyslurm" and backend.timeout == 10
    backend.timeout = None  # in this process, where the stand-in records the calls
    node = backend.node_state("n1")
    assert node.drained and node.reason == "scratch: /scratch read-only"
    backend.drain("n1", "scratch: /scratch not mounted")
    backend.resume("n1")
    assert _StandInNode.calls == [
        ("n1", {"state": "DRAIN", "reason": "scratch: /scratch not mounted"}),
        ("n1", {"state": "RESUME", "reason": slurm.RESUMED_REASON}),
    ]
    with pytest.raises(ScratchError, match="n9"):
        backend.node_state("n9")


def test_auto_falls_back_to_scontrol_on_a_version_mismatch(stand_in) -> None:
    stand_in.__version__ = "25.11.0"
    assert slurm.backend(_config("auto")).name == "scontrol"
    with pytest.raises(ScratchError, match="does not match Slurm 22.05"):
        slurm.backend(_config("pyslurm"))


def test_scontrol_when_asked_or_when_pyslurm_is_missing(stand_in, monkeypatch) -> None:
    assert slurm.backend(_config("scontrol")).name == "scontrol"
    monkeypatch.setitem(sys.modules, "pyslurm", None)  # makes `import pyslurm` raise ImportError
    assert slurm.backend(_config("auto")).name == "scontrol"
    with pytest.raises(ScratchError, match="import pyslurm"):
        slurm.backend(_config("pyslurm"))


def test_pyslurm_calls_run_in_a_child_killed_at_the_slurm_timeout(stand_in, monkeypatch) -> None:
    """libslurm waits for slurmctld inside the calling process: a child bounds it."""
    import time

    backend = slurm.PyslurmBackend(stand_in, timeout=5)
    _StandInNode.nodes["n2"] = ("MIXED+DRAIN", "scratch: two  spaces, a | and ünïcode")
    node = backend.node_state("n2")
    assert node.states == {"MIXED", "DRAIN"} and node.reason == "scratch: two  spaces, a | and ünïcode"
    with pytest.raises(ScratchError, match="pyslurm: cannot load node n9: Node 'n9' does not exist"):
        backend.node_state("n9")
    backend.drain("n1", "scratch: x")  # runs (in the child), raises nothing

    def hang(cls, name):
        time.sleep(600)

    monkeypatch.setattr(_StandInNode, "load", classmethod(hang))
    hung = slurm.PyslurmBackend(stand_in, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ScratchError, match=r"load node n1: no answer within \[slurm\] timeout = 0.5 s"):
        hung.node_state("n1")
    assert time.monotonic() - started < 60  # a hang detector, not a speed test


def test_configured_tmp_disk_and_low_tmp_disk() -> None:
    assert slurm.parse_show_node(IDLE, "slt").tmp_disk == 0
    low = IDLE.replace("State=IDLE ", "State=IDLE+DRAIN ").replace("TmpDisk=0 ", "TmpDisk=975 ") \
        + " Reason=Low TmpDisk [slurm@2026-12-06T08:40:02]"
    node = slurm.parse_show_node(low, "slt")
    assert node.tmp_disk == 975 and node.low_tmp_disk
    both = low.replace("Reason=Low TmpDisk", "Reason=Low RealMemory (reported:1 < 90.00% of configured:100), Low TmpDisk")
    assert not slurm.parse_show_node(both, "slt").low_tmp_disk  # memory is low too: not the volume's matter
    assert not slurm.parse_show_node(low.replace("IDLE+DRAIN", "IDLE"), "slt").low_tmp_disk


SHOW_SLURMD = """Active Steps             = NONE
Actual CPUs              = 2
Actual Boards            = 1
Actual sockets           = 1
Actual cores             = 2
Actual threads per core  = 1
Actual real memory       = 24032 MB
Actual temp disk space   = 258048 MB
Boot time                = 2026-12-06T05:08:35
Hostname                 = n2
Last slurmctld msg time  = 2026-12-06T08:41:10
Slurmd PID               = 57
Slurmd Debug             = 3
Slurmd Logfile           = /var/tmp/slurm-scratch-cluster-x/hosts/n2/slurmd.log
Version                  = 22.05.8
"""


def test_show_slurmd() -> None:
    assert slurm.parse_show_slurmd(SHOW_SLURMD) == slurm.SlurmdStatus(pid=57, tmp_disk=258048)
    with pytest.raises(ScratchError, match="no Slurmd PID"):
        slurm.parse_show_slurmd("slurm_load_slurmd_status: Connection refused\n")
