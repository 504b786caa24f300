#!/bin/sh
# rdinit= of the test VM when it boots with systemd as PID 1 (lab/vm_systemd.py); lab/vm_init.sh
# is the other way to boot the same image. It does only what systemd cannot do from this image:
# load the 9p modules and mount the host's shares
#   src        the project checkout, read-only, at /src
#   results    at /results: node.json (what this node is) and, per boot, what the test unit wrote
#   installed  a `make install PREFIX=/usr/local` tree, read-only, at /usr/local
# then provisions the node as an admin's configuration management would (lab/systemd_guest.py:
# slurm.conf, the tool's config, its unit installed and enabled, the test unit) and execs systemd.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1

mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
say() { echo "[vm-systemd-init] $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
modprobe -a virtio_pci 9pnet_virtio 9p || say "modprobe failed"
options=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$options,ro,cache=loose" src /src || say "no src share"
mount -t 9p -o "$options,ro,cache=loose" installed /usr/local || say "no installed share"
if ! mount -t 9p -o "$options" results /results || \
        ! python3 -I /src/lab/systemd_guest.py provision; then
    say "cannot provision the node; powering off"
    sync; echo o >/proc/sysrq-trigger; sleep 30
fi
exec /lib/systemd/systemd
