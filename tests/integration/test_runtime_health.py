"""The configured OCI runtime: named by the health answer, and a runtime Docker lacks is said clearly."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from app.cli import cli
from tests.helpers import registered_runtime


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_readyz_names_the_runtime(make_app, base_image: str, docker_client: docker.DockerClient, runtime: str) -> None:
    registered_runtime(docker_client, runtime)
    r = make_app(base_image=base_image, runtime=runtime).test_client().get("/readyz")
    assert r.status_code == 200, r.json
    assert (r.json["status"], r.json["runtime"], r.json["runtime_available"]) == ("ok", runtime, True)


def test_a_runtime_docker_lacks_makes_the_service_unready(make_app, base_image: str, docker_client) -> None:
    r = make_app(base_image=base_image, runtime="no-such-runtime").test_client().get("/readyz")
    assert r.status_code == 503
    assert r.json["runtime_available"] is False
    assert "no runtime 'no-such-runtime' (RUNNER_RUNTIME)" in r.json["message"]


def test_the_service_refuses_to_start_with_a_runtime_docker_lacks(
    base_image: str, docker_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RUNNER_BASE_IMAGE", base_image)
    monkeypatch.setenv("RUNNER_RUNTIME", "no-such-runtime")
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code != 0
    assert "RUNNER_RUNTIME=no-such-runtime but the Docker engine has no such runtime" in result.output
