"""A real Docker Engine for the tests (tests/docker/), started and ended by the lab, leaving the
host's network as it found it.

- `compose_plugin()`   the Compose v2 CLI plugin: the static binary of trixie's docker-compose
                       package (bookworm's is Compose v1), fetched with a private apt config
                       against the machine's own archive and cached;
- `base_tar()`         a Debian bookworm minbase root (with ca-certificates) as a tar, made by
                       mmdebstrap and cached: the base image, since no registry can be pulled from;
- `Engine`             Debian's dockerd with its own data-root, exec-root, pidfile, socket and
                       (empty) config file under a directory it owns, never a system dockerd's;
                       started with its PID recorded and stopped by it. dockerd rewrites the
                       host's iptables (FORWARD policy DROP, nat rules), forwarding sysctls and
                       adds the docker0 bridge, and leaves them so when it stops: the Engine
                       snapshots them before it starts and restores them after it stops;
- `Engine.make_base_image()`  `debian:bookworm` from that tar, plus a layer carrying the machine's
                       extra CA certificates (an intercepting proxy's), so that apt and pip inside
                       `docker build` trust what this machine trusts. The project's Dockerfile and
                       compose file know nothing of this.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from lab.process import TOOL_PATH, LabError, die_with_parent, run, stop_process, wait_for
from lab.rootfs import CACHE, archive_uri

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client, whatever else is on PATH
COMPOSE_SUITE = "trixie"
COMPOSE_PACKAGE = "docker-compose"
COMPOSE_IN_PACKAGE = "usr/libexec/docker/cli-plugins/docker-compose"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("ca-certificates",)
BASE_IMAGE = "debian:bookworm"
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
IPTABLES = {"iptables": ("iptables-save", "iptables-restore"),
            "ip6tables": ("ip6tables-save", "ip6tables-restore")}
BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
                  "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
                  "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
                  "raw": ("PREROUTING", "OUTPUT"),
                  "security": ("INPUT", "FORWARD", "OUTPUT")}
SYSCTL_DIRS = ("/proc/sys/net/ipv4/conf/all", "/proc/sys/net/ipv4/conf/default",
               "/proc/sys/net/ipv6/conf/all", "/proc/sys/net/ipv6/conf/default",
               "/proc/sys/net/bridge")
SYSCTL_FILES = ("/proc/sys/net/ipv4/ip_forward",)
# Host directories dockerd and containerd make whatever their roots (plugin sockets, shim
# sockets): removed after the engine stops when they did not exist before and hold no file.
HOST_DIRS = ("/run/docker", "/run/containerd")
# The host interfaces dockerd makes: its default bridge, a compose network's bridge, a veth end.
DOCKER_LINK = re.compile(r"docker0|br-[0-9a-f]{12}|veth[0-9a-f]{7}")
START_TIMEOUT = 120


# ---------------------------------------------------------------------- cached downloads
@contextlib.contextmanager
def _cache_lock(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; others wait and reuse it
        yield


def _private_apt(work: Path, suite: str) -> list[str]:
    """apt options for `suite` of the machine's archive, with lists and cache under `work`:
    the machine's own apt configuration and state are never touched."""
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "archives" / "partial").mkdir(parents=True)
    sources = work / "sources.list"
    sources.write_text(f"deb [signed-by={KEYRING}] {archive_uri()} {suite} main\n")
    return ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work}",
            "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
            "-o", "APT::Sandbox::User=root", "-q"]


