"""A fake Slurm for one node, for host tests of the health check: `scontrol` and `squeue`
scripts that log their calls (with SLURM_CONF and PATH) and keep the node's state and reason in
files, changing them on `update` the way slurmctld does. The real commands run in the cluster
tests."""
from __future__ import annotations

from pathlib import Path

FAKE_SCONTROL = r"""#!/bin/sh
d=@DIR@
echo "$* |SLURM_CONF=${SLURM_CONF-unset} PATH=${PATH-unset}" >> "$d/calls.log"
case "$1" in
show)
  reason=$(cat "$d/reason")
  r=""
  [ -n "$reason" ] && r=" Reason=$reason [root@2026-11-29T05:15:35]"
  echo "NodeName=$4 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 State=$(cat "$d/state") ThreadsPerCore=1 TmpDisk=0 Weight=1 Partitions=p$r"
  ;;
update)
  case "$3" in
  state=drain)
    base=$(cut -d+ -f1 < "$d/state"); echo "$base+DRAIN" > "$d/state"; printf '%s\n' "${4#reason=}" > "$d/reason" ;;
  state=resume)
    if grep -q DRAIN "$d/state"; then base=$(cut -d+ -f1 < "$d/state"); echo "$base" > "$d/state"; : > "$d/reason"
    else echo "slurm_update error: Invalid node state specified" >&2; exit 1; fi ;;
  esac
  ;;
listpids)
  echo "PID      JOBID    STEPID   LOCALID GLOBALID"
  if [ -s "$d/listpids" ]; then cat "$d/listpids"; else echo "No job steps exist on this node."; exit 1; fi
  ;;
--version) echo "slurm-wlm 22.05.8" ;;
*) echo "fake scontrol: unexpected $*" >&2; exit 2 ;;
esac
"""

FAKE_SQUEUE = """#!/bin/sh
d=@DIR@
echo "squeue $*" >> "$d/calls.log"
cat "$d/squeue.out"
"""


class FakeSlurm:
    """The fake commands and their files in `directory`: state, reason, calls.log, listpids
    (what `scontrol listpids` prints), squeue.out (what `squeue` prints)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir()
        for name, text in (("scontrol", FAKE_SCONTROL), ("squeue", FAKE_SQUEUE)):
            path = self.dir / name
            path.write_text(text.replace("@DIR@", str(self.dir)))
            path.chmod(0o755)
        for name in ("calls.log", "reason", "listpids", "squeue.out"):
            (self.dir / name).write_text("")
        self.set_state("IDLE")

    def tool_config(self, path: Path, volume: str, health: str = "", slurm: str = "") -> Path:
        """The tool's config at `path`: the `[volume]` and `[health]` lines given, `[slurm]`
        pointing at these commands (plus the lines in `slurm`); 0644, as the tool requires."""
        path.write_text(f"[volume]\n{volume}[health]\n{health}\n[slurm]\n"
                        f"scontrol = {self.dir}/scontrol\nsqueue = {self.dir}/squeue\n{slurm}")
        path.chmod(0o644)
        return path

    def set_state(self, state: str, reason: str = "") -> None:
        (self.dir / "state").write_text(state + "\n")
        (self.dir / "reason").write_text(reason + ("\n" if reason else ""))

    def state(self) -> tuple[str, str]:
        return (self.dir / "state").read_text().strip(), (self.dir / "reason").read_text().strip()

    def calls(self) -> list[str]:
        return [line.split(" |")[0] for line in (self.dir / "calls.log").read_text().splitlines()]
