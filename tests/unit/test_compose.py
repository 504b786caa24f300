"""Static checks of the docker-compose cluster (docker-compose.yml, docker/), the ones that need no
Docker engine: files, services, volumes, the nodes' privileges, the configs. tests/docker runs it
on a real engine, tests/cluster/test_node_bootstrap.py the node boot it shares with the harness."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml is not installed (apt-get install python3-yaml)")

from slurm_scratch.config import parse_config  # noqa: E402

from lab.node_boot import CONTROL_DEVICES, node_settings  # noqa: E402
from lab.toolconf import read_ini, render_ini  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKER = REPO / "docker"
HOOKS = ("prolog", "epilog", "task_prolog", "healthcheck")
NODE_CAPABILITIES = {"SYS_ADMIN", "SYS_PTRACE", "SYSLOG"}  # the why: docker-compose.yml
LOOP_MAJOR = 7


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, dict]:
    return _compose()["services"]


def _roles() -> dict[str, str]:
    """service -> its role: the entrypoint argument (its command, else the image's CMD)."""
    default = _dockerfile_exec_form("CMD")
    return {name: (service.get("command") or default)[0] for name, service in _services().items()}


def _hostname(name: str) -> str:
    return _services()[name].get("hostname", name)


def _volume_entries(service: dict) -> list[tuple[str, str, str]]:
    """(type, source, target) of each entry of a service's `volumes`, short or long syntax."""
    entries = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            entries.append((entry.get("type", "volume"), entry.get("source", ""), entry["target"]))
            continue
        parts = entry.split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        entries.append((kind, source, target))
    return entries


def _dockerfile_path(service: dict) -> Path:
    build = service["build"]
    context = REPO / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return context / dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/Dockerfile, continuation lines joined."""
    text = (DOCKER / "Dockerfile").read_text()
    logical, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued RUN
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends with a line continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def _copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD without --from."""
    copies = []
    for instruction, arguments in _dockerfile_instructions():
        if instruction in ("COPY", "ADD"):
            words = [w for w in shlex.split(arguments) if not w.startswith("--")]
            assert "--from" not in arguments
            copies.append((words[:-1], words[-1]))
    return copies


def _image_file_source(image_path: str) -> Path | None:
    """The repository file that the Dockerfile copies to `image_path`."""
    for sources, destination in _copies():
        for source in sources:
            if destination == image_path or (destination.endswith("/") and
                                              destination + Path(source).name == image_path):
                return REPO / source
    return None


def _dockerfile_exec_form(instruction: str) -> list[str]:
    found = [args for name, args in _dockerfile_instructions() if name == instruction]
    assert len(found) == 1, f"the Dockerfile has {len(found)} {instruction} instructions"
    value = json.loads(found[0])  # the exec form: no shell between docker and the entrypoint
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _entrypoint() -> Path:
    path = _image_file_source(_dockerfile_exec_form("ENTRYPOINT")[0])
    assert path is not None, "the ENTRYPOINT is not a file the Dockerfile copies into the image"
    return path


def _entrypoint_constant(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", _entrypoint().read_text(), re.M)
    assert match, f"{_entrypoint()}: no {name}="
    return match.group(1)


def _slurm_conf() -> list[tuple[str, str]]:
    pairs = []
    for line in (DOCKER / "slurm.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def _slurm_conf_value(key: str) -> str:
    values = [value for k, value in _slurm_conf() if k.lower() == key.lower()]
    assert len(values) == 1, f"docker/slurm.conf sets {key} {len(values)} times"
    return values[0]


# ---------------------------------------------------------------------- the compose file
def test_compose_file_parses_into_services_volumes_networks():
    compose = _compose()
    assert isinstance(compose, dict)
    assert {"services", "volumes", "networks"} <= compose.keys()
    assert all(isinstance(service, dict) for service in compose["services"].values())


def test_build_contexts_and_dockerfiles_exist():
    for name, service in _services().items():
        assert "build" in service or "image" in service, name
        if "build" in service:
            dockerfile = _dockerfile_path(service)
            assert dockerfile.parent.is_dir() and dockerfile.is_file(), f"{name}: {dockerfile}"
            assert dockerfile == DOCKER / "Dockerfile"


def test_services_of_one_image_build_it_the_same_way():
    by_image: dict[str, set[str]] = {}
    for service in _services().values():
        by_image.setdefault(service["image"], set()).add(json.dumps(service.get("build"), sort_keys=True))
    assert all(len(builds) == 1 for builds in by_image.values()), by_image


def test_volumes_are_declared_and_bind_mounts_exist():
    declared = set(_compose()["volumes"] or {})
    used = set()
    for name, service in _services().items():
        for kind, source, target in _volume_entries(service):
            assert target.startswith("/"), f"{name}: {target}"
            if kind == "bind":
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: bind mount {source} missing"
            elif source:
                assert source in declared, f"{name}: volume {source!r} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_networks_are_declared():
    declared = set(_compose()["networks"] or {})
    for name, service in _services().items():
        networks = service.get("networks", [])
        assert set(networks) <= declared, f"{name}: {networks}"


def test_depends_on_names_existing_services_and_no_cycle():
    services = _services()

    def dependencies(name: str) -> set[str]:
        depends = services[name].get("depends_on", [])
        return set(depends if isinstance(depends, list) else depends.keys())

    for name in services:
        assert dependencies(name) <= services.keys() - {name}, name
        for dep, spec in (services[name].get("depends_on") or {}).items() if isinstance(
                services[name].get("depends_on"), dict) else ():
            assert spec.get("condition", "service_started") in (
                "service_started", "service_healthy", "service_completed_successfully")
    done: set[str] = set()
    while len(done) < len(services):  # a topological order exists
        ready = {n for n in services if n not in done and dependencies(n) <= done}
        assert ready, f"depends_on cycle among {set(services) - done}"
        done |= ready


def test_every_command_is_a_role_of_the_entrypoint():
    entrypoint = _entrypoint().read_text()
    roles = set(re.findall(r"^\s{2}([a-z]+)\) ", entrypoint, re.M))
    assert _roles(), "no services"
    for name, role in _roles().items():
        assert role in roles, f"{name}: {role!r} is not one of the entrypoint's roles {roles}"


def test_one_controller_two_nodes_with_their_own_disks():
    roles = _roles()
    assert sorted(roles.values()).count("controller") == 1
    nodes = [name for name, role in roles.items() if role == "node"]
    assert len(nodes) == 2
    disk_dir = _entrypoint_constant("DISK_DIR")
    disk_volumes = []
    for name in nodes:
        service = _services()[name]
        assert service.get("init") is True, f"{name}: PID 1 must reap Slurm's orphans and pass SIGTERM on"
        [volume] = [source for kind, source, target in _volume_entries(service) if target == disk_dir]
        disk_volumes.append(volume)
    assert len(set(disk_volumes)) == len(nodes), "each node needs its own disk images"


def test_no_service_is_privileged_and_nodes_get_only_the_listed_capabilities():
    for name, role in _roles().items():
        service = _services()[name]
        assert "privileged" not in service, f"{name}: privileged (every capability and device)"
        assert "devices" not in service, f"{name}: a devices: entry the host lacks stops the container"
        assert "seccomp=unconfined" not in service.get("security_opt", []), name
        if role == "node":
            assert set(service["cap_add"]) == NODE_CAPABILITIES, service["cap_add"]
        else:
            assert not service.get("cap_add") and not service.get("device_cgroup_rules"), name


def test_node_device_rules_allow_exactly_the_nodes_the_boot_makes():
    allowed = set()
    for name, role in _roles().items():
        if role != "node":
            continue
        rules = _services()[name]["device_cgroup_rules"]
        assert f"b {LOOP_MAJOR}:* rmw" in rules, rules  # the loop devices the disks attach to
        allowed |= {tuple(rule.split()) for rule in rules}
    made = {("c", f"{major}:{minor}") for _, major, minor, _ in CONTROL_DEVICES}
    assert {(kind, numbers) for kind, numbers, _ in allowed} == made | {("b", f"{LOOP_MAJOR}:*")}
    assert all("m" in access for _, _, access in allowed)  # mknod: the node makes them itself
    assert ("c", "1:11", "rm") in allowed  # /dev/kmsg: read, never written
    text = _entrypoint().read_text()
    assert "--make-device-nodes" in text[text.index('"$BOOTSTRAP" up'):]


def test_every_capability_rule_and_security_option_says_why():
    lines = COMPOSE_FILE.read_text().splitlines()
    for key in ("cap_add:", "device_cgroup_rules:", "security_opt:"):
        start = next(i for i, line in enumerate(lines) if line.strip() == key)
        entries = []
        for line in lines[start + 1:]:
            if line.strip().startswith("- "):
                entries.append(line)
            elif not line.strip().startswith("#"):
                break
        assert entries and all("  # " in entry for entry in entries), (key, entries)


def test_slurm_tmpdisk_is_the_striped_volume_measured_at_the_mount_point():
    assert _slurm_conf_value("TmpFS") == read_ini(DOCKER / "slurm-scratch.conf")["volume"]["mount_point"]
    for name, role in _roles().items():
        if role != "node":
            continue
        environment = _services()[name]["environment"]
        volume_mib = int(environment["SCRATCH_DISKS"]) * int(environment["SCRATCH_DISK_MIB"])
        [line] = [value for key, value in _slurm_conf() if key == "NodeName"
                  and value.split()[0] == _hostname(name)]
        tmp_disk = int(re.search(r"\bTmpDisk=(\d+)", line).group(1))
        # at most what slurmd measures (less drains the node "Low TmpDisk"), close to it
        assert 0.9 * volume_mib <= tmp_disk <= volume_mib, (name, tmp_disk, volume_mib)


def test_munge_key_volume_written_by_keygen_read_by_every_daemon():
    key_dir = _entrypoint_constant("KEY_DIR")
    for name, role in _roles().items():
        mounts = [entry for entry in _services()[name]["volumes"] if entry.split(":")[1] == key_dir]
        assert len(mounts) == 1, f"{name} does not mount the munge key volume at {key_dir}"
        assert mounts[0].endswith(":ro") == (role != "keygen"), mounts[0]
    for name, role in _roles().items():
        if role in ("controller", "node"):
            depends = _services()[name]["depends_on"]
            keygen = [n for n, r in _roles().items() if r == "keygen"]
            assert depends[keygen[0]]["condition"] == "service_completed_successfully"


def test_jobs_share_homes_between_submit_host_and_nodes():
    for name, role in _roles().items():
        if role in ("controller", "node"):
            assert ("volume", "home", "/home") in _volume_entries(_services()[name]), name


# ---------------------------------------------------------------------- the image
def test_dockerfile_is_bookworm_and_copies_existing_files():
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "debian:bookworm")
    for sources, destination in _copies():
        assert destination.startswith("/"), destination
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} is not in the repository"


def test_dockerfile_installs_slurm_and_the_project_with_make_install():
    runs = " ".join(args for name, args in _dockerfile_instructions() if name == "RUN")
    for package in ("slurmctld", "slurmd", "slurm-client", "munge", "btrfs-progs", "python3-venv"):
        assert re.search(rf"\s{re.escape(package)}\s", runs), package
    assert "install PREFIX=/usr/local" in runs
    assert "useradd" in runs  # the ordinary user who submits jobs
    copied = {Path(source).parts[0] for sources, _ in _copies() for source in sources}
    assert {"Makefile", "setup.cfg", "pyproject.toml", "slurm_scratch", "hooks"} <= copied


def test_entrypoint_and_command_scripts_exist_and_are_executable():
    for instruction in ("ENTRYPOINT", "CMD"):
        first = _dockerfile_exec_form(instruction)[0]
        if first.startswith("/"):
            source = _image_file_source(first)
            assert source is not None and source.is_file(), f"{instruction} {first}"
            assert os.stat(source).st_mode & 0o111 == 0o111, f"{source} is not executable"
    assert _entrypoint() == DOCKER / "entrypoint.sh"


def test_entrypoint_shell_syntax():
    checked = subprocess.run(["bash", "-n", str(_entrypoint())], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert _entrypoint().read_text().startswith("#!/bin/bash\n")


def test_entrypoint_paths_are_what_the_image_holds():
    for name in ("BOOTSTRAP", "BASE_CONF"):
        source = _image_file_source(_entrypoint_constant(name))
        assert source is not None and source.is_file(), name
    assert _image_file_source(_entrypoint_constant("BOOTSTRAP")) == \
        REPO / "lab" / "node_boot.py"  # the harness's own bootstrap
    assert _image_file_source("/etc/slurm/slurm.conf") == DOCKER / "slurm.conf"


def test_entrypoint_passes_only_options_node_bootstrap_knows():
    text = _entrypoint().read_text()
    call = text[text.index('"$BOOTSTRAP" up'):]
    call = call[:call.index("&\n")]
    options = set(re.findall(r"(--[a-z-]+)", call))
    known = set(re.findall(r'up\.add_argument\("(--[a-z-]+)"',
                           (REPO / "lab" / "node_boot.py").read_text()))
    assert options and options <= known, options - known
    required = {"--image-dir", "--base-conf", "--ready"}
    assert required <= options


# ---------------------------------------------------------------------- the cluster's configs
def test_slurm_conf_wires_the_installed_hooks():
    makefile = (REPO / "Makefile").read_text()
    hooks = re.search(r"^HOOKS = (.+)$", makefile, re.M).group(1).split()
    assert sorted(hooks) == sorted(HOOKS)
    libexec = "/usr/local/libexec/slurm-scratch"  # LIBEXEC of `make install PREFIX=/usr/local`
    assert "LIBEXEC = $(PREFIX)/libexec/slurm-scratch" in makefile
    assert _slurm_conf_value("Prolog") == f"{libexec}/prolog"
    assert _slurm_conf_value("Epilog") == f"{libexec}/epilog"
    assert _slurm_conf_value("TaskProlog") == f"{libexec}/task_prolog"
    assert _slurm_conf_value("HealthCheckProgram") == f"{libexec}/healthcheck"
    assert "Alloc" in _slurm_conf_value("PrologFlags").split(",")
    assert int(_slurm_conf_value("HealthCheckInterval")) > 0


def test_slurm_conf_names_the_compose_hostnames():
    roles = _roles()
    [controller] = [name for name, role in roles.items() if role == "controller"]
    assert _slurm_conf_value("SlurmctldHost") == _hostname(controller)
    nodes = {_hostname(name) for name, role in roles.items() if role == "node"}
    node_lines = [value.split()[0] for key, value in _slurm_conf() if key == "NodeName"]
    assert set(node_lines) == nodes and len(node_lines) == len(nodes)
    partition = _slurm_conf_value("PartitionName")
    assert set(re.search(r"\bNodes=(\S+)", partition).group(1).split(",")) == nodes
    assert "Default=YES" in partition


def test_node_settings_make_a_valid_slurm_scratch_conf_that_stripes():
    base = DOCKER / "slurm-scratch.conf"
    assert _image_file_source(_entrypoint_constant("BASE_CONF")) == base
    settings = read_ini(base)
    assert "devices" not in settings.get("volume", {}), "the bootstrap names each node's devices"
    text = render_ini(node_settings(settings, ["/dev/loop7", "/dev/loop8"]))
    config = parse_config(text, "node slurm-scratch.conf")
    assert config.volume.backend == "btrfs"  # stripes on any kernel, no device-mapper or md
    assert config.volume.mount_point == "/scratch"


def test_readme_commands_name_existing_services_and_users():
    section = (REPO / "README.md").read_text().split("## Try it with Docker", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"docker compose exec ((?:-[uw] \S+ )*)(\S+) ", section)
    assert commands, "no `docker compose exec` in the README's Docker section"
    users = {segment.split()[-1] for name, args in _dockerfile_instructions() if name == "RUN"
             for segment in args.split("&&") if segment.strip().startswith("useradd ")}
    for options, service in commands:
        assert service in _services(), f"README: docker compose exec ... {service}: no such service"
        user = re.search(r"-u (\S+)", options)
        assert user is None or user.group(1) in users, f"README: no user {user.group(1)} in the image"
    assert "docker compose up -d --build" in section
