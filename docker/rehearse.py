#!/usr/bin/python3
"""Rehearse docker-compose.yml on a machine without a Docker engine: just enough of an engine to
run this project's compose file for real, so that its image, entrypoint, configs and node boot
are exercised, not only read (tests/cluster/test_compose_rehearsal.py).

- The image: docker/Dockerfile's instructions in order. FROM debian:<suite> is an mmdebstrap
  minbase rootfs from this machine's Debian archive, with the policy-rc.d a Docker Debian image
  has; RUN runs `sh -c` in a chroot (the machine's CA certificates bound in, for pip); COPY copies
  from the repository. The RUNs before the first COPY are cached under /var/cache (a base layer),
  the rest is rebuilt into a layer of its own whenever a file it copies changes.
- A container: an overlay root (that layer over the base), the service's volumes (a named volume
  is a directory, filled from the image on first use, as Docker does), its tmpfs mounts, a /dev
  made like Docker's (only the machine's device nodes as they are at start; all of them when
  privileged), the machine's /sys, and its own PID, network, UTS, IPC and mount namespaces. PID 1
  is `init` below (compose's `init: true`: forwards SIGTERM to the entrypoint, reaps orphans).
  Every container has a veth on one bridge; /etc/hosts names every service (Docker's DNS).
- `exec` is `docker compose exec`: nsenter into the entrypoint's namespaces and root.
Nothing it makes outlives the process that made it (PR_SET_PDEATHSIG, namespaces, mounts in a
private mount namespace); `stop` is `docker compose stop` (SIGTERM, then SIGKILL after the grace).
Run it as root in a private mount namespace (the tests' conftest makes one).

What differs from Docker: the base is an mmdebstrap minbase, not the registry's debian image;
names resolve through /etc/hosts, not Docker's DNS; every service has root's full capabilities
(Docker drops most of them for the unprivileged ones); the cgroup hierarchy is the machine's
(`cgroup_v2=True` mounts a cgroup2 at each container's /sys/fs/cgroup, as a cgroup v2 host
gives it, though /proc/self/cgroup still shows this machine's v1 hierarchies).
Only what docker-compose.yml uses is understood (short volume syntax, tmpfs, environment,
hostname, command, privileged, depends_on conditions); anything else is ignored.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lab.process import LabError, TOOL_PATH, die_with_parent, process_alive, run, wait_for  # noqa: E402
from lab.rootfs import CACHE, archive_uri  # noqa: E402

DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUBNET = "10.78.0"
BRIDGE = "br0"
# what a Docker container's /dev always has; a privileged one gets every device of the machine
BASIC_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PASSED_ENV = ("PIP_", "SSL_CERT", "REQUESTS_CA_BUNDLE", "http_proxy", "https_proxy", "no_proxy",
              "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")

# The lab's one error type (lab.process.LabError): a failed command or wait raises it too.
RehearsalError = LabError


# ---------------------------------------------------------------------- the Dockerfile
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    if pending:
        raise RehearsalError(f"{path} ends with a line continuation")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


# A RUN step's namespaces: a private /proc, a /dev with only the basic devices, /sys read-only,
# this machine's resolv.conf and CA bundle read-only (pip must trust what this machine trusts).
# Nothing of the machine is writable from the build: a package's postinst (ca-certificates runs
# update-ca-certificates) must never reach the machine's own files.
_BUILD_SANDBOX = """
R="$0"
mount -t proc proc "$R/proc"
mount --bind -o ro /sys "$R/sys"
mount -t tmpfs -o mode=0755,size=64k build-dev "$R/dev"
for device in null zero full random urandom tty; do cp -a "/dev/$device" "$R/dev/$device"; done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s /proc/self/fd "$R/dev/fd"
mount --bind -o ro /etc/ssl/certs/ca-certificates.crt "$R/run/rehearsal-ca.crt"
mount --bind -o ro /etc/resolv.conf "$R/etc/resolv.conf"
exec chroot "$R" /bin/sh -c "$1"
"""
CA_IN_BUILD = "/run/rehearsal-ca.crt"


def run_in_build(root: Path, command: str, log: list[str]) -> None:
    env = {"PATH": DOCKER_PATH, "HOME": "/root", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    env.update((k, v) for k, v in os.environ.items() if k.startswith(PASSED_ENV))
    env.update(PIP_CERT=CA_IN_BUILD, SSL_CERT_FILE=CA_IN_BUILD, REQUESTS_CA_BUNDLE=CA_IN_BUILD)
    env.pop("SSL_CERT_DIR", None)
    made = []  # mount points the sandbox needs, removed from the layer afterwards
    for path in (root / CA_IN_BUILD.lstrip("/"), root / "etc" / "resolv.conf"):
        if not path.exists() and not path.is_symlink():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            made.append(path)
    try:
        done = run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--",
                    "sh", "-euc", _BUILD_SANDBOX, str(root), command],
                   check=False, timeout=1200, env=env)
    finally:
        for path in made:
            path.unlink(missing_ok=True)
    log.append(f"RUN {command}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise RehearsalError(f"RUN {command[:200]} exited {done.returncode}: "
                             f"{(done.stderr or done.stdout)[-3000:]}")


def copy_into(root: Path, context: Path, sources: Sequence[str], destination: str) -> None:
    """COPY's rules: a directory's contents go into the destination; files keep their mode."""
    target = root / destination.lstrip("/")
    for source in sources:
        path = context / source
        if not path.exists():
            raise RehearsalError(f"COPY {source}: not in the build context {context}")
        if path.is_dir():
            shutil.copytree(path, target, symlinks=True, dirs_exist_ok=True)
        else:
            into = target / path.name if destination.endswith("/") else target
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, into)


def _hash_sources(context: Path, instructions: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256(json.dumps(instructions).encode())
    for name, arguments in instructions:
        if name != "COPY":
            continue
        for source in shlex.split(arguments)[:-1]:
            path = context / source
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                digest.update(str(file.relative_to(context)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


class Image:
    """The Dockerfile built into a cached base (FROM + the RUNs before the first COPY) and a
    cached top layer (the rest); `lowerdirs` for an overlay root."""

    def __init__(self, dockerfile: Path, context: Path):
        self.dockerfile, self.context = dockerfile, context
        self.instructions = dockerfile_instructions(dockerfile)
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        self.log: list[str] = []
        self.base: Path | None = None
        self.layer: Path | None = None

    def build(self) -> "Image":
        name, source = self.instructions[0]
        if name != "FROM" or not source.startswith("debian:"):
            raise RehearsalError(f"{self.dockerfile}: the rehearsal builds FROM debian:<suite> only")
        suite = source.split(":", 1)[1]
        first_copy = next(i for i, (n, _) in enumerate(self.instructions) if n in ("COPY", "ADD"))
        base_steps, top_steps = self.instructions[1:first_copy], self.instructions[first_copy:]
        CACHE.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(json.dumps([suite, base_steps]).encode()).hexdigest()[:12]
        self.base = self._cached(f"compose-base-{suite}-{key}",
                                 lambda root: self._build_base(root, suite, base_steps),
                                 prune=f"compose-base-{suite}-")
        top_key = _hash_sources(self.context, top_steps)
        self.layer = self._cached(f"compose-layer-{key}-{top_key}",
                                  lambda layer: self._build_top(layer, top_steps),
                                  prune="compose-layer-")
        for name, arguments in self.instructions:
            if name == "ENTRYPOINT":
                self.entrypoint = json.loads(arguments)
            elif name == "CMD":
                self.cmd = json.loads(arguments)
        return self

    @property
    def lowerdirs(self) -> str:
        return f"{self.layer}:{self.base}"

    def _cached(self, name: str, make: Callable[[Path], None], prune: str = "") -> Path:
        path = CACHE / name
        with open(CACHE / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (CACHE / f".{name}.complete").exists():
                return path
            if prune:  # older versions (bases of another package list, layers): superseded
                for old in CACHE.glob(f"{prune}*"):
                    shutil.rmtree(old, ignore_errors=True)
                    (CACHE / f".{old.name}.complete").unlink(missing_ok=True)
                    (CACHE / f".{old.name}.lock").unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)
            try:
                make(path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            (CACHE / f".{name}.complete").touch()
        return path

    def _build_base(self, root: Path, suite: str, steps: list[tuple[str, str]]) -> None:
        run(["mmdebstrap", "--quiet", "--variant=minbase", suite, str(root), archive_uri()],
            timeout=900)
        policy = root / "usr" / "sbin" / "policy-rc.d"  # as in Docker's Debian images
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        for name, arguments in steps:
            self._step(root, name, arguments)

    def _build_top(self, layer: Path, steps: list[tuple[str, str]]) -> None:
        upper, work, merged = layer / "upper", layer / "work", layer / "merged"
        for directory in (upper, work, merged):
            directory.mkdir(parents=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.base},upperdir={upper},workdir={work}", str(merged)])
        try:
            for name, arguments in steps:
                self._step(merged, name, arguments)
        finally:
            run(["umount", str(merged)], check=False)
        shutil.rmtree(work, ignore_errors=True)
        merged.rmdir()
        # the layer is its upper dir: move it up so `layer` itself is the overlay lower dir
        for entry in upper.iterdir():
            entry.rename(layer / entry.name)
        upper.rmdir()

    def _step(self, root: Path, name: str, arguments: str) -> None:
        if name == "RUN":
            run_in_build(root, arguments, self.log)
        elif name == "COPY":
            words = [w for w in shlex.split(arguments) if not w.startswith("--")]
            copy_into(root, self.context, words[:-1], words[-1])
        elif name in ("ENTRYPOINT", "CMD"):
            pass
        else:
            raise RehearsalError(f"{self.dockerfile}: the rehearsal does not know {name}")


# ---------------------------------------------------------------------- PID 1 of a container
def init_main(argv: list[str]) -> int:
    """`rehearse.py init ROOT HOSTNAME -- ARGV`: PID 1 of a container's PID namespace (unshare
    made its namespaces). Mounts its /proc, sets the host name, waits for one line on stdin
    (the network is ready), then runs ARGV chrooted into ROOT, passes SIGTERM/SIGINT on to it,
    reaps every orphan, and exits with its status when it ends (the kernel then kills the rest,
    as when Docker's init exits)."""
    root, hostname, argv = argv[0], argv[1], argv[3:]
    run(["mount", "-t", "proc", "proc", f"{root}/proc"])
    run(["hostname", hostname])
    sys.stdin.readline()
    env = {"PATH": DOCKER_PATH, "HOSTNAME": hostname, "HOME": "/root"}
    env.update(json.loads(os.environ.get("REHEARSAL_ENV", "{}")))
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
        os.chroot(root)
        os.chdir("/")
        os.execve(argv[0], argv, env)
    status = None
    while status is None:
        info = signal.sigtimedwait(watched, 1.0)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            os.kill(child, info.si_signo)
        while True:
            try:
                pid, code = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == child:
                status = os.waitstatus_to_exitcode(code)
    return status if status >= 0 else 128 - status


# ---------------------------------------------------------------------- containers
def make_dev(dev: Path, privileged: bool) -> None:
    """A /dev like Docker's: a tmpfs with device nodes copied from this machine's /dev as it is
    now (every one when privileged), pts, shm and the usual links. Devices the kernel makes
    later (a new loop device) are not there: a container must make their nodes itself."""
    run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "rehearsal-dev", str(dev)])
    names = os.listdir("/dev") if privileged else BASIC_DEVICES
    for name in names:
        st = os.lstat(f"/dev/{name}")
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(dev / name, st.st_mode, st.st_rdev)
            os.chmod(dev / name, stat.S_IMODE(st.st_mode))  # not narrowed by the umask
            os.chown(dev / name, st.st_uid, st.st_gid)
    for name in ("pts", "shm", "mqueue"):
        (dev / name).mkdir(exist_ok=True)
    run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts", str(dev / "pts")])
    run(["mount", "-t", "tmpfs", "-o", "mode=1777", "shm", str(dev / "shm")])
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        if not (dev / link).exists():
            os.symlink(target, dev / link)


