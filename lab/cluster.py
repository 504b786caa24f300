"""A real multi-node Slurm cluster (Debian's Slurm packages) on one machine, for tests.

What `Cluster.start()` builds, all of it private to the test and removed by `Cluster.stop()`:
- a tmpfs work dir (slurm.conf, munge key, logs, spool dirs, the users' job dirs, disk images);
- munged with its own key, its socket on a tmpfs mounted over /run/munge in this process's
  mount namespace (the test session runs in a private one), so no host munged is disturbed;
- per host (`ctl` for slurmctld, `n1`, `n2`, ... for slurmd) a PID + network + UTS + mount
  namespace made by `unshare`. PID 1 of each is `node_init.py`, which reaps orphans and ends
  every process of the host when told to stop. The network is a bridge inside the controller's
  namespace (it carries the controller's address) with a veth pair to each node, created
  straight into the namespaces by PID: nothing is added to the machine's own network
  namespace and nothing is named, so it all disappears with the namespaces' last processes;
- on each node: private tmpfs over /run/slurm-scratch, /var/lib/slurm-scratch and /tmp, the
  cluster's /etc/hosts, the node's own slurm-scratch config bound over /etc/slurm-scratch,
  and its own /scratch, built the way the docker-compose cluster's nodes build theirs
  (node_boot.py: sparse disk images on loop devices, the node's slurm-scratch.conf,
  `slurm-scratch setup` inside the node's namespaces, a check of the mount). The loop devices
  are attached with autoclear while the harness holds them open, so even a SIGKILLed test run
  leaves no loop device behind (teardown also detaches them explicitly);
- slurmctld and one slurmd per node, with the installed hooks as Prolog, Epilog, TaskProlog
  and HealthCheckProgram, TmpFS=/scratch and TmpDisk = what the nodes' volumes hold: slurm.conf
  is written, and slurmd started, once every node's volume is mounted.

Slurm client commands run in the controller's network namespace (`nsenter --net`) but this
process's mount namespace, so all traffic stays between namespaces the harness created.

With `rootfs=` (rootfs.py: Debian trixie's Slurm 24.11, sid's 26.05) every daemon, hook, job and client runs
chrooted into that tree; the harness binds /proc, /sys, /dev, the work dir, the install prefix,
the munge socket dir and the users into it, and each host mounts its private dirs, its own
/proc and its /scratch inside it. munged is always the machine's.
Teardown runs every step even when an earlier one fails, stops daemons by the PIDs it
recorded, detaches only the loop devices it attached (checked by backing file), and reports
what it could not undo. Every process it starts gets PR_SET_PDEATHSIG, so none outlives the
test process.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

from lab.node_boot import BootstrapError, NodeDisks, bootstrap_node, mount_source, node_settings
from lab.toolconf import write_tool_conf
from lab.process import TOOL_PATH, die_with_parent, process_alive, run, stop_process, wait_for
from lab.munge import MUNGE_USER, make_key, start_munged
from lab.slurmconf import make_controller_dir, slurm_conf_text
from lab.scontrol import TERMINAL_JOB_STATES, parse_record, parse_sdiag_by_message_type, \
    parse_sdiag_by_user, parse_sinfo_reason, sinfo_any_reason_argv, sinfo_reason_argv
NODE_INIT = Path(__file__).with_name("node_init.py")
MUNGE_DIR = Path("/run/munge")
MUNGE_SOCKET = MUNGE_DIR / "munge.socket.2"
SUBNET = "10.77.0"  # only inside the namespaces the harness makes; the machine's own has none
BRIDGE = "br0"      # inside the controller's network namespace
CONTROLLER = "ctl"
DISK_MIB = 1024  # sparse; 64k inodes, room for a 20,000-file job directory
PRIVATE_DIRS = ("/run/slurm-scratch", "/var/lib/slurm-scratch", "/tmp")

# One error type for the harness and the node bootstrap it shares with the compose nodes.
HarnessError = BootstrapError


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _ns_inode(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def in_private_mount_namespace() -> bool:
    """True when this process's mount namespace is not the one of PID 1."""
    return _ns_inode("self", "mnt") != _ns_inode(1, "mnt")


