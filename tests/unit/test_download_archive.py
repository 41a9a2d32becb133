"""Only regular wheel files come out of a download: anything else stops the build. No Docker needed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from app.errors import BuildFailed
from app.images.downloads import download_environment, pip_download_command, wheel_members

WHEEL = "greetpkg-1.0-py3-none-any.whl"


def archive(path: Path, *members: tuple[str, bytes | None, bytes]) -> Path:
    """A tar with (name, symlink target or None, data) members under wheels/."""
    with tarfile.open(path, "w") as tar:
        tar.addfile(_dir("wheels"))
        for name, link, data in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_regular_wheels_are_accepted(tmp_path: Path) -> None:
    path = archive(tmp_path / "a.tar", (f"wheels/{WHEEL}", None, b"zip"))
    assert [m.name for m, _ in wheel_members(path)] == [f"wheels/{WHEEL}"]


@pytest.mark.parametrize(
    "member",
    [
        (f"wheels/{WHEEL}", b"/etc/passwd", b""),  # a symlink named like a wheel
        ("wheels/evil-1.0.tar.gz", None, b"sdist"),  # not a wheel
        ("wheels/setup.py", None, b"print(1)"),
        (f"wheels/sub/{WHEEL}", None, b"zip"),  # nested
        (f"../{WHEEL}", None, b"zip"),  # outside the folder
        ("wheels/not-a-wheel.whl", None, b"zip"),  # no valid wheel name
    ],
)
def test_anything_but_a_regular_wheel_stops_the_build(tmp_path: Path, member: tuple[str, bytes | None, bytes]) -> None:
    path = archive(tmp_path / "a.tar", (f"wheels/{WHEEL}", None, b"zip"), member)
    with pytest.raises(BuildFailed, match="something other than wheels"):
        list(wheel_members(path))


PAX_SPARSE = {"GNU.sparse.size": str(10**12), "GNU.sparse.map": "0,3", "GNU.sparse.name": f"wheels/{WHEEL}"}


@pytest.mark.parametrize(
    ("kind", "pax"),
    [(tarfile.GNUTYPE_SPARSE, None), (tarfile.REGTYPE, PAX_SPARSE), (tarfile.CONTTYPE, None)],
    ids=["sparse", "pax-sparse", "contiguous"],
)
def test_a_wheel_that_is_no_plain_file_stops_the_build(tmp_path: Path, kind: bytes, pax: dict[str, str] | None) -> None:
    """tarfile counts these as regular files; a sparse one expands to whatever size its header declares."""
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(f"wheels/{WHEEL}")
        info.type, info.size = kind, 3
        info.pax_headers = pax or {}
        tar.addfile(info, io.BytesIO(b"zip"))
    with pytest.raises(BuildFailed, match="something other than wheels"):
        list(wheel_members(path))


def test_requirements_go_to_pip_after_the_end_of_options() -> None:
    cmd = pip_download_command(["greetpkg==1.0"], ["manylinux_2_36_x86_64"])
    assert cmd[:5] == ["python", "-I", "-m", "pip", "download"]
    assert cmd[-2:] == ["--", "greetpkg==1.0"]
    assert "--only-binary=:all:" in cmd


def test_only_index_settings_reach_the_download_container() -> None:
    host = {
        "PIP_INDEX_URL": "http://127.0.0.1:1/simple",
        "PIP_CERT": "/etc/ssl/certs/ca.pem",
        "PIP_FIND_LINKS": "/opt/wheels",
        "PIP_CONFIG_FILE": "/root/pip.conf",
        "RUNNER_SECRET": "x",
        "PATH": "/usr/bin",
    }
    env, cert = download_environment(host)
    assert env["PIP_INDEX_URL"] == host["PIP_INDEX_URL"]
    assert cert == "/etc/ssl/certs/ca.pem" and env["PIP_CERT"] != cert  # mounted read-only at its own path
    assert not {"PIP_FIND_LINKS", "PIP_CONFIG_FILE", "RUNNER_SECRET", "PATH"} & set(env)
