"""Build and cache the test VM: a Debian bookworm kernel (ELF vmlinux) and an initrd.

The image is made only from Debian packages: the kernel with `apt-get download` + `dpkg -x`
(never installed on the host), the userspace with `mmdebstrap`, plus the kernel modules the
tests need (closed over modules.dep) and `vm_init.sh` as `/init`, packed as one
uncompressed newc cpio. It is cached outside the repository under
`/var/cache/slurm-scratch-tests/vm/<digest of the inputs>`; a lock keeps two test processes
from building at once, and a build goes into a temporary folder that is renamed into place.

Run `python3 lab/vm_image.py` to build (or find) the image and print where it is.
"""
from __future__ import annotations

import fcntl
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

CACHE_ROOT = Path("/var/cache/slurm-scratch-tests/vm")
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SUITE = "bookworm"
KERNEL_META_PACKAGE = "linux-image-amd64"
INIT_SCRIPT = Path(__file__).with_name("vm_init.sh")
# The second way to boot the same image: `rdinit=` this to run Debian's systemd as PID 1.
SYSTEMD_INIT_SCRIPT = Path(__file__).with_name("vm_systemd_init.sh")
SYSTEMD_INIT = "/sbin/vm-systemd-init"

GUEST_PACKAGES = (
    "mount", "util-linux", "fdisk", "kmod", "procps", "iproute2", "udev",
    "lvm2", "mdadm", "e2fsprogs", "xfsprogs", "btrfs-progs", "nvme-cli",
    "python3", "python3-pyudev", "python3-psutil", "python3-filelock",
    "python3-pytest", "python3-pytest-timeout",
    # For the full-stack test that runs Slurm inside the guest (~25 MB more).
    "slurmctld", "slurmd", "slurm-client", "munge",
    # For booting with systemd as PID 1 (lab/vm_systemd.py); dbus: slurmd's cgroup/v2 plugin
    # asks systemd over it for its scope. Unused when lab/vm_init.sh is /init.
    "systemd", "dbus",
)

# Loaded by /init in this order (modprobe pulls their dependencies).
BOOT_MODULES = (
    "virtio_pci", "9pnet_virtio", "9p", "configfs", "loop",
    "nvme-core", "nvme-fabrics", "nvme-tcp", "nvmet", "nvmet-tcp",
    "dm-mod", "dm-zero", "md-mod", "raid0", "raid1", "linear",
    "crc32c_generic", "libcrc32c", "ext4",
)
# Also in the image; the kernel loads them when a filesystem of theirs is mounted (loading
# them at boot would cost 1.5 s under TCG).
ON_DEMAND_MODULES = ("xfs", "btrfs", "xxhash_generic", "blake2b_generic",
                     "quota_v2",  # ext4's quota files (-O quota,project): per-job project quotas
                     # QEMU's own NVMe and virtio disks, loaded by udev under systemd
                     "nvme", "virtio_blk")

# Files the guest never needs; dropping them makes the initrd smaller and the boot faster.
PRUNED_GLOBS = (
    "usr/share/doc/*", "usr/share/man/*", "usr/share/locale/*", "usr/share/info/*",
    "usr/lib/udev/hwdb.bin", "usr/lib/x86_64-linux-gnu/gconv/*",
    "usr/lib/x86_64-linux-gnu/libicu*",  # only xfs_scrub links ICU
    # install logs only: the packages' own log folders (/var/log/munge) must stay for munged
    "var/cache/apt/*", "var/lib/apt/lists/*", "var/log/*.log",
)
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")

XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class VmImage:
    directory: Path
    kernel: Path
    initrd: Path
    kernel_release: str


def log(message: str) -> None:
    print(f"[vm-image] {message}", file=sys.stderr, flush=True)


def archive_url(sources: Path = DEBIAN_SOURCES, suite: str = SUITE) -> str:
    """The first `URIs:` of the deb822 stanza that carries `suite` (not -security/-updates)."""
    text = sources.read_text()
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if suite in fields.get("suites", "").split() and fields.get("uris"):
            return fields["uris"].split()[0]
    raise RuntimeError(f"{sources}: no stanza with Suites: {suite} and a URIs: line")


def _apt_cache(*args: str) -> str:
    return subprocess.run(["apt-cache", *args], check=True, capture_output=True, text=True).stdout


