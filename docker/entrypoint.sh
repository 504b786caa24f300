#!/bin/bash
# Entrypoint of the docker-compose cluster's containers (docker-compose.yml), one role each:
#   keygen      make the cluster's munge key in the shared volume, once, then exit
#   controller  munged + slurmctld
#   node        munged, then the node's boot: lab/node_boot.py makes the device nodes an
#               unprivileged container lacks (loop-control, btrfs-control, kmsg: docker-compose.yml
#               allows them by device-cgroup rule), attaches the emulated NVMe disks
#               (sparse files on loop devices), writes slurm-scratch.conf and runs
#               `slurm-scratch setup` (as the systemd unit does before slurmd), then slurmd.
#               On stop (SIGTERM from `docker compose stop/down`): slurmd ends, /scratch is
#               unmounted and the loop devices are detached.
set -euo pipefail

KEY_DIR=/etc/munge-key                 # the shared named volume
KEY="$KEY_DIR/munge.key"
BOOTSTRAP=/usr/local/lib/slurm-scratch-docker/lab/node_boot.py
BASE_CONF=/usr/local/share/slurm-scratch-docker/slurm-scratch.conf
DISK_DIR=/var/lib/scratch-disks        # a per-node named volume: the disks survive a restart
READY=/run/slurm-scratch-docker/ready
DISKS="${SCRATCH_DISKS:-2}"
DISK_MIB="${SCRATCH_DISK_MIB:-2048}"

say() { echo "entrypoint[$(hostname -s)]: $*"; }

make_key() {
  if [ -s "$KEY" ]; then
    say "munge key already in $KEY_DIR"
    return
  fi
  umask 077
  head -c 1024 /dev/urandom > "$KEY.new"
  chown munge:munge "$KEY.new"
  chmod 0400 "$KEY.new"
  mv -f "$KEY.new" "$KEY"
  say "made the cluster's munge key in $KEY_DIR"
}

start_munged() {
  local waited=0
  until [ -s "$KEY" ]; do  # compose starts us after keygen; bounded in case it was skipped
    [ "$waited" -lt 60 ] || { say "no munge key in $KEY_DIR after 60 s"; exit 1; }
    sleep 1; waited=$((waited + 1))
  done
  install -o munge -g munge -m 0400 "$KEY" /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  waited=0
  until munge -n 2> /dev/null | unmunge > /dev/null 2>&1; do
    [ "$waited" -lt 100 ] || { say "munged does not answer after 10 s"; exit 1; }
    sleep 0.1; waited=$((waited + 1))
  done
  say "munged is up"
}

stop_pid() {  # TERM a process we started and wait for it, by its PID
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2> /dev/null || return 0
  wait "$pid" 2> /dev/null || true
}

stop_munged() {
  if [ -s /run/munge/munged.pid ]; then
    kill -TERM "$(cat /run/munge/munged.pid)" 2> /dev/null || true
  fi
}

controller() {
  start_munged
  install -d -o slurm -g slurm -m 0755 /var/lib/slurm/slurmctld
  slurmctld -D -i &
  slurmctld_pid=$!
  trap 'say stopping; stop_pid "$slurmctld_pid"; stop_munged; exit 0' TERM INT
  wait "$slurmctld_pid"
}

node() {
  start_munged
  install -d -m 0755 /var/lib/slurm/slurmd /run/slurm-scratch-docker
  rm -f "$READY"
  bootstrap_pid="" slurmd_pid=""
  # shellcheck disable=SC2317  # called by the trap
  stop_node() {  # $1: the container's exit status
    say "stopping: slurmd, then /scratch and the loop devices"
    stop_pid "$slurmd_pid"
    stop_pid "$bootstrap_pid"  # it unmounts /scratch and detaches the disks it attached
    stop_munged
    exit "$1"
  }
  trap 'stop_node 0' TERM INT
  /usr/bin/python3 "$BOOTSTRAP" up --image-dir "$DISK_DIR" --disks "$DISKS" \
    --disk-mib "$DISK_MIB" --base-conf "$BASE_CONF" \
    --conf /etc/slurm-scratch/slurm-scratch.conf \
    --slurm-scratch /usr/local/bin/slurm-scratch --ready "$READY" --make-device-nodes &
  bootstrap_pid=$!
  local waited=0
  until [ -e "$READY" ]; do  # mkfs on sparse files takes seconds; bounded all the same
    if ! kill -0 "$bootstrap_pid" 2> /dev/null; then
      say "node_boot.py failed"; stop_munged; exit 1
    fi
    [ "$waited" -lt 3000 ] || { say "no /scratch after 300 s"; stop_node 1; }
    sleep 0.1; waited=$((waited + 1))
  done
  slurmd -D &
  slurmd_pid=$!
  status=0
  wait "$slurmd_pid" || status=$?
  say "slurmd exited with status $status"
  slurmd_pid=""
  stop_node 1  # slurmd is not meant to end on its own: the container fails
}

case "${1:-}" in
  keygen) make_key ;;
  controller) controller ;;
  node) node ;;
  *) echo "usage: entrypoint.sh keygen|controller|node" >&2; exit 2 ;;
esac
