"""Build the `datapane-py-slim` base image: FROM python:3.11-slim, or offline from a debootstrap rootfs."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import docker
import docker.errors

from .wheels import WheelDownloadFailed, download_wheels, wheel_platforms

BASE_LABEL = "io.datapane.runner.base"
DOCKERFILE_DIR = Path(__file__).resolve().parent.parent / "dockerfiles" / "base"
REGISTRY_BASE = "python:3.11-slim"
DEBIAN_SUITE = "bookworm"
ROOTFS_REPOSITORY = "datapane-rootfs"
ROOTFS_TAG = f"{ROOTFS_REPOSITORY}:{DEBIAN_SUITE}"
ROOTFS_PACKAGES = ("python3", "python3-venv", "ca-certificates")
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
_TAIL_LINES = 30
_CHROOT_ENV = {"PATH": DEFAULT_PATH, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}

Log = Callable[[str], None]


class BaseImageBuildError(Exception):
    """Building the base image failed; message says why (include the tail of the build log)."""


def base_image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Whether the engine has an image `tag` carrying the base-image label."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return BASE_LABEL in (image.labels or {})


def build_base_image(
    client: docker.DockerClient,
    tag: str,
    *,
    offline: bool,
    log: Log = print,
    debian_mirror: str | None = None,
) -> str:
    """Build the base image under `tag` and return its id.

    Offline: from a debootstrap rootfs, no registry needed; else FROM python:3.11-slim.
    """
    workdir = Path(tempfile.mkdtemp(prefix="datapane-base-"))
    try:
        context = workdir / "context"
        context.mkdir()
        for name in ("Dockerfile", "requirements.txt"):
            shutil.copy2(DOCKERFILE_DIR / name, context / name)
        _download_wheels(context, _platforms(client), log)
        if offline:
            mirror, security_mirror = _host_mirrors()
            base = _import_rootfs(client, workdir, debian_mirror or mirror, security_mirror, log)
            buildargs, network_mode, pull = {"BASE": base, "APT_UPGRADE": "0"}, "none", False
        else:
            # apt-get upgrade in the build needs the network; pip never does (--no-index).
            buildargs, network_mode, pull = {"BASE": REGISTRY_BASE, "APT_UPGRADE": "1"}, None, True
        return _docker_build(client, context, tag, buildargs, network_mode, pull, log)
    except (docker.errors.DockerException, OSError, subprocess.SubprocessError) as e:
        raise BaseImageBuildError(f"building {tag} failed: {e}") from e
    finally:
        _remove_tree(workdir, log)


def _run(cmd: list[str], log: Log, env: dict[str, str] | None = None) -> None:
    """Run `cmd`, streaming its output into `log`; raise BaseImageBuildError with the output's tail if it fails."""
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        with subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        ) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                tail.append(line)
                log(line)
    except OSError as e:
        raise BaseImageBuildError(f"cannot run {cmd[0]}: {e}") from e
    if proc.returncode:
        error = subprocess.CalledProcessError(proc.returncode, cmd)
        raise BaseImageBuildError(f"{error}\n" + "\n".join(tail)) from error


def _tool(name: str) -> str:
    """Path of a system tool, also looking in the sbin directories that non-login PATHs lack."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{DEFAULT_PATH}") or name


def _platforms(client: docker.DockerClient) -> list[str]:
    try:
        return wheel_platforms(client)
    except WheelDownloadFailed as e:
        raise BaseImageBuildError(str(e)) from e


def _download_wheels(context: Path, platforms: list[str], log: Log) -> None:
    """Download the wheels of requirements.txt (and their dependencies) for CPython 3.11 into context/wheels."""
    log("downloading wheels")
    try:
        download_wheels(context / "requirements.txt", context / "wheels", platforms, log)
    except WheelDownloadFailed as e:
        raise BaseImageBuildError(f"{e}\n" + "\n".join(e.tail)) from e


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


def _host_mirrors() -> tuple[str, str]:
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


def _make_rootfs(rootfs: Path, mirror: str, security_mirror: str, log: Log) -> None:
    """Debootstrap a minimal bookworm with Python into `rootfs`, apply Debian's updates and clean apt's caches."""
    if os.geteuid() != 0:
        raise BaseImageBuildError("the offline build runs debootstrap and chroot, which need root")
    log(f"debootstrap {DEBIAN_SUITE} from {mirror} into {rootfs} (takes a few minutes)")
    _run(
        [
            _tool("debootstrap"), "--variant=minbase", "--components=main",
            f"--include={','.join(ROOTFS_PACKAGES)}", DEBIAN_SUITE, str(rootfs), mirror,
        ],
        log,
    )  # fmt: skip
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
        _run([*apt, "--error-on=any", "update"], log, env=_CHROOT_ENV)
    except BaseImageBuildError as e:
        log(f"warning: Debian updates not applied to the rootfs, apt-get update failed: {e}")
    else:
        _run([*apt, "-y", "upgrade"], log, env=_CHROOT_ENV)
    _run([*apt, "clean"], log, env=_CHROOT_ENV)
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


def _import_rootfs(client: docker.DockerClient, workdir: Path, mirror: str, security_mirror: str, log: Log) -> str:
    """Build a bookworm rootfs under `workdir` and import it into the engine as ROOTFS_TAG; return its id."""
    rootfs, tarball = workdir / "rootfs", workdir / "rootfs.tar"
    _make_rootfs(rootfs, mirror, security_mirror, log)
    log(f"importing the rootfs as {ROOTFS_TAG}")
    _run([_tool("tar"), "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], log)
    _remove_tree(rootfs, log)  # frees the disk before the engine stores its own copy
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


def _docker_build(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    buildargs: dict[str, str],
    network_mode: str | None,
    pull: bool,
    log: Log,
) -> str:
    """Run the Docker build of `context` as `tag`, streaming its output into `log`; return the image id."""
    log(f"docker build {tag} (BASE={buildargs['BASE']})")
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    stream = client.api.build(
        path=str(context),
        tag=tag,
        buildargs=buildargs,
        network_mode=network_mode,
        pull=pull,
        rm=True,
        forcerm=True,
        decode=True,
    )
    for chunk in stream:
        if chunk.get("error"):
            tail.append(chunk["error"].strip())
            raise BaseImageBuildError(f"docker build of {tag} failed; the log ends:\n" + "\n".join(tail))
        if "stream" in chunk:
            text = chunk["stream"]
        elif "status" in chunk and not chunk.get("progressDetail"):
            text = " ".join(filter(None, (chunk.get("id"), chunk["status"])))
        else:
            continue
        for line in text.splitlines():
            if line.strip():
                tail.append(line)
                log(line)
    return client.images.get(tag).id


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


def _remove_tree(root: Path, log: Log) -> None:
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
