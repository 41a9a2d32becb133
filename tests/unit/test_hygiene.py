"""Files the service keeps, and the offline base build's trust in Debian's archive: no Docker needed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.errors import BaseImageBuildError
from app.images.rootfs import DEBIAN_KEYRING, debootstrap_command
from app.store import Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_is_private_and_the_database_file_is_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    store = Store(data / "runner.sqlite3")
    store.close()
    assert mode(data) == 0o700
    assert mode(data / "runner.sqlite3") == 0o600
    for sidecar in data.glob("runner.sqlite3-*"):
        assert mode(sidecar) & 0o077 == 0, sidecar


def test_debootstrap_checks_signatures_against_debians_keyring(tmp_path: Path) -> None:
    if not DEBIAN_KEYRING.is_file():
        pytest.skip("no Debian keyring on this machine")
    cmd = debootstrap_command(tmp_path / "rootfs", "http://mirror.invalid/debian")
    assert f"--keyring={DEBIAN_KEYRING}" in cmd
    assert "--force-check-gpg" in cmd
    assert "--no-check-gpg" not in cmd


def test_a_missing_keyring_fails_the_offline_build_clearly(tmp_path: Path) -> None:
    with pytest.raises(BaseImageBuildError, match=r"keyring .* is missing: apt-get install debian-archive-keyring"):
        debootstrap_command(tmp_path / "rootfs", "http://mirror.invalid/debian", keyring=tmp_path / "none.gpg")