def compose_plugin() -> Path:
    """The cached Compose v2 plugin binary (downloaded once: a few seconds, ~60 MB)."""
    key = hashlib.sha256(f"{COMPOSE_SUITE} {COMPOSE_PACKAGE}".encode()).hexdigest()[:12]
    path = CACHE / f"docker-compose-{COMPOSE_SUITE}-{key}" / "docker-compose"
    with _cache_lock(path.parent.name):
        if path.is_file():
            return path
        work = Path(tempfile.mkdtemp(prefix=".build-compose-", dir=CACHE))
        try:
            apt = _private_apt(work, COMPOSE_SUITE)
            run(["apt-get", *apt, "update"], timeout=600)
            download = work / "download"
            download.mkdir()
            run(["sh", "-c", 'cd "$0" && exec "$@"', str(download), "apt-get", *apt,
                 "download", COMPOSE_PACKAGE], timeout=600)
            [deb] = download.glob("*.deb")
            run(["dpkg-deb", "-x", str(deb), str(work / "root")], timeout=120)
            binary = work / "root" / COMPOSE_IN_PACKAGE
            if not binary.is_file():
                raise LabError(f"{deb.name} has no {COMPOSE_IN_PACKAGE}")
            path.parent.mkdir(exist_ok=True)
            shutil.copy2(binary, path.with_suffix(".new"))
            os.replace(path.with_suffix(".new"), path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return path


def base_tar() -> Path:
    """The cached bookworm minbase tar (built once with mmdebstrap: about a minute)."""
    key = hashlib.sha256(" ".join((BASE_SUITE, *BASE_PACKAGES)).encode()).hexdigest()[:12]
    path = CACHE / f"docker-base-{BASE_SUITE}-{key}.tar"
    with _cache_lock(path.name):
        if path.is_file():
            return path
        building = path.with_name(f".build-{path.name}-{os.getpid()}")
        try:
            run(["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar",
                 f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE, str(building),
                 archive_uri()], timeout=900)
            os.replace(building, path)
        finally:
            building.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------- the host's network
def _iptables_save(family: str) -> str:
    save = shutil.which(IPTABLES[family][0], path=TOOL_PATH)
    return run([save], timeout=30).stdout if save else ""


def _tables(saved: str) -> dict[str, str]:
    """{table: its iptables-save block} of an iptables-save text."""
    tables = {}
    for block in re.findall(r"^\*\w+\n.*?^COMMIT\n", saved, re.M | re.S):
        tables[block[1:block.index("\n")]] = block
    return tables


def _empty_table(table: str) -> str:
    chains = "".join(f":{chain} ACCEPT [0:0]\n" for chain in BUILTIN_CHAINS.get(table, ()))
    return f"*{table}\n{chains}COMMIT\n"


def firewall_state() -> dict[str, dict[str, str]]:
    """{family: {table: rules}} with counters dropped and a table that accepts everything with
    no rule left out: such a table filters nothing, the same as no table (iptables-nft cannot
    delete a table that dockerd made, only empty it)."""
    state = {}
    for family in IPTABLES:
        tables = {}
        for table, block in _tables(_iptables_save(family)).items():
            lines = [re.sub(r" \[\d+:\d+\]$", "", line) for line in block.splitlines()
                     if not line.startswith("#")]
            if lines != _empty_table(table).replace(" [0:0]", "").splitlines():
                tables[table] = "\n".join(lines)
        state[family] = tables
    return state


def sysctl_state() -> dict[str, str]:
    """The network sysctls dockerd may change (forwarding, bridge netfilter), path -> value."""
    values = {}
    paths = [str(p) for d in SYSCTL_DIRS if os.path.isdir(d) for p in sorted(Path(d).iterdir())]
    for path in [*paths, *SYSCTL_FILES]:
        try:
            values[path] = Path(path).read_text().strip()
        except OSError:  # write-only or not readable: not something to restore
            continue
    return values


def link_names() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def remove_empty_tree(top: str) -> bool:
    """rmdir `top` and the directories below it, bottom up; never a file. True if it is gone."""
    for directory, _, _ in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return not os.path.lexists(top)


class HostState:
    """What dockerd changes on the host (network, /run), recorded before it starts, put back after it stops."""

    def __init__(self) -> None:
        self.saved = {family: _iptables_save(family) for family in IPTABLES}
        self.sysctls = sysctl_state()
        self.links = link_names()
        self.absent_dirs = [d for d in HOST_DIRS if not os.path.lexists(d)]

    def restore(self) -> list[str]:
        """Put the record back; what could not be restored."""
        problems = []
        for family, saved in self.saved.items():
            restore = shutil.which(IPTABLES[family][1], path=TOOL_PATH)
            if restore is None:
                continue
            before = _tables(saved)
            now = _tables(_iptables_save(family))
            text = "".join(before.get(table) or _empty_table(table)
                           for table in sorted(before.keys() | now.keys()))
            if text:  # each table named is flushed and replaced, its own chains deleted
                result = run([restore], input=text, check=False, timeout=30)
                if result.returncode != 0:
                    problems.append(f"{restore}: {result.stderr.strip()}")
        for path, value in self.sysctls.items():
            try:
                if Path(path).read_text().strip() != value:
                    Path(path).write_text(value + "\n")
            except OSError as exc:
                problems.append(f"{path}: {exc}")
        for link in sorted(n for n in link_names() - self.links if DOCKER_LINK.fullmatch(n)):
            result = run(["ip", "link", "delete", link], check=False)
            if result.returncode != 0 and link in link_names():
                problems.append(f"link {link}: {result.stderr.strip()}")
        for directory in self.absent_dirs:
            if not remove_empty_tree(directory):
                problems.append(f"{directory} was made while the engine ran and is not empty")
        return problems


# ---------------------------------------------------------------------- the engine
class Engine:
    """dockerd under `work` (made by `start`, removed by `stop`), and a client for it."""

    def __init__(self, work_parent: str = "/var/tmp") -> None:
        self.work_parent = work_parent
        self.work: Path | None = None
        self.daemon: subprocess.Popen | None = None
        self.pid: int | None = None
        self.host: HostState | None = None

    @property
    def socket(self) -> Path:
        return self.work / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        """The client's environment: this engine's socket, this engine's CLI plugins."""
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.work / "client"),
                "HOME": str(self.work)}

    def start(self) -> "Engine":
        if "docker0" in link_names():
            raise LabError("a docker0 bridge exists: another Docker engine runs here; "
                           "the lab starts its own and would share the host's network with it")
        plugin = compose_plugin()
        self.work = Path(tempfile.mkdtemp(prefix="ss-docker-", dir=self.work_parent))
        plugins = self.work / "client" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(plugin)
        config = self.work / "daemon.json"
        # never /etc/docker/daemon.json, nor dockerd's key in /etc/docker
        config.write_text(json.dumps({"deprecated-key-path": str(self.work / "key.json")}) + "\n")
        self.host = HostState()
        log = open(self.work / "dockerd.log", "ab")
        try:
            self.daemon = subprocess.Popen(
                [DOCKERD, "--config-file", str(config), "--data-root", str(self.work / "data"),
                 "--exec-root", str(self.work / "exec"), "--pidfile", str(self.work / "dockerd.pid"),
                 "--host", f"unix://{self.socket}", "--storage-driver", "overlay2"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                env={"PATH": TOOL_PATH, "LANG": "C.UTF-8"}, start_new_session=True,
                preexec_fn=die_with_parent)
        finally:
            log.close()
        self.pid = self.daemon.pid

        def answers() -> bool:
            if self.daemon.poll() is not None:
                raise LabError(f"dockerd exited {self.daemon.returncode}: {self.log()[-3000:]}")
            return self.docker(["version"], check=False, timeout=30).returncode == 0

        wait_for("dockerd to answer", answers, START_TIMEOUT, 0.5)
        return self

    def docker(self, argv: Sequence[str], check: bool = True, timeout: float = 600,
               input: str | None = None) -> subprocess.CompletedProcess:
        return run([DOCKER, *argv], check=check, timeout=timeout, env=self.env, input=input)

    def compose(self, compose_file: Path, project: str, argv: Sequence[str], check: bool = True,
                timeout: float = 600) -> subprocess.CompletedProcess:
        return self.docker(["compose", "--file", str(compose_file), "--project-name", project,
                            *argv], check=check, timeout=timeout)

    def make_base_image(self) -> None:
        """`debian:bookworm` built here (no registry): the cached minbase tar imported, then a
        layer with the machine's extra CA certificates made trusted."""
        imported = f"{BASE_IMAGE}-minbase"
        self.docker(["import", str(base_tar()), imported], timeout=600)
        context = self.work / "base-image"
        (context / "ca").mkdir(parents=True)
        certificates = sorted(EXTRA_CA_DIR.rglob("*.crt")) if EXTRA_CA_DIR.is_dir() else []
        for certificate in certificates:
            shutil.copy(certificate, context / "ca" / certificate.name)
        (context / "Dockerfile").write_text(
            f"FROM {imported}\n"
            "COPY ca/ /usr/local/share/ca-certificates/\n"
            "RUN update-ca-certificates\n"
            'CMD ["bash"]\n')
        self.docker(["build", "--quiet", "--tag", BASE_IMAGE, str(context)], timeout=600)

    def log(self) -> str:
        path = self.work / "dockerd.log" if self.work else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def leftover_processes(self) -> list[str]:
        """Processes whose command line names this engine's directory (containerd, shims)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(self.work).encode() in cmdline:
                found.append(f"{entry}: {cmdline.decode(errors='replace')[:200]}")
        return found

    def stop(self) -> list[str]:
        """Stop dockerd by its PID, unmount what it left under its directory, remove it, put the
        host's network back. Returns what could not be undone."""
        problems = []
        if self.pid is not None and not stop_process(self.pid, self.daemon, grace=60):
            problems.append(f"dockerd {self.pid} did not stop")
        if self.work is not None:
            try:
                wait_for("containerd and its shims to end", lambda: not self.leftover_processes(),
                         30, 0.2)
            except LabError:
                problems += [f"left running: {p}" for p in self.leftover_processes()]
            mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text()
                      .splitlines() if line.split()[4].startswith(f"{self.work}/")]
            for mount_point in sorted(mounts, key=len, reverse=True):
                run(["umount", "--lazy", mount_point], check=False)
            if not problems:
                run(["rm", "-rf", "--one-file-system", str(self.work)], check=False, timeout=300)
                if self.work.exists():
                    problems.append(f"{self.work} could not be removed")
            else:
                problems.append(f"{self.work} kept: the engine did not end cleanly")
        if self.host is not None:
            problems += self.host.restore()
            self.host = None
        return problems


def project_resources(engine: Engine, project: str) -> dict[str, list[str]]:
    """What the engine holds of a compose project: containers, volumes, networks (by label)."""
    label = f"label=com.docker.compose.project={project}"
    found = {}
    for kind, argv in (("containers", ["ps", "--all", "--quiet", "--filter", label]),
                       ("volumes", ["volume", "ls", "--quiet", "--filter", label]),
                       ("networks", ["network", "ls", "--quiet", "--filter", label])):
        found[kind] = engine.docker(argv, timeout=60).stdout.split()
    return found


def inspect_container(engine: Engine, container: str) -> dict:
    return json.loads(engine.docker(["inspect", container], timeout=60).stdout)[0]
