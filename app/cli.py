"""Command line: serve, build the base image, manage clients."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable

import click

from app import clients as client_keys
from app.config import Settings
from app.errors import RunnerError
from app.images.base import BaseImageBuildError, base_image_exists, build_base_image
from app.logs import configure_logging
from app.sandbox.container import runtime_registered
from app.server import serve_forever, serve_worker
from app.services import Services
from app.store import Store
from app.submit import main as submit_main


@click.group(invoke_without_command=True)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Datapane script runner. With no command: serve."""
    try:
        log_format = Settings.from_env().log_format
    except ValueError:
        log_format = "text"  # the command itself reports the bad setting
    configure_logging(log_format)
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@cli.command()
def serve() -> None:
    """Build the base image if missing, remove leftovers of a previous run, and serve HTTP."""
    settings = _settings()
    if not settings.queue_url:  # an API node of the distributed mode runs nothing, so needs no engine
        _ensure_base(settings, mode=settings.base_build)
        _check_runtime(settings)
    serve_forever(settings)


@cli.command()
@click.option("--burst", is_flag=True, help="Run what is queued, then exit (for tests and batch jobs).")
def worker(burst: bool) -> None:
    """Run queued jobs on this host's Docker engine (needs RUNNER_QUEUE_URL and RUNNER_DATABASE_URL)."""
    settings = _settings()
    if not (settings.queue_url and settings.database_url):
        raise click.ClickException("a worker needs RUNNER_QUEUE_URL and RUNNER_DATABASE_URL (see the README)")
    _ensure_base(settings, mode=settings.base_build)
    _check_runtime(settings)
    try:
        serve_worker(settings, burst=burst)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.pass_context
def submit(ctx: click.Context) -> None:
    """Run files on a running service and exit as the script did (`submit --help` for the options)."""
    sys.exit(submit_main(ctx.args))


@cli.command("build-base")
@click.option("--offline", is_flag=True, help="Build from a debootstrap rootfs, without any container registry.")
@click.option("--if-missing", is_flag=True, help="Do nothing when the base image already exists.")
def build_base(offline: bool, if_missing: bool) -> None:
    """Build the base image (`FROM python:3.11-slim`, or offline with debootstrap)."""
    settings = _settings()
    _ensure_base(settings, mode="offline" if offline else "online", rebuild=not if_missing)


def _settings() -> Settings:
    """The settings, or a one-line error naming what is inconsistent."""
    try:
        return Settings.from_env()
    except ValueError as e:
        raise click.ClickException(str(e)) from e


def _ensure_base(settings: Settings, mode: str, rebuild: bool = False) -> None:
    svc = Services(settings)
    try:
        docker = svc.docker.client
        if not rebuild and base_image_exists(docker, settings.base_image):
            return
        offline = mode == "offline"
        click.echo(f"building base image {settings.base_image} ({'offline' if offline else 'online'})", err=True)
        try:
            build_base_image(docker, settings.base_image, offline=offline, log=lambda s: click.echo(s, err=True))
        except BaseImageBuildError as e:
            if mode != "auto" or not shutil.which("debootstrap"):
                raise
            click.echo(f"online build failed ({e}); building offline with debootstrap", err=True)
            build_base_image(docker, settings.base_image, offline=True, log=lambda s: click.echo(s, err=True))
    except RunnerError as e:
        raise click.ClickException(str(e)) from e
    finally:
        svc.close()


def _check_runtime(settings: Settings) -> None:
    """Refuse to serve with a runtime the engine does not know: every run would fail."""
    svc = Services(settings)
    try:
        if not runtime_registered(svc.docker.client, settings.runtime):
            raise click.ClickException(
                f"RUNNER_RUNTIME={settings.runtime} but the Docker engine has no such runtime; register it in "
                "/etc/docker/daemon.json (see the README's gVisor section) and reload dockerd."
            )
    except RunnerError as e:
        raise click.ClickException(str(e)) from e
    finally:
        svc.close()


@cli.group()
def clients() -> None:
    """Register clients and manage their API keys."""


@clients.command("create")
@click.argument("name")
@click.option("--reuse-revoked", is_flag=True, help="Give a revoked NAME a new key; it keeps its job history.")
def clients_create(name: str, reuse_revoked: bool) -> None:
    """Register NAME and print its new API key on the last line."""
    key = _issue_key(lambda store: client_keys.create_client(store, name, reuse_revoked=reuse_revoked))
    click.echo(f"client {name} created; its API key (shown once):", err=True)
    click.echo(key)


@clients.command("rotate")
@click.argument("name")
def clients_rotate(name: str) -> None:
    """Give NAME a new API key (printed on the last line); the old key stops working at once."""
    key = _issue_key(lambda store: client_keys.rotate_client(store, name))
    click.echo(f"client {name} has a new API key (shown once); the old one no longer works:", err=True)
    click.echo(key)


@clients.command("webhook-secret")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Replace the secret; webhooks signed with the old one stop verifying.")
def clients_webhook_secret(name: str, rotate: bool) -> None:
    """Print the secret NAME's webhooks are signed with (made on first use) on the last line."""
    secret = _issue_key(lambda store: client_keys.webhook_secret(store, name, rotate=rotate))
    click.echo(f"client {name}'s webhook secret{' (new)' if rotate else ''}:", err=True)
    click.echo(secret)


def _issue_key(issue: Callable[[Store], str]) -> str:
    svc = Services(_settings())
    try:
        return issue(svc.store)
    except RunnerError as e:
        raise click.ClickException(e.message) from e
    finally:
        svc.close()


@clients.command("list")
def clients_list() -> None:
    """List clients and whether their key is active."""
    svc = Services(_settings())
    try:
        for c in client_keys.list_clients(svc.store):
            click.echo(f"{c.name}\t{'revoked' if c.revoked_at else 'active'}")
    finally:
        svc.close()


@clients.command("revoke")
@click.argument("name")
def clients_revoke(name: str) -> None:
    """Revoke NAME's key at once."""
    svc = Services(_settings())
    try:
        if not client_keys.revoke_client(svc.store, name):
            raise click.ClickException(f"no active client {name!r}")
    finally:
        svc.close()
    click.echo(f"client {name} revoked")


def main() -> None:
    sys.exit(cli())
