"""Fixtures of the Docker tier: one real Docker Engine for the tier's module (lab/docker_engine.py),
the base image built on it (nothing can be pulled), and the host left as it was found. Module
scope, not session: dockerd is stopped and the host's network restored as soon as the tier ends,
before the tiers after it run.

Run it by hand under `flock /tmp/ss-cluster.lock`: while dockerd runs, the host's FORWARD
policy is DROP and the namespace cluster's bridge loses traffic.
"""
from __future__ import annotations

import os
import shutil

import pytest

from lab import docker_engine
from lab.cluster import in_private_mount_namespace

PROGRAMS = (docker_engine.DOCKERD, docker_engine.DOCKER, "/usr/bin/containerd", "/usr/sbin/runc",
            "/usr/bin/mmdebstrap")


def host_state() -> dict:
    """The host's network, as dockerd would change it: firewall, sysctls, interfaces."""
    return {"firewall": docker_engine.firewall_state(), "sysctls": docker_engine.sysctl_state(),
            "links": sorted(docker_engine.link_names())}


@pytest.fixture(scope="module")
def engine():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    missing = [program for program in PROGRAMS if not os.access(program, os.X_OK)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (.ci/install-deps installs them)")
    if shutil.which("iptables-save", path="/usr/sbin:/sbin") is None:
        pytest.skip("iptables is not installed")
    if not in_private_mount_namespace():
        pytest.skip("needs tests/conftest.py's private mount namespace")
    before = host_state()
    engine = docker_engine.Engine()
    try:
        engine.start()
        engine.make_base_image()
        yield engine
    finally:
        problems = engine.stop()
        assert not problems, f"the Docker engine's teardown left: {problems}"
        after = host_state()
        assert after == before, "the host's network is not as it was before dockerd ran"