class Host:
    """One simulated host: PID + network + UTS + mount namespaces, PID 1 = node_init.py."""

    def __init__(self, name: str, addr: str, workdir: Path, root: str = ""):
        self.name = name
        self.addr = addr
        self.root = root  # a Slurm rootfs the host's programs run in (chroot); "" = this machine
        self.dir = workdir / "hosts" / name
        self.unshare: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.mnt_ns: str | None = None
        self.net_ns: str | None = None
        self.daemon: subprocess.Popen | None = None  # nsenter running slurmctld/slurmd
        self.daemon_pid: int | None = None          # the daemon itself (host PID)
        self.veth: str | None = None                # its peer, in the controller's namespace
        # The node's emulated local disks: sparse images on loop devices, each held open with
        # autoclear (node_boot.NodeDisks); index 0 is the one single-disk tests use.
        self.disks = NodeDisks(self.dir)

    @property
    def disk_images(self) -> list[Path]:
        return self.disks.images

    @property
    def loop_devices(self) -> list[str]:
        return self.disks.devices

    @property
    def loop_device(self) -> str | None:
        return self.loop_devices[0] if self.loop_devices else None

    def start_namespaces(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "init.log", "wb")
        self.unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount-proc", "--net",
             "--uts", "--propagation", "private", "--",
             "/usr/bin/python3", "-I", "-S", str(NODE_INIT)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True,
            env={"PATH": TOOL_PATH}, preexec_fn=die_with_parent)
        log.close()

        def init_started():
            for child in _children(self.unshare.pid):
                try:
                    if str(NODE_INIT) in Path(f"/proc/{child}/cmdline").read_text():
                        return child
                except OSError:
                    pass
            if self.unshare.poll() is not None:
                raise HarnessError(f"{self.name}: unshare exited {self.unshare.returncode}: "
                                   f"{(self.dir / 'init.log').read_text()}")
            return None

        self.init_pid = wait_for(f"{self.name}'s namespaces", init_started, 10, 0.02)
        self.mnt_ns = _ns_inode(self.init_pid, "mnt")
        self.net_ns = _ns_inode(self.init_pid, "net")

    def nsenter_argv(self, argv: Sequence[str], in_root: bool = True) -> list[str]:
        """`argv` in this host's namespaces (and in its rootfs unless in_root=False)."""
        chroot = ["chroot", self.root] if self.root and in_root else []
        return ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-n", "-p", "--", *chroot, *argv]

    def run(self, argv: Sequence[str], in_root: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(self.nsenter_argv(argv, in_root), **kw)

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        """A set-up script, run outside the rootfs (it mounts things into it)."""
        return self.run(["sh", "-euc", script], in_root=False, **kw)

    def path(self, path: str) -> Path:
        """`path` as this host's programs see it, readable from the test process."""
        return Path(f"/proc/{self.init_pid}/root{self.root}") / path.lstrip("/")

    def start_daemon(self, argv: Sequence[str], log_name: str) -> None:
        log = open(self.dir / log_name, "wb")
        self.daemon = subprocess.Popen(
            self.nsenter_argv(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
            start_new_session=True, env={"PATH": TOOL_PATH, "LANG": "C.UTF-8"},
            preexec_fn=die_with_parent)
        log.close()

        def daemon_pid():
            if self.daemon.poll() is not None:
                raise HarnessError(f"{self.name}: {argv[0]} exited {self.daemon.returncode}: "
                                   f"{(self.dir / log_name).read_text()[-2000:]}")
            kids = _children(self.daemon.pid)
            return kids[0] if kids else None

        self.daemon_pid = wait_for(f"{self.name}: {argv[0]} to start", daemon_pid, 10, 0.02)

    def stop_daemon(self) -> list[str]:
        problems = []
        if self.daemon is not None:
            if self.daemon_pid is not None and not stop_process(self.daemon_pid):
                problems.append(f"{self.name}: daemon PID {self.daemon_pid} did not stop")
            if not stop_process(self.daemon.pid, self.daemon):
                problems.append(f"{self.name}: nsenter PID {self.daemon.pid} did not stop")
        return problems

    def stop_namespaces(self) -> list[str]:
        """End every process of the host (node_init's job), then its unshare parent."""
        problems = []
        if self.init_pid is not None and process_alive(self.init_pid):
            os.kill(self.init_pid, signal.SIGTERM)
            try:
                wait_for(f"{self.name}'s init to stop", lambda: not process_alive(self.init_pid),
                         15, 0.05)
            except HarnessError:
                stop_process(self.init_pid, grace=5)  # SIGKILL of PID 1 kills the namespace
        if self.unshare is not None and not stop_process(self.unshare.pid, self.unshare, grace=5):
            problems.append(f"{self.name}: unshare PID {self.unshare.pid} did not stop")
        # with no process left in them the namespaces (and the network devices in them) are gone
        for pid in self.processes():
            stop_process(pid, grace=2)
        leftovers = [pid for pid in self.processes() if process_alive(pid)]
        if leftovers:
            problems.append(f"{self.name}: processes left in its namespaces: {leftovers}")
        return problems

    def processes(self) -> list[int]:
        """Host PIDs of every process in this host's network namespace and either its mount
        namespace (the host's own processes, nsenter) or the harness's (client commands).
        Matching one namespace alone could take someone else's process for ours: the kernel
        reuses a freed namespace's inode number (seen: another session's private mount
        namespace got a stopped node's)."""
        if not self.net_ns:
            return []
        own_mnt = _ns_inode("self", "mnt")
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _ns_inode(entry, "net") == self.net_ns \
                    and _ns_inode(entry, "mnt") in (self.mnt_ns, own_mnt):
                pids.append(int(entry))
        return pids


class Cluster:
    """slurmctld + slurmd on `nodes`, each in its own namespaces, with the installed hooks.

    `prefix` is a `make install PREFIX=` tree, not below /tmp (each node has its own /tmp) and
    readable by the job users (the TaskProlog runs as them). `scratch_settings` ({section: {key: value}}) is
    every node's slurm-scratch.conf, to which the harness adds `[volume] devices` (the node's
    loop device) and `[slurm] slurm_conf`.
    `use_project_setup`: build /scratch with `slurm-scratch setup` (else mkfs + mount directly).
    `rootfs`: a directory with another Slurm (Debian trixie's 24.11, sid's 26.05: rootfs.py) in which
    every daemon, hook, job and client runs (chroot); the work dir, the prefix, the munge socket
    and the users are bound into it at the same paths. None: the machine's own Slurm.
    """

    def __init__(self, prefix: Path, scratch_settings: dict[str, dict[str, str]],
                 nodes: Sequence[str] = ("n1", "n2"), health_interval: int = 5,
                 disks_per_node: int = 1, disk_mib: int = DISK_MIB,
                 use_project_setup: bool = True, users: Sequence[str] = ("sstest1", "sstest2"),
                 base_dir: str = "/var/tmp", rootfs: Path | None = None, flavour: str = "",
                 slurm_lines: Sequence[str] = (), node_options: str = ""):
        self.prefix = Path(prefix)
        self.flavour = flavour  # e.g. "slurm-24.11": the Slurm release the cluster should run
        self.slurm_lines, self.node_options = tuple(slurm_lines), node_options  # more slurm.conf
        self.root = str(rootfs) if rootfs else ""
        self._root_dirs: list[Path] = []  # mount points made inside the rootfs, removed at stop
        self.scratch_settings = {section: dict(keys) for section, keys in scratch_settings.items()}
        self.node_names = list(nodes)
        self.health_interval = health_interval
        self.disks_per_node = disks_per_node
        self.disk_mib = disk_mib  # each disk's size (sparse)
        self.use_project_setup = use_project_setup
        self.users = list(users)
        self.base_dir = base_dir
        self.workdir: Path | None = None
        self.slurm_conf: Path | None = None
        self.tmp_disk_mib: int | None = None  # slurm.conf's TmpDisk of every node
        self.controller: Host | None = None
        self.nodes: dict[str, Host] = {}
        self.munged: subprocess.Popen | None = None
        self._mounted: list[Path] = []      # host mounts, unmounted in reverse order
        self._started = False

    # ------------------------------------------------------------------ start / stop
    def start(self) -> "Cluster":
        if str(self.prefix).startswith("/tmp/"):
            raise HarnessError(f"{self.prefix}: the install prefix must not be below /tmp, "
                               "which is private to each node")
        if not in_private_mount_namespace():
            raise HarnessError("the cluster harness mounts tmpfs over /run/munge: run it in a "
                               "private mount namespace (tests/conftest.py sets one up)")
        try:
            self._make_workdir()
            self._start_munged()
            if self.root:
                self._bind_into_rootfs()
            self.controller = self._make_host(CONTROLLER, f"{SUBNET}.2")
            for index, name in enumerate(self.node_names):
                self.nodes[name] = self._make_host(name, f"{SUBNET}.{11 + index}")
            self.slurm_conf = self.workdir / "etc" / "slurm.conf"
            for node in self.nodes.values():
                self._prepare_node(node)
            # after every node's /scratch is up (TmpDisk = what the volumes hold), before slurmd
            self._write_slurm_conf()
            self._start_slurmctld()
            for node in self.nodes.values():
                self._start_slurmd(node)
            wait_for("all nodes to register", self._all_nodes_responding, 60, 0.3)
            self._started = True
        except BaseException:
            problems = self.stop()
            if problems:
                print("cluster teardown after a failed start:", *problems, sep="\n  ")
            raise
        return self

    def stop(self) -> list[str]:
        """Undo everything `start` did, whatever state it is in. Returns what failed."""
        problems: list[str] = []

        def step(what: str, action: Callable[[], Iterable[str] | None]) -> None:
            try:
                problems.extend(action() or [])
            except Exception as exc:  # every step runs, whatever the previous one did
                problems.append(f"{what}: {exc}")

        hosts = list(self.nodes.values())
        if self.controller is not None and self.controller.daemon_pid is not None:
            step("thaw /scratch", self._thaw_all)
            step("cancel jobs", self._cancel_all_jobs)
        for node in hosts:
            step(f"stop slurmd on {node.name}", node.stop_daemon)
        for node in hosts:
            step(f"unmount /scratch on {node.name}", lambda node=node: self._unmount_scratch(node))
        for node in hosts:
            step(f"stop {node.name}", node.stop_namespaces)
        if self.controller is not None:
            step("stop slurmctld", self.controller.stop_daemon)
            step("stop controller", self.controller.stop_namespaces)
        step("stop munged", self._stop_munged)
        for node in hosts:
            step(f"detach {node.name}'s loop device", lambda node=node: self._detach_loop(node))
        step("unmount", self._unmount_host_mounts)
        step("remove mount points made in the rootfs", self._remove_root_dirs)
        self.nodes = {}
        self.controller = None
        self._started = False
        return problems

    # ------------------------------------------------------------------ pieces of start
    def _make_workdir(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="slurm-scratch-cluster-", dir=self.base_dir))
        run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=4g", "cluster-work",
             str(self.workdir)])
        self._mounted.append(self.workdir)
        for user in self.users:
            entry = pwd.getpwnam(user)
            home = self.home(user)
            home.mkdir(parents=True)
            os.chown(home, entry.pw_uid, entry.pw_gid)
            home.chmod(0o755)

    def _start_munged(self) -> None:
        state_dir = self.workdir / "munge"
        state_dir.mkdir(mode=0o700)
        key = make_key(state_dir / "munge.key")
        munge = pwd.getpwnam(MUNGE_USER)
        MUNGE_DIR.mkdir(mode=0o755, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"mode=0755,size=1m,uid={munge.pw_uid},"
             f"gid={munge.pw_gid}", "cluster-munge", str(MUNGE_DIR)])
        self._mounted.append(MUNGE_DIR)
        self.munged = start_munged(key, state_dir, MUNGE_SOCKET, timeout=10)

    def _stop_munged(self) -> list[str]:
        if self.munged is not None and not stop_process(self.munged.pid, self.munged):
            return [f"munged PID {self.munged.pid} did not stop"]
        return []

    def _make_host(self, name: str, addr: str) -> Host:
        host = Host(name, addr, self.workdir, self.root)
        if name == CONTROLLER:
            self.controller = host
        else:
            self.nodes[name] = host
        host.start_namespaces()
        hosts_file = self.workdir / "hosts.txt"
        if not hosts_file.exists():
            # clients run in the controller's network namespace under this machine's host name:
            # Slurm 24.11 nodes resolve it to reach srun
            client_host = socket.gethostname().split(".")[0]
            lines = ["127.0.0.1 localhost", f"{SUBNET}.2 {CONTROLLER} {client_host}"]
            lines += [f"{SUBNET}.{11 + i} {n}" for i, n in enumerate(self.node_names)]
            hosts_file.write_text("\n".join(lines) + "\n")
        if name == CONTROLLER:
            host.sh(f"""
                ip link add {BRIDGE} type bridge
                ip addr add {addr}/24 dev {BRIDGE}
                ip link set {BRIDGE} up
            """)
        else:
            host.veth = f"v{name}"[:15]
            # made inside the controller's namespace, its peer created straight in the node's
            in_controller_net = ["nsenter", f"--net=/proc/{self.controller.init_pid}/ns/net",
                                 "--", "ip", "link"]  # this process's /proc resolves node PIDs
            run([*in_controller_net, "add", host.veth, "type", "veth", "peer", "name", "eth0",
                 "netns", str(host.init_pid)])
            run([*in_controller_net, "set", host.veth, "master", BRIDGE, "up"])
            host.sh(f"""
                ip addr add {addr}/24 dev eth0
                ip link set eth0 up
            """)
        host.sh(f"""
            hostname {name}
            ip link set lo up
            mount --bind {hosts_file} {self.root}/etc/hosts
        """)
        if self.root:  # the rootfs gets this host's own /proc (its PID namespace)
            host.sh(f"mount -t proc proc {self.root}/proc")
            if name == CONTROLLER:  # and the clients, run from this process, the hosts file
                run(["mount", "--bind", str(hosts_file), f"{self.root}/etc/hosts"])
                self._mounted.append(Path(f"{self.root}/etc/hosts"))
        return host

    def _write_slurm_conf(self) -> None:
        """TmpFS is the volume's mount point, TmpDisk what the smallest node's volume holds (in
        MiB, as slurmd measures it: statvfs f_blocks * f_frsize)."""
        self.slurm_conf.parent.mkdir()
        make_controller_dir(self.controller.dir)
        self.tmp_disk_mib = min(self.scratch_mib(name) for name in self.nodes)
        self.slurm_conf.write_text(slurm_conf_text(
            cluster_name="sstest", controller=(CONTROLLER, self.controller.addr),
            nodes=[(node.name, node.addr) for node in self.nodes.values()],
            controller_dir=self.controller.dir, node_dir=f"{self.workdir / 'hosts'}/%n",
            hooks=self.prefix / "libexec" / "slurm-scratch",
            health_interval=self.health_interval, munge_socket=MUNGE_SOCKET,
            tmp_fs=self.mount_point, tmp_disk_mib=self.tmp_disk_mib,
            extra_lines=self.slurm_lines, node_options=self.node_options))

    def _prepare_node(self, node: Host) -> None:
        (node.dir / "spool").mkdir(exist_ok=True)
        etc = node.dir / "etc-slurm-scratch"
        etc.mkdir()
        script = []
        for directory in PRIVATE_DIRS:
            mode = "1777" if directory == "/tmp" else "0755"
            script.append(f"mkdir -p {self.root}{directory}; mount -t tmpfs -o mode={mode} "
                          f"node-private {self.root}{directory}")
        script.append(f"mkdir -p {self.root}/etc/slurm-scratch {self.root}/scratch")
        script.append(f"mount --bind {etc} {self.root}/etc/slurm-scratch")
        node.sh("\n".join(script))
        if self.use_project_setup:
            self._bootstrap_node(node)
        else:
            node.disks.attach(self.disks_per_node, self.disk_mib)
            self.write_scratch_conf(node.name)
            self._setup_scratch_directly(node)

    def _bootstrap_node(self, node: Host) -> None:
        """Disks, config, `slurm-scratch setup` inside the node, check: node_boot.py, the
        steps the docker-compose nodes take too."""
        try:
            bootstrap_node(
                node.disks, self.disks_per_node, self.disk_mib, self.scratch_conf_path(node.name),
                self.scratch_settings, str(self.slurm_conf),
                str(self.prefix / "bin" / "slurm-scratch"),
                run_in_node=lambda argv: node.run(argv, check=False, timeout=120),
                read_mountinfo=lambda: Path(f"/proc/{node.init_pid}/mountinfo").read_text(),
                mount_point_seen=f"{self.root}/scratch")
        except BootstrapError as exc:
            raise HarnessError(f"{node.name}: {exc}") from exc

    def _setup_scratch_directly(self, node: Host) -> None:
        """STAND-IN for `slurm-scratch setup` (single backend, ext4), used only while the
        project's `setup` is not implemented (see conftest.SETUP_BY_PROJECT)."""
        node.run(["sh", "-euc", f"mkfs.ext4 -q -F -m 0 {node.loop_device}\n"
                  f"mount -o noatime,nodiratime {node.loop_device} /scratch\n"
                  "chmod 1777 /scratch"])

    def _start_slurmd(self, node: Host) -> None:
        node.start_daemon(["/usr/sbin/slurmd", "-D", "-N", node.name, "-f", str(self.slurm_conf)],
                          "slurmd.out")

    def _start_slurmctld(self) -> None:
        self.controller.start_daemon(["/usr/sbin/slurmctld", "-D", "-i", "-f",
                                      str(self.slurm_conf)], "slurmctld.out")
        wait_for("slurmctld to answer", lambda: "is UP" in self.scontrol(
            "ping", check=False).stdout, 30, 0.2)

    def _all_nodes_responding(self) -> bool:
        for name in self.nodes:
            state = self.node_state(name)
            if not state or "NOT_RESPONDING" in state or state.startswith(("DOWN", "UNKNOWN")) \
                    or "*" in state:
                return False
        return True

    # ------------------------------------------------------------------ pieces of stop
    def _thaw_all(self) -> None:
        for node in self.nodes.values():
            if node.init_pid and process_alive(node.init_pid):
                node.run(["fsfreeze", "--unfreeze", "/scratch"], check=False, timeout=10)

    def _cancel_all_jobs(self) -> list[str]:
        jobs = self.client(["squeue", "-h", "-o", "%A"], check=False, timeout=20).stdout.split()
        if not jobs:
            return []
        self.client(["scancel", *jobs], check=False, timeout=20)
        try:
            wait_for("jobs to end", lambda: not self.client(
                ["squeue", "-h", "-t", "PD,R,CG,S,CF", "-o", "%A"], check=False,
                timeout=20).stdout.split(), 30, 0.5)
        except HarnessError as exc:
            return [str(exc)]
        return []

    def _unmount_scratch(self, node: Host) -> list[str]:
        if node.init_pid is None or not process_alive(node.init_pid):
            return []
        node.run(["fsfreeze", "--unfreeze", "/scratch"], check=False, timeout=10)
        for _ in range(5):  # the volume may be mounted more than once (tests remount it)
            if not node.run(["mountpoint", "-q", "/scratch"], check=False).returncode == 0:
                return []
            result = node.run(["umount", "/scratch"], check=False, timeout=30)
            if result.returncode != 0:
                node.run(["umount", "-l", "/scratch"], check=False, timeout=30)
        return [f"{node.name}: /scratch still mounted"]

    def _detach_loop(self, node: Host) -> list[str]:
        return node.disks.detach()  # the last close detaches each (autoclear), then losetup -d

    def _unmount_host_mounts(self) -> list[str]:
        problems = []
        while self._mounted:
            path = self._mounted.pop()
            result = run(["umount", "--recursive", str(path)], check=False)
            if result.returncode != 0:
                problems.append(f"umount {path}: {result.stderr.strip()}")
                run(["umount", "--recursive", "--lazy", str(path)], check=False)
            elif path == self.workdir:
                path.rmdir()
        return problems

    def _bind_into_rootfs(self) -> None:
        """Make the rootfs a usable root in this mount namespace (the hosts made later inherit
        it): the machine's /proc, /sys, /dev; and at the same paths the work dir, the install
        prefix, the munge socket dir, the users (passwd and group, with the test users)."""
        root = Path(self.root)
        binds = [("/proc", True), ("/sys", True), ("/dev", True),
                 (str(self.workdir), False), (str(self.prefix), False),
                 (str(MUNGE_DIR), False), ("/etc/passwd", False), ("/etc/group", False)]
        for source, recursive in binds:
            target = root / source.lstrip("/")
            if not target.exists():
                if not Path(source).is_dir():
                    raise HarnessError(f"{target} is missing from the rootfs")
                missing = [d for d in (target, *target.parents) if not d.exists()]
                for directory in reversed(missing):
                    directory.mkdir()
                    self._root_dirs.append(directory)
            run(["mount", "--rbind" if recursive else "--bind", source, str(target)])
            self._mounted.append(target)

    def _remove_root_dirs(self) -> list[str]:
        problems = []
        while self._root_dirs:
            path = self._root_dirs.pop()
            try:
                path.rmdir()
            except OSError as exc:
                problems.append(f"rmdir {path}: {exc.strerror}")
        return problems

    # ------------------------------------------------------------------ helpers for tests
    def scratch_conf_path(self, node: str) -> Path:
        return self.workdir / "hosts" / node / "etc-slurm-scratch" / "slurm-scratch.conf"

    def write_scratch_conf(self, node: str,
                           overrides: dict[str, dict[str, str]] | None = None) -> None:
        """(Re)write the node's /etc/slurm-scratch/slurm-scratch.conf atomically: the cluster's
        settings, the node's own device and slurm.conf, then `overrides`."""
        write_tool_conf(self.scratch_conf_path(node), node_settings(
            self.scratch_settings, self.nodes[node].loop_devices, str(self.slurm_conf),
            overrides))

    def home(self, user: str) -> Path:
        return self.workdir / "home" / user

    def client_env(self, user: str | None) -> dict[str, str]:
        env = {"PATH": TOOL_PATH, "LANG": "C.UTF-8", "SLURM_CONF": str(self.slurm_conf)}
        if user is not None:
            env.update(HOME=str(self.home(user)), USER=user, LOGNAME=user)
        return env

    def client_argv(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        """A Slurm client command in the controller's network namespace, as `user` (or root)."""
        prefix = ["nsenter", f"--net=/proc/{self.controller.init_pid}/ns/net", "--"]
        if self.root:
            prefix += ["chroot", self.root]
        if user is not None:
            entry = pwd.getpwnam(user)
            prefix += ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                       "--init-groups", "--"]
        return prefix + list(argv)

    def client(self, argv: Sequence[str], user: str | None = None, *, check: bool = True,
               timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        return run(self.client_argv(argv, user), check=check, timeout=timeout, input=input,
                   env=self.client_env(user))

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.client(["scontrol", *args], check=check, timeout=30)

    def submit(self, script: str, user: str = "sstest1", *sbatch_args: str) -> int:
        """sbatch `script` (text, read from stdin) as `user`; output in the user's home dir
        as slurm-<jobid>.out (slurm-<jobid>_<task>.out for arrays); returns the job id."""
        home = self.home(user)
        out = self.client(["sbatch", "--parsable", f"--chdir={home}",
                           f"--output={home}/slurm-%j.out", *sbatch_args], user,
                          input=script, timeout=30).stdout.strip()
        return int(out.split(";")[0])

    def srun(self, *args: str, user: str = "sstest1", timeout: float = 120,
             check: bool = False) -> subprocess.CompletedProcess:
        return self.client(["srun", f"--chdir={self.home(user)}", *args], user, check=check,
                           timeout=timeout)

    def job_output(self, jobid: int | str, user: str = "sstest1") -> str:
        return (self.home(user) / f"slurm-{jobid}.out").read_text()

    def job_info(self, jobid: int | str) -> dict[str, str]:
        """`scontrol show job -o` of one job (the first record for an array) as a dict."""
        text = self.scontrol("show", "job", "-o", str(jobid)).stdout.splitlines()[0]
        return parse_record(text)

    def job_state(self, jobid: int | str) -> str:
        return self.job_info(jobid)["JobState"]

    def wait_job(self, jobid: int | str, states: Iterable[str] = TERMINAL_JOB_STATES,
                 timeout: float = 60) -> str:
        """Poll until the job is in one of `states` and no longer completing; return it."""
        wanted = set(states)

        def reached():
            info = self.job_info(jobid)
            state = info["JobState"]
            if state in wanted:
                return state
            if state in TERMINAL_JOB_STATES and state not in wanted:
                raise HarnessError(f"job {jobid} ended {state} "
                                   f"(reason {info.get('Reason')}), wanted {sorted(wanted)}")
            return None

        return wait_for(f"job {jobid} to reach {sorted(wanted)}", reached, timeout, 0.2)

    def node_info(self, node: str) -> dict[str, str]:
        text = self.scontrol("show", "node", "-o", node).stdout.splitlines()[0]
        return parse_record(text)

    def node_state(self, node: str) -> str:
        """scontrol's state, e.g. IDLE, MIXED, IDLE+DRAIN, ALLOCATED+DRAIN, DOWN+NOT_RESPONDING."""
        return self.node_info(node).get("State", "")

    def node_reason(self, node: str) -> str:
        """The reason the node is drained, draining, down or failed ('' when it is none of
        those), as `sinfo -R` shows it."""
        return parse_sinfo_reason(self.client(sinfo_reason_argv(node), timeout=30).stdout)

    def node_drained(self, node: str) -> bool:
        return "DRAIN" in self.node_state(node)

    def drain(self, node: str, reason: str) -> None:
        self.scontrol("update", f"nodename={node}", "state=drain", f"reason={reason}")

    def resume(self, node: str) -> None:
        self.scontrol("update", f"nodename={node}", "state=resume")

    def restart_slurmd(self, node: str, between: Callable[[], None] = lambda: None) -> None:
        """Stop the node's slurmd, call `between`, start slurmd again (it measures TmpFS then)."""
        host = self.nodes[node]
        problems = host.stop_daemon()
        if problems:
            raise HarnessError(f"{node}: {problems}")
        between()
        self._start_slurmd(host)

    def run_on_node(self, node: str, argv: Sequence[str], *, check: bool = True,
                    timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        """Run `argv` as root inside the node's PID, network, UTS and mount namespaces."""
        return self.nodes[node].run(argv, check=check, timeout=timeout, input=input)

    @contextlib.contextmanager
    def flock_on_node(self, node: str, path: str):
        """Hold an exclusive flock(2) on `path` inside the node (e.g. the tool's reaper or
        health-check lock) until the block ends."""
        holder = subprocess.Popen(
            self.nodes[node].nsenter_argv(["flock", "-x", path, "sh", "-c",
                                           "echo locked; exec sleep 600"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd="/",
            start_new_session=True, env={"PATH": TOOL_PATH}, preexec_fn=die_with_parent)
        try:
            line = holder.stdout.readline().strip()
            if line != "locked":
                raise HarnessError(f"{node}: could not lock {path} (flock said {line!r})")
            yield
        finally:
            os.killpg(holder.pid, signal.SIGKILL)  # nsenter, flock and sleep: one group
            holder.wait(timeout=30)
            holder.stdout.close()

    def node_path(self, node: str, path: str) -> Path:
        return self.nodes[node].path(path)

    @property
    def mount_point(self) -> str:
        return self.scratch_settings.get("volume", {}).get("mount_point", "/scratch")

    def scratch_mib(self, node: str) -> int:
        """The size of the filesystem at the node's mount point in MiB, as slurmd measures TmpFS."""
        stats = os.statvfs(self.node_path(node, self.mount_point))
        return stats.f_blocks * stats.f_frsize // (1 << 20)

    def reasons_shown(self, node: str) -> dict[str, str]:
        """The node's reason wherever Slurm shows one ('' where it shows none): `scontrol show
        node` (its Reason=, without the [user@time] suffix), `sinfo -R`, `sinfo -o %E`."""
        reason = self.node_info(node).get("Reason", "")
        return {
            "scontrol show node": reason.rpartition(" [")[0] if reason.endswith("]") else reason,
            "sinfo -R": self.node_reason(node),
            "sinfo %E": parse_sinfo_reason(self.client(sinfo_any_reason_argv(node),
                                                       timeout=30).stdout),
        }

    def scratch_mounted(self, node: str) -> bool:
        return self.scratch_source(node) is not None

    def scratch_source(self, node: str) -> tuple[str, str] | None:
        """(filesystem type, device) of the topmost mount at the node's /scratch, or None."""
        mountinfo = Path(f"/proc/{self.nodes[node].init_pid}/mountinfo").read_text()
        return mount_source(mountinfo, f"{self.root}/scratch")

    def slurmd_log(self, node: str) -> str:
        return (self.workdir / "hosts" / node / "slurmd.log").read_text(errors="replace")

    def slurmctld_log(self) -> str:
        return (self.controller.dir / "slurmctld.log").read_text(errors="replace")

    def slurm_versions(self) -> dict[str, str]:
        """The Slurm version of the client commands and of each node's slurmd."""
        versions = {"client": self.client(["scontrol", "--version"]).stdout.split()[-1]}
        versions.update((node, self.node_info(node)["Version"]) for node in self.nodes)
        return versions

    def sdiag(self) -> dict[str, int]:
        """RPC counts by message type received by slurmctld, e.g. {'REQUEST_NODE_INFO': 12}."""
        return parse_sdiag_by_message_type(self.client(["sdiag"], timeout=30).stdout)

    def sdiag_by_user(self) -> dict[str, int]:
        return parse_sdiag_by_user(self.client(["sdiag"], timeout=30).stdout)