def volume_entries(service: dict) -> list[tuple[str, str, str, bool]]:
    """(kind, source, target, read_only) of a service's volumes (short syntax)."""
    entries = []
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        kind = "bind" if parts[0].startswith((".", "/")) else "volume"
        entries.append((kind, parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return entries


class Container:
    def __init__(self, name: str, service: dict, image: Image, work: Path, address: str,
                 cgroup_v2: bool = False):
        self.name, self.service, self.image = name, service, image
        self.cgroup_v2 = cgroup_v2
        self.hostname = service.get("hostname", name)
        self.address = address
        self.dir = work / "containers" / name
        self.root = self.dir / "root"
        self.volumes_dir = work / "volumes"
        self.unshare: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.log_path = self.dir / "output.log"

    @property
    def argv(self) -> list[str]:
        return self.image.entrypoint + list(self.service.get("command") or self.image.cmd)

    def prepare(self, hosts_file: Path) -> None:
        upper, work = self.dir / "upper", self.dir / "work"
        for directory in (upper, work, self.root):
            directory.mkdir(parents=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.image.lowerdirs},upperdir={upper},workdir={work}", str(self.root)])
        for kind, source, target, read_only in volume_entries(self.service):
            inside = self.root / target.lstrip("/")
            if kind == "volume":
                volume = self.volumes_dir / source
                if not volume.exists():
                    volume.mkdir(parents=True)
                    if inside.is_dir():  # a new named volume starts as a copy of the image's
                        run(["cp", "-a", f"{inside}/.", str(volume)], timeout=120)
                source_path = volume
            else:
                source_path = (REPO / source).resolve()
            inside.mkdir(parents=True, exist_ok=True)
            run(["mount", "--bind", str(source_path), str(inside)])
            if read_only:
                run(["mount", "-o", "remount,bind,ro", str(inside)])
        for target in self.service.get("tmpfs", []):
            inside = self.root / target.lstrip("/")
            inside.mkdir(parents=True, exist_ok=True)
            run(["mount", "-t", "tmpfs", "-o", "mode=1777" if target == "/tmp" else "mode=0755",
                 "rehearsal-tmpfs", str(inside)])
        make_dev(self.root / "dev", bool(self.service.get("privileged")))
        run(["mount", "--rbind", "/sys", str(self.root / "sys")])
        if self.cgroup_v2:  # what a container sees on a cgroup v2 Docker host
            run(["mount", "-t", "cgroup2", "cgroup2", str(self.root / "sys" / "fs" / "cgroup")])
        for name, text in (("hosts", hosts_file.read_text()), ("hostname", self.hostname + "\n")):
            path = self.dir / name
            path.write_text(text)
            inside = self.root / "etc" / name
            if not inside.exists():  # Docker always mounts these; the image need not have them
                inside.touch()
            run(["mount", "--bind", str(path), str(inside)])

    def start(self, network_pid: int) -> None:
        log = open(self.log_path, "ab")
        env = {"PATH": TOOL_PATH, "REHEARSAL_ENV": json.dumps(self.service.get("environment", {}))}
        self.unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--net", "--uts", "--ipc",
             "--mount", "--propagation", "private", "--", "/usr/bin/python3", "-I", "-S",
             str(Path(__file__).resolve()), "init", str(self.root), self.hostname, "--",
             *self.argv],
            stdin=subprocess.PIPE, stdout=log, stderr=log, cwd="/", env=env,
            start_new_session=True, preexec_fn=die_with_parent)
        log.close()

        def init_pid():
            if self.unshare.poll() is not None:
                raise RehearsalError(f"{self.name}: unshare exited {self.unshare.returncode}: "
                                     f"{self.log()}")
            children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
            kids = children.read_text().split() if children.exists() else []
            return int(kids[0]) if kids else None

        self.init_pid = wait_for(f"{self.name}'s init", init_pid, 10, 0.02)
        veth = f"r{self.name}"[:15]
        in_bridge = ["nsenter", f"--net=/proc/{network_pid}/ns/net", "--", "ip", "link"]
        run([*in_bridge, "add", veth, "type", "veth", "peer", "name", "eth0", "netns",
             str(self.init_pid)])
        run([*in_bridge, "set", veth, "master", BRIDGE, "up"])
        run(["nsenter", f"--net=/proc/{self.init_pid}/ns/net", "--", "sh", "-euc",
             f"ip link set lo up; ip addr add {self.address}/24 dev eth0; ip link set eth0 up"])
        self.unshare.stdin.write(b"go\n")
        self.unshare.stdin.close()

        def entrypoint_started():
            if self.unshare.poll() is not None:
                return True  # it ran and ended already (keygen): `wait` says how
            return self.entrypoint_pid()

        wait_for(f"{self.name}'s entrypoint", entrypoint_started, 10, 0.02)

    def entrypoint_pid(self) -> int | None:
        children = Path(f"/proc/{self.init_pid}/task/{self.init_pid}/children")
        try:
            kids = children.read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def exec(self, argv: Sequence[str], user: str | None = None, workdir: str = "/",
             check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """`docker compose exec [-u USER] [-w DIR] SERVICE ARGV`."""
        pid = self.entrypoint_pid()
        if pid is None:
            raise RehearsalError(f"{self.name} is not running:\n{self.log()[-3000:]}")
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] \
            if user else []
        home = f"/home/{user}" if user else "/root"
        in_workdir = ["sh", "-c", 'cd "$0" && exec "$@"', workdir]
        return run(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--root", "--",
                    *as_user, *in_workdir, *argv], check=check, timeout=timeout,
                   env={"PATH": DOCKER_PATH, "HOME": home, "LANG": "C.UTF-8",
                        "HOSTNAME": self.hostname, **({"USER": user} if user else {})})

    def wait(self, timeout: float) -> int | None:
        try:
            return self.unshare.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float) -> int | None:
        """`docker compose stop`: SIGTERM to PID 1, SIGKILL after `grace`. The exit status."""
        if self.unshare is None:
            return None
        if self.init_pid and process_alive(self.init_pid):
            os.kill(self.init_pid, signal.SIGTERM)
            if self.wait(grace) is None:
                os.kill(self.init_pid, signal.SIGKILL)
        status = self.wait(30)
        if status is None:
            self.unshare.kill()
            status = self.wait(30)
        return status

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Compose:
    """The services of docker-compose.yml, started in depends_on order."""

    def __init__(self, compose_file: Path, work: Path, cgroup_v2: bool = False):
        import yaml  # python3-yaml; only the rehearsal needs it
        self.spec = yaml.safe_load(compose_file.read_text())
        self.work = work
        self.cgroup_v2 = cgroup_v2  # give every container a cgroup2 /sys/fs/cgroup
        self.containers: dict[str, Container] = {}
        self.network: subprocess.Popen | None = None
        self.image: Image | None = None
        self._mounted: list[Path] = []

    def order(self) -> list[str]:
        services, done = self.spec["services"], []
        while len(done) < len(services):
            ready = [n for n in services if n not in done
                     and set(services[n].get("depends_on") or {}) <= set(done)]
            if not ready:
                raise RehearsalError("depends_on cycle")
            done += ready
        return done

    def build(self) -> Image:
        builds = {json.dumps(s["build"], sort_keys=True) for s in self.spec["services"].values()}
        if len(builds) != 1:
            raise RehearsalError("the rehearsal builds one image for every service")
        build = self.spec["services"][self.order()[0]]["build"]
        context = (REPO / build["context"]).resolve()
        self.image = Image(context / build["dockerfile"], context).build()
        return self.image

    def up(self, grace: float = 60) -> None:
        services = self.spec["services"]
        names = self.order()
        addresses = {name: f"{SUBNET}.{10 + i}" for i, name in enumerate(names)}
        hosts = self.work / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(
            f"{addresses[n]} {services[n].get('hostname', n)} {n}\n" for n in names))
        self.network = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c",
             f"ip link add {BRIDGE} type bridge && ip addr add {SUBNET}.1/24 dev {BRIDGE} && "
             f"ip link set {BRIDGE} up && ip link set lo up && echo up && exec sleep 86400"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/",
            env={"PATH": TOOL_PATH}, start_new_session=True, preexec_fn=die_with_parent)
        if self.network.stdout.readline().strip() != "up":
            raise RehearsalError("could not make the bridge")
        for name in names:
            container = Container(name, services[name], self.image, self.work, addresses[name],
                                  self.cgroup_v2)
            self.containers[name] = container
            for dependency, spec in (services[name].get("depends_on") or {}).items():
                if spec.get("condition") == "service_completed_successfully":
                    status = self.containers[dependency].wait(grace)
                    if status != 0:
                        raise RehearsalError(f"{dependency} exited {status}: "
                                             f"{self.containers[dependency].log()}")
            self._mounted.append(container.root)  # unmounted (recursively) at down
            container.prepare(hosts)
            container.start(self.network.pid)

    def down(self, grace: float = 60) -> dict[str, int | None]:
        """Stop the services in reverse order; their exit statuses."""
        statuses = {}
        for name in reversed(list(self.containers)):
            statuses[name] = self.containers[name].stop(grace)
        if self.network is not None:
            self.network.kill()
            self.network.wait(timeout=30)
        while self._mounted:
            run(["umount", "--recursive", "--lazy", str(self._mounted.pop())], check=False)
        return statuses


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "init":
        sys.exit(init_main(sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