def kernel_package() -> tuple[str, str]:
    """(package, version) of the kernel image the bookworm meta-package points at."""
    for attempt in range(2):
        try:
            depends = _apt_cache("depends", KERNEL_META_PACKAGE)
            match = re.search(r"Depends: (linux-image-\S+-amd64)", depends)
            if match:
                name = match.group(1)
                show = _apt_cache("show", "--no-all-versions", name)
                version = re.search(r"^Version: (\S+)", show, re.M)
                if version:
                    return name, version.group(1)
        except subprocess.CalledProcessError:
            pass
        if attempt == 0:
            log("apt-cache does not know the kernel package; running apt-get update")
            subprocess.run(["apt-get", "update", "-qq"], check=True)
    raise RuntimeError(f"cannot resolve {KERNEL_META_PACKAGE} with apt-cache")


def input_digest(kernel: tuple[str, str], url: str) -> str:
    """Everything the image is made from: this builder, /init, the kernel and the archive."""
    digest = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), INIT_SCRIPT.read_bytes(),
                 SYSTEMD_INIT_SCRIPT.read_bytes(),
                 "\0".join((*kernel, url, SUITE)).encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _Paths:
    root: Path

    @property
    def kernel(self) -> Path:
        return self.root / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.root / "initrd.cpio"

    @property
    def release(self) -> Path:
        return self.root / "kernel-release"


def _image_at(directory: Path) -> VmImage | None:
    paths = _Paths(directory)
    if not (paths.kernel.is_file() and paths.initrd.is_file() and paths.release.is_file()):
        return None
    return VmImage(directory, paths.kernel, paths.initrd, paths.release.read_text().strip())


