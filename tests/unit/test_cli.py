"""The operator's commands for clients: create prints a key that works, revoke stops it, rotate replaces it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from app import create_app
from app.cli import cli
from app.models import Job, Limits, Status
from app.services import EXTENSION
from tests.helpers import json_of


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


def test_rotate_issues_a_working_key_stops_the_old_one_and_keeps_history(runner: CliRunner, tmp_path: Path) -> None:
    old = runner.invoke(cli, ["clients", "create", "acme"]).stdout.strip().splitlines()[-1]
    app = create_app({"data_dir": tmp_path})
    app.extensions[EXTENSION].store.save_job(stored_job("kept-job", "acme"))
    result = runner.invoke(cli, ["clients", "rotate", "acme"])
    assert result.exit_code == 0, result.output
    new = result.stdout.strip().splitlines()[-1]
    assert new != old
    http = app.test_client()
    assert http.get("/jobs", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    jobs = json_of(http.get("/jobs", headers={"Authorization": f"Bearer {new}"}))["jobs"]
    assert [j["job_id"] for j in jobs] == ["kept-job"]
    assert runner.invoke(cli, ["clients", "list"]).stdout == "acme\tactive\n"


def test_rotating_an_unknown_or_revoked_client_is_refused(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["clients", "rotate", "nobody"]).exit_code != 0
    runner.invoke(cli, ["clients", "create", "acme"])
    runner.invoke(cli, ["clients", "revoke", "acme"])
    result = runner.invoke(cli, ["clients", "rotate", "acme"])
    assert result.exit_code != 0
    assert "No active client 'acme'" in result.output


def test_a_revoked_name_is_reused_only_when_asked_for(runner: CliRunner, tmp_path: Path) -> None:
    runner.invoke(cli, ["clients", "create", "acme"])
    old_secret = runner.invoke(cli, ["clients", "webhook-secret", "acme"]).stdout.strip()
    runner.invoke(cli, ["clients", "revoke", "acme"])
    refused = runner.invoke(cli, ["clients", "create", "acme"])
    assert refused.exit_code != 0
    assert "--reuse-revoked" in refused.output
    reused = runner.invoke(cli, ["clients", "create", "acme", "--reuse-revoked"])
    assert reused.exit_code == 0, reused.output
    key = reused.stdout.strip().splitlines()[-1]
    http = create_app({"data_dir": tmp_path}).test_client()
    assert http.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    new_secret = runner.invoke(cli, ["clients", "webhook-secret", "acme"]).stdout.strip()
    assert new_secret.startswith("whsec_") and new_secret != old_secret  # the old holder cannot sign for the new


def stored_job(job_id: str, client: str) -> Job:
    limits = Limits(timeout_s=1.0, memory_mb=64, cpus=1.0)
    return Job(job_id, client, Status.SUCCEEDED, limits, "main.py", created_at=time.time(), finished_at=time.time())
