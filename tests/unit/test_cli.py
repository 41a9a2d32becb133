"""The operator's commands for clients: create prints a key that works, revoke stops it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from app import create_app
from app.cli import cli


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("RUNNER_DATA_DIR", str(tmp_path))
    return CliRunner()


def test_create_prints_a_working_key_on_the_last_line(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["clients", "create", "acme"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    http = create_app({"data_dir": tmp_path}).test_client()
    assert http.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_list_shows_state_and_revoke_stops_the_key(runner: CliRunner, tmp_path: Path) -> None:
    key = runner.invoke(cli, ["clients", "create", "acme"]).stdout.strip().splitlines()[-1]
    assert runner.invoke(cli, ["clients", "list"]).stdout == "acme\tactive\n"
    assert runner.invoke(cli, ["clients", "revoke", "acme"]).exit_code == 0
    assert runner.invoke(cli, ["clients", "list"]).stdout == "acme\trevoked\n"
    http = create_app({"data_dir": tmp_path}).test_client()
    assert http.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_bad_names_and_duplicates_are_refused(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["clients", "create", "Bad Name"]).exit_code != 0
    assert runner.invoke(cli, ["clients", "create", "acme"]).exit_code == 0
    assert runner.invoke(cli, ["clients", "create", "acme"]).exit_code != 0
    assert runner.invoke(cli, ["clients", "revoke", "nobody"]).exit_code != 0
