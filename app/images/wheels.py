"""Downloading wheels on the host for an image build: binary only, so no package code runs here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import docker

from app.images.process import run_streaming
from app.models import LogSink

PYTHON_VERSION = "3.11"  # the Python of the base image (both build paths)
GLIBC_MINOR = 36  # bookworm's glibc 2.36, the oldest of both bases: any manylinux_2_{<=36} wheel runs
_ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x"}
_HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
_FAILED_REQUIREMENT = re.compile(r"(?:satisfies the requirement|matching distribution found for) (\S+)")


class WheelDownloadFailed(Exception):
    """pip could not download the wheels; `requirement` names the one it gave up on, if it said."""

    def __init__(self, message: str, requirement: str | None, tail: list[str]) -> None:
        super().__init__(message)
        self.requirement = requirement
        self.tail = tail


def wheel_platforms(client: docker.DockerClient) -> list[str]:
    """Pip --platform tags of every manylinux wheel that runs on the engine's architecture and glibc 2.36."""
    goarch = client.version().get("Arch", "")
    arch = _ARCHES.get(goarch)
    if arch is None:
        raise WheelDownloadFailed(f"unsupported Docker engine architecture {goarch!r}", None, [])
    # pip expands neither manylinux_2_X to older X nor to legacy aliases: list them all.
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 4, -1)]
    return tags + [f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1")]


def pip_environment() -> dict[str, str]:
    """Pip's own settings (PIP_INDEX_URL, PIP_CERT, ...) and little else: no service secrets."""
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in _HOST_ENV}


def pip_download_options(dest: str, platforms: Iterable[str]) -> list[str]:
    """`pip download` options: binary wheels only, for the base image's CPython, into `dest`."""
    return [
        "--disable-pip-version-check", "--progress-bar=off", "--no-input",
        "--dest", dest,
        "--only-binary=:all:",
        "--python-version", PYTHON_VERSION,
        "--implementation", "cp",
        "--abi", f"cp{PYTHON_VERSION.replace('.', '')}",
        *(f"--platform={tag}" for tag in platforms),
    ]  # fmt: skip


def download_base_wheels(
    requirements: Path, dest: Path, platforms: Iterable[str], log: LogSink, timeout_s: float = 600
) -> None:
    """Download the wheels of the base image's own requirements file (never a client's) into `dest`.

    pip runs on the host with only its PIP_* settings, isolated (-I), in an empty private working directory.
    Clients' requirements are downloaded in a container instead (downloads.py).

    :raises WheelDownloadFailed: pip failed or took longer than `timeout_s`.
    """
    cmd = [sys.executable, "-I", "-m", "pip", "download", *pip_download_options(str(dest), platforms)]
    cmd += ["-r", str(requirements.resolve())]
    cwd = Path(tempfile.mkdtemp(prefix="datapane-pip-"))
    try:
        code, tail = run_streaming(cmd, log, env=pip_environment(), cwd=cwd, timeout_s=timeout_s)
    except OSError as e:
        raise WheelDownloadFailed(f"cannot run pip: {e}", None, []) from e
    except subprocess.TimeoutExpired as e:
        tail = str(e.output or "").splitlines()
        raise WheelDownloadFailed(f"pip download took longer than {timeout_s:g} s", None, tail) from e
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    if code:
        requirement = failed_requirement(tail)
        what = f"requirement {requirement!r}" if requirement else "the requirements"
        raise WheelDownloadFailed(f"pip could not download {what}", requirement, tail)


def failed_requirement(tail: list[str]) -> str | None:
    """The requirement pip said it could not find, from the last lines of its output."""
    found = _FAILED_REQUIREMENT.findall("\n".join(tail))
    return found[-1] if found else None
