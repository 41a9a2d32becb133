"""Settings come from the environment in one place: typed, defaulted, overridable, documented: no Docker needed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.config import Settings
from app.services import cluster_of


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 5000, Path("./data"))


def test_an_explicit_environment_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8080")
    assert Settings.from_env({}).port == 5000
    assert Settings.from_env().port == 8080  # without one, the process environment


def test_values_are_converted_to_the_settings_types() -> None:
    settings = Settings.from_env(
        {"PORT": "8080", "RUNNER_TIMEOUT_S": "12.5", "RUNNER_CPUS": "2", "RUNNER_DATA_DIR": "/srv/runner"}
    )
    assert settings.port == 8080 and type(settings.port) is int
    assert settings.timeout_s == 12.5
    assert settings.cpus == 2.0 and type(settings.cpus) is float
    assert settings.data_dir == Path("/srv/runner")
    assert settings.host == "127.0.0.1"


def test_an_empty_value_means_the_default() -> None:
    settings = Settings.from_env({"PORT": "", "RUNNER_DATA_DIR": "", "RUNNER_RUNTIME": ""})
    assert (settings.port, settings.data_dir, settings.runtime) == (5000, Path("./data"), "runc")


def test_keyword_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"PORT": "8080", "RUNNER_WORKERS": "3"}, port=9000)
    assert settings.port == 9000
    assert settings.workers == 3


@pytest.mark.parametrize(("env", "name"), [("RUNNER_WORKERS", "workers"), ("RUNNER_CPUS", "cpus")])
def test_a_bad_number_raises_a_value_error_naming_the_setting(env: str, name: str) -> None:
    with pytest.raises(ValueError, match=rf"setting {name}: cannot read 'two'"):
        Settings.from_env({env: "two"})


def test_every_setting_reads_back_its_own_default() -> None:
    env = {var: str(default) for var, default, _doc in Settings.documented()}
    assert Settings.from_env(env) == Settings()


def test_documented_lists_every_settings_env_var_exactly_once() -> None:
    documented = Settings.documented()
    names = [var for var, _default, _doc in documented]
    fields = dataclasses.fields(Settings)
    assert len(names) == len(set(names)) == len(fields)
    assert set(names) == {f.metadata["env"] for f in fields}
    assert all(doc.strip() for _var, _default, doc in documented)
    assert [default for _var, default, _doc in documented] == [f.default for f in fields]


def test_a_shared_queue_without_a_shared_store_is_refused() -> None:
    with pytest.raises(ValueError, match="RUNNER_DATABASE_URL"):
        Settings.from_env({"RUNNER_QUEUE_URL": "redis://localhost/0"})
    assert Settings.from_env({"RUNNER_QUEUE_URL": "redis://q/0", "RUNNER_DATABASE_URL": "postgresql://d/r"}).queue_url


def test_a_mistyped_webhook_network_stops_the_start() -> None:
    with pytest.raises(ValueError, match=r"RUNNER_WEBHOOK_ALLOW: 192\.168\.1\.5/0 has host bits set"):
        Settings.from_env({"RUNNER_WEBHOOK_ALLOW": "192.168.1.5/0"})
    assert Settings.from_env({"RUNNER_WEBHOOK_ALLOW": "10.0.0.0/8,fd00::/8"}).webhook_allow == "10.0.0.0/8,fd00::/8"


def test_a_deployments_container_label_survives_a_new_password_or_driver() -> None:
    """A worker restarted after a password rotation still finds (and removes) what its last life left."""
    before = cluster_of("postgresql+psycopg://runner:old@db:5432/jobs?sslmode=require")
    assert cluster_of("postgresql://runner:new@db:5432/jobs") == before
    assert cluster_of("postgresql+psycopg://runner:old@db2:5432/jobs") != before
    assert cluster_of("postgresql+psycopg://runner:old@db:5432/other") != before
