"""Integration tests of the datapane-py-slim base image, against the real Docker engine."""

from __future__ import annotations

from pathlib import Path

import docker
import docker.errors

from app.images.base import BASE_LABEL, base_image_exists

REQUIREMENTS = Path(__file__).resolve().parents[2] / "dockerfiles" / "base" / "requirements.txt"


def run(client: docker.DockerClient, image: str, command: list[str]) -> str:
    """Run `command` in a throwaway, network-less container of `image`; return its output."""
    output = client.containers.run(image, command, remove=True, network_disabled=True)
    return output.decode().strip()


def test_base_image_exists_is_false_for_a_missing_image(docker_client: docker.DockerClient) -> None:
    assert not base_image_exists(docker_client, "datapane-no-such-image:nope")


def test_image_has_the_label(docker_client: docker.DockerClient, base_image: str) -> None:
    assert base_image_exists(docker_client, base_image)
    assert docker_client.images.get(base_image).labels[BASE_LABEL] == "1"


def test_packages_import_at_the_pinned_versions(docker_client: docker.DockerClient, base_image: str) -> None:
    pins = dict(
        line.split("==") for line in REQUIREMENTS.read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    script = (
        "import flask, marshmallow, zipp, docker\n"
        "from importlib.metadata import version\n"
        f"for name in {sorted(pins)!r}: print(name, version(name))\n"
    )
    output = run(docker_client, base_image, ["python", "-c", script])
    assert dict(line.split() for line in output.splitlines()) == pins


def test_runs_as_the_python_user(docker_client: docker.DockerClient, base_image: str) -> None:
    output = run(docker_client, base_image, ["sh", "-c", 'id -u; id -un; id -g; pwd; echo "$HOME"'])
    assert output.splitlines() == ["1000", "python", "1000", "/home/python", "/home/python"]


def test_python_is_the_venv(docker_client: docker.DockerClient, base_image: str) -> None:
    script = "import sys; print(sys.prefix, sys.version_info[:2] == (3, 11))"
    for python in ("python", "python3"):
        assert run(docker_client, base_image, [python, "-c", script]) == "/opt/venv True"


def test_venv_is_not_writable_by_python(docker_client: docker.DockerClient, base_image: str) -> None:
    script = (
        "import os, sys, sysconfig\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "assert site.startswith('/opt/venv/'), site\n"
        "for path in ('/opt/venv', '/opt/venv/bin', site, os.path.join(site, 'flask')):\n"
        "    try:\n"
        "        open(os.path.join(path, 'intruder'), 'w')\n"
        "    except PermissionError:\n"
        "        continue\n"
        "    sys.exit(f'{path} is writable')\n"
        "print('ok', os.stat('/opt/venv').st_uid)\n"
    )
    assert run(docker_client, base_image, ["python", "-c", script]) == "ok 0"
