"""A minimal Debian rootfs with Python, made with debootstrap and imported into Docker: no registry needed."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import docker

from app.errors import BaseImageBuildError
from app.images.process import run_streaming
from app.models import LogSink

DEBIAN_SUITE = "bookworm"
ROOTFS_REPOSITORY = "datapane-rootfs"
ROOTFS_TAG = f"{ROOTFS_REPOSITORY}:{DEBIAN_SUITE}"
ROOTFS_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What debian:*-slim (python:3.11-slim's base) keeps out of the image, as a dpkg config.
SLIM_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/groff/*",
    "/usr/share/info/*",
    "/usr/share/linda/*",
    "/usr/share/lintian/overrides/*",
    "/usr/share/locale/*",
    "/usr/share/man/*",
)
SLIM_INCLUDES = ("/usr/share/doc/*/copyright",)
_CHROOT_ENV = {"PATH": DEFAULT_PATH, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}


def run_logged(cmd: list[str], log: LogSink, env: dict[str, str] | None = None) -> None:
    """Run `cmd`, streaming its output into `log`; raise BaseImageBuildError with the output's tail if it fails."""
    try:
        code, tail = run_streaming(cmd, log, env=env)
    except OSError as e:
        raise BaseImageBuildError(f"cannot run {cmd[0]}: {e}") from e
    if code:
        error = subprocess.CalledProcessError(code, cmd)
        raise BaseImageBuildError(f"{error}\n" + "\n".join(tail)) from error


def _tool(name: str) -> str:
    """Path of a system tool, also looking in the sbin directories that non-login PATHs lack."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{DEFAULT_PATH}") or name


def _os_release() -> dict[str, str]:
    """The host's /etc/os-release as a dict (empty when absent)."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return {}
    pairs = (line.partition("=") for line in text.splitlines() if "=" in line)
    return {key: value.strip().strip("\"'") for key, _, value in pairs}