def ensure_image(cache_root: Path = CACHE_ROOT) -> VmImage:
    """Return the cached image for the current inputs, building it first if needed."""
    url = archive_url()
    kernel = kernel_package()
    target = cache_root / input_digest(kernel, url)
    image = _image_at(target)
    if image:
        return image
    cache_root.mkdir(parents=True, exist_ok=True)
    with _locked(cache_root / ".build.lock"):
        image = _image_at(target)  # another process may have built it while we waited
        if image:
            return image
        _remove_stale_builds(cache_root)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_root))
        try:
            build(work, kernel, url)
            work.chmod(0o755)
            os.rename(work, target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        log(f"built {target} in {time.monotonic() - started:.1f} s")
        _prune_old_images(cache_root, keep=target)
    image = _image_at(target)
    assert image is not None
    return image


class _locked:
    """An exclusive flock on `path` for the duration of a with-block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _remove_stale_builds(cache_root: Path) -> None:
    """Temporary folders of builds that were killed (we hold the lock: none is running)."""
    for stale in cache_root.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _prune_old_images(cache_root: Path, keep: Path, keep_count: int = 4) -> None:
    """Keep the newest few images (other checkouts and branches may still use older ones)."""
    images = sorted((p for p in cache_root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in images if p != keep][keep_count - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def build(work: Path, kernel: tuple[str, str], url: str) -> None:
    paths = _Paths(work)
    rootfs = work / "rootfs"
    timed("mmdebstrap", lambda: debootstrap(rootfs, url))
    # Unpacked inside the rootfs so that the guest's own depmod can index it.
    kernel_tree = rootfs / "tmp/kernel"
    timed("kernel package", lambda: unpack_kernel(kernel, work, kernel_tree))
    release = _only_child(kernel_tree / "lib/modules").name
    timed("vmlinux", lambda: extract_vmlinux(
        kernel_tree / f"boot/vmlinuz-{release}", paths.kernel))
    timed("modules", lambda: install_modules(rootfs, "/tmp/kernel", release))
    shutil.rmtree(kernel_tree)
    install_init(rootfs)
    prune(rootfs)
    timed("cpio", lambda: write_cpio(rootfs, paths.initrd))
    shutil.rmtree(rootfs)
    paths.release.write_text(release + "\n")


def timed(what: str, step: Callable[[], None]) -> None:
    started = time.monotonic()
    step()
    log(f"{what}: {time.monotonic() - started:.1f} s")


def debootstrap(rootfs: Path, url: str) -> None:
    argv = ["mmdebstrap", "--quiet", "--mode=root", "--variant=essential",
            "--include=" + ",".join(GUEST_PACKAGES)]
    argv += [f"--dpkgopt=path-exclude={glob}" for glob in DPKG_EXCLUDES]
    argv += [SUITE, str(rootfs), f"deb {url} {SUITE} main"]
    _run(argv)


def unpack_kernel(kernel: tuple[str, str], work: Path, tree: Path) -> None:
    name, version = kernel
    download = work / "download"
    download.mkdir()
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{name}={version}"],
         cwd=download)
    deb = _only_child(download)
    _run(["dpkg", "-x", str(deb), str(tree)])
    shutil.rmtree(download)


def extract_vmlinux(vmlinuz: Path, out: Path) -> None:
    """The ELF kernel inside a bzImage (xz); QEMU boots it directly through PVH, which skips
    the decompressor (about 3 s under TCG)."""
    data = vmlinuz.read_bytes()
    start = data.find(XZ_MAGIC)
    while start >= 0:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            elf = decompressor.decompress(data[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(ELF_MAGIC):
            out.write_bytes(elf)
            return
        start = data.find(XZ_MAGIC, start + 1)
    raise RuntimeError(f"{vmlinuz}: no xz-compressed ELF kernel found")


def install_modules(rootfs: Path, kernel_base: str, release: str) -> None:
    """Copy GUEST_MODULES and everything they depend on (modules.dep) from the unpacked
    kernel package at `kernel_base` (a path inside the rootfs) into the rootfs."""
    # The package ships no modules.dep: make one with the guest's own depmod.
    _run(["chroot", str(rootfs), "depmod", "-b", kernel_base, release])
    source = rootfs / kernel_base.lstrip("/") / "lib/modules" / release
    dependencies = parse_modules_dep((source / "modules.dep").read_text())
    by_name = {module_name(path): path for path in dependencies}
    wanted = dependency_closure(by_name, dependencies, BOOT_MODULES + ON_DEMAND_MODULES)
    target = rootfs / "lib/modules" / release
    for relative in sorted(wanted):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target / relative)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(source / name, target / name)
    _run(["chroot", str(rootfs), "depmod", release])
    (rootfs / "etc/vm-modules").write_text("\n".join(BOOT_MODULES) + "\n")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    dependencies: dict[str, list[str]] = {}
    for line in text.splitlines():
        module, _, needs = line.partition(":")
        if module:
            dependencies[module.strip()] = needs.split()
    return dependencies


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def dependency_closure(by_name: dict[str, str], dependencies: dict[str, list[str]],
                       names: Iterable[str]) -> set[str]:
    wanted: set[str] = set()
    stack: list[str] = []
    for name in names:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise RuntimeError(f"kernel module {name} not found in modules.dep")
        stack.append(path)
    while stack:
        path = stack.pop()
        if path not in wanted:
            wanted.add(path)
            stack.extend(dependencies.get(path, []))
    return wanted


def install_init(rootfs: Path) -> None:
    init = rootfs / "init"
    shutil.copyfile(INIT_SCRIPT, init)
    init.chmod(0o755)
    systemd_init = rootfs / SYSTEMD_INIT.lstrip("/")
    shutil.copyfile(SYSTEMD_INIT_SCRIPT, systemd_init)
    systemd_init.chmod(0o755)
    (rootfs / "etc/hostname").write_text("vm\n")
    (rootfs / "etc/slurm-scratch-test-vm").write_text("the slurm-scratch test VM\n")
    for folder in ("src", "results", "scratch"):
        (rootfs / folder).mkdir(exist_ok=True)


def prune(rootfs: Path) -> None:
    for pattern in PRUNED_GLOBS:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def write_cpio(rootfs: Path, out: Path) -> None:
    """An uncompressed newc archive: the kernel unpacks it without a decompressor."""
    names = b"".join(os.fsencode(path) + b"\0" for path in _walk(rootfs))
    with out.open("wb") as archive:
        subprocess.run(["cpio", "--quiet", "--null", "-o", "-H", "newc"], input=names,
                       stdout=archive, cwd=rootfs, check=True)


def _walk(rootfs: Path) -> Iterator[str]:
    for directory, subdirs, files in os.walk(rootfs):
        relative = os.path.relpath(directory, rootfs)
        yield relative
        for name in sorted(files) + sorted(d for d in subdirs
                                           if os.path.islink(os.path.join(directory, d))):
            yield os.path.join(relative, name)
        subdirs[:] = sorted(d for d in subdirs if not os.path.islink(os.path.join(directory, d)))


def _only_child(folder: Path) -> Path:
    children = list(folder.iterdir())
    if len(children) != 1:
        raise RuntimeError(f"{folder}: expected one entry, found {[c.name for c in children]}")
    return children[0]


def _run(argv: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with exit {result.returncode}:\n"
                           f"{result.stdout[-3000:]}{result.stderr[-3000:]}")


if __name__ == "__main__":
    built = ensure_image()
    print(built.directory)
