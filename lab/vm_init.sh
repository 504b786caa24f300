#!/bin/sh
# /init of the test VM (PID 1 in the initramfs). The host shares two folders over 9p:
#   src      the project checkout, read-only, mounted at /src
#   results  mounted at /results: holds command.sh (what to run) and timeout (seconds);
#            receives output.log, exit_code and dmesg.log.
# Then it powers the VM off. The host kills QEMU if this never happens.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1

mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
say() { echo "[vm-init $(cut -d' ' -f1 /proc/uptime 2>/dev/null)] $*"; }
power_off() { sync; echo o >/proc/sysrq-trigger; sleep 30; }
say "init started"

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /run/lock
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock
mount -t tmpfs -o mode=1777 tmpfs /tmp
hostname "$(cat /etc/hostname)"

modprobe -a $(cat /etc/vm-modules) || say "modprobe failed"
say "modules loaded"
mount -t configfs configfs /sys/kernel/config
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose src /src || say "no src share"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /results; then
    say "cannot mount the results share"; power_off
fi
ip link set lo up

/lib/systemd/systemd-udevd --daemon --resolve-names=never
udevadm trigger --type=subsystems --action=add
udevadm trigger --type=devices --action=add
udevadm settle --timeout=60
say "ready"

limit=$(cat /results/timeout 2>/dev/null || echo 600)
cd /results
timeout -k 10 "$limit" sh /results/command.sh >/results/output.log 2>&1
echo $? >/results/exit_code.tmp
mv /results/exit_code.tmp /results/exit_code
say "command exited $(cat /results/exit_code)"
dmesg >/results/dmesg.log 2>&1
power_off