def _apt_entries() -> list[tuple[str, list[str]]]:
    """(URI, suites) of every enabled `deb` source of the host, one-line and deb822 formats alike."""
    directory = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list"), *(sorted(directory.iterdir()) if directory.is_dir() else [])]
    entries: list[tuple[str, list[str]]] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, list[str]] = {}
                for line in stanza.splitlines():
                    if line[:1] not in ("#", " ", "\t", "") and ":" in line:
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.split()
                if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                    entries += [(uri, fields.get("suites", [])) for uri in fields.get("uris", [])]
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.partition("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    return entries


def host_mirrors() -> tuple[str, str]:
    """The Debian archive and security mirrors of the host's apt sources, else deb.debian.org's."""
    release = _os_release()
    mirror, security = DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
    if release.get("ID") != "debian":
        return mirror, security
    codenames = {DEBIAN_SUITE, release.get("VERSION_CODENAME", DEBIAN_SUITE)}
    for uri, suites in reversed(_apt_entries()):  # reversed: the first matching entry wins
        if codenames & set(suites):
            mirror = uri
        if {f"{name}-security" for name in codenames} & set(suites):
            security = uri
    return mirror.rstrip("/"), security.rstrip("/")


def debootstrap_command(rootfs: Path, mirror: str, keyring: Path = DEBIAN_KEYRING) -> list[str]:
    """Debootstrap of a minimal bookworm that checks the archive's signatures against Debian's keyring.

    :raises BaseImageBuildError: the keyring or gpgv is missing (nothing unverified is ever built).
    """
    if not keyring.is_file():
        raise BaseImageBuildError(
            f"the offline build verifies Debian's archive signatures, but the keyring {keyring} is missing: "
            "apt-get install debian-archive-keyring"
        )
    if shutil.which("gpgv", path=f"{os.environ.get('PATH', '')}:{DEFAULT_PATH}") is None:
        raise BaseImageBuildError(
            "the offline build verifies Debian's archive signatures with gpgv: apt-get install gpgv"
        )
    return [
        _tool("debootstrap"), "--variant=minbase", "--components=main", f"--keyring={keyring}", "--force-check-gpg",
        f"--include={','.join(ROOTFS_PACKAGES)}", DEBIAN_SUITE, str(rootfs), mirror,
    ]  # fmt: skip


def _make_rootfs(rootfs: Path, mirror: str, security_mirror: str, log: LogSink) -> None:
    """Debootstrap a minimal bookworm with Python into `rootfs`, apply Debian's updates and clean apt's caches."""
    if os.geteuid() != 0:
        raise BaseImageBuildError("the offline build runs debootstrap and chroot, which need root")
    log(f"debootstrap {DEBIAN_SUITE} from {mirror} into {rootfs} (takes a few minutes)")
    run_logged(debootstrap_command(rootfs, mirror), log)
    _slim(rootfs)
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {mirror} {DEBIAN_SUITE} main\n"
        f"deb {mirror} {DEBIAN_SUITE}-updates main\n"
        f"deb {security_mirror} {DEBIAN_SUITE}-security main\n"
    )
    apt = [_tool("chroot"), str(rootfs), "apt-get", "-o", "Acquire::Retries=1"]
    apt += ["-o", "Acquire::http::Timeout=30", "-o", "Acquire::Languages=none"]
    log(f"applying Debian updates in the rootfs ({DEBIAN_SUITE}-updates, {DEBIAN_SUITE}-security)")
    try:
        run_logged([*apt, "--error-on=any", "update"], log, env=_CHROOT_ENV)
    except BaseImageBuildError as e:
        log(f"warning: Debian updates not applied to the rootfs, apt-get update failed: {e}")
    else:
        run_logged([*apt, "-y", "upgrade"], log, env=_CHROOT_ENV)
    run_logged([*apt, "clean"], log, env=_CHROOT_ENV)
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/debconf/*-old", "var/lib/dpkg/*-old"):
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    for name in ("etc/resolv.conf", "etc/hostname"):  # the host's copies; Docker provides both at run time
        path = rootfs / name
        if path.is_file() and not path.is_symlink():
            path.write_text("")


def _slim(rootfs: Path) -> None:
    """Drop docs, man pages and translations like debian:*-slim, now and from later dpkg installs."""
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker-slim").write_text(
        "".join(f"path-exclude {pattern}\n" for pattern in SLIM_EXCLUDES)
        + "".join(f"path-include {pattern}\n" for pattern in SLIM_INCLUDES)
    )
    for pattern in SLIM_EXCLUDES:
        for top in rootfs.glob(pattern.lstrip("/")):
            tree = [top] if top.is_symlink() or not top.is_dir() else [*top.rglob("*"), top]
            for path in sorted(tree, key=lambda p: len(p.parts), reverse=True):
                if any(fnmatch(f"/{path.relative_to(rootfs)}", keep) for keep in SLIM_INCLUDES):
                    continue
                if path.is_symlink() or not path.is_dir():
                    path.unlink()
                elif not any(path.iterdir()):
                    path.rmdir()


def import_rootfs(client: docker.DockerClient, workdir: Path, mirror: str, security_mirror: str, log: LogSink) -> str:
    """Build a bookworm rootfs under `workdir` and import it into the engine as ROOTFS_TAG; return its id."""
    rootfs, tarball = workdir / "rootfs", workdir / "rootfs.tar"
    _make_rootfs(rootfs, mirror, security_mirror, log)
    log(f"importing the rootfs as {ROOTFS_TAG}")
    run_logged([_tool("tar"), "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], log)
    remove_tree(rootfs, log)  # frees the disk before the engine stores its own copy
    repository, _, tag = ROOTFS_TAG.partition(":")
    # Given a path (not a file object), docker-py streams the file with no timeout.
    answer = client.api.import_image(
        src=str(tarball),
        repository=repository,
        tag=tag,
        changes=[f"ENV PATH={DEFAULT_PATH}", "ENV LANG=C.UTF-8", 'CMD ["bash"]'],
    )
    image_id = ROOTFS_TAG
    for line in answer.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        if message.get("error"):
            raise BaseImageBuildError(f"importing the rootfs failed: {message['error']}")
        if str(message.get("status", "")).startswith("sha256:"):
            image_id = message["status"].strip()
    tarball.unlink()
    return image_id  # the id, not the tag, so that a concurrent build re-tagging it cannot swap our base


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` (debootstrap mounts /proc and /sys in its target, and may leave them)."""
    if platform.system() != "Linux":
        return []
    prefix = str(root)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def remove_tree(root: Path, log: LogSink) -> None:
    """Remove our temp dir, first unmounting anything left mounted inside it (never rmtree through a mount)."""
    try:
        for point in sorted(_mounts_under(root), key=len, reverse=True):
            subprocess.run([_tool("umount"), "--lazy", point], check=False, capture_output=True)
        if leftover := _mounts_under(root):
            log(f"warning: not removing {root}: still mounted: {', '.join(leftover)}")
            return
    except OSError as e:
        log(f"warning: not removing {root}: cannot check its mounts: {e}")
        return
    shutil.rmtree(root, ignore_errors=True)
