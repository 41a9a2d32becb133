"""Webhooks: a finished job's JSON POSTed to its callback_url, signed, retried, never to a non-public address."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

from app.cli import cli
from app.config import parse_allow
from app.jobs.webhooks import DeliveryFailed, post
from app.services import EXTENSION
from tests.helpers import Api, wait_until
from tests.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(codes: list[int] | None = None, delay_s: float = 0.0) -> Receiver:
        made.append(Receiver(codes or [200], delay_s))
        return made[-1]

    yield make
    for r in made:
        r.close()


class Dripping:
    """A receiver on loopback that reads a request, sends `head`, then one byte of `drip` every 0.1 s, and hangs up."""

    def __init__(self, head: bytes, drip: bytes) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, args=(head, drip), daemon=True).start()

    def _serve(self, head: bytes, drip: bytes) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._drip, args=(conn, head, drip), daemon=True).start()

    @staticmethod
    def _drip(conn: socket.socket, head: bytes, drip: bytes) -> None:
        with conn:
            try:
                conn.recv(65536)  # the request, or a TLS ClientHello
                conn.sendall(head)
                for i in range(len(drip)):
                    time.sleep(0.1)
                    conn.sendall(drip[i : i + 1])
            except OSError:  # the sender hung up
                return

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def dripping() -> Iterator[Callable[[bytes, bytes], Dripping]]:
    made: list[Dripping] = []

    def make(head: bytes, drip: bytes) -> Dripping:
        made.append(Dripping(head, drip))
        return made[-1]

    yield make
    for d in made:
        d.close()


@pytest.fixture
def hook_api(make_app: Callable[..., Flask], base_image: str) -> Api:
    """The operator allows loopback (the receiver's) and retries quickly."""
    return Api(make_app(base_image=base_image, webhook_allow="127.0.0.1/32", webhook_backoff_s=0.1))


def status(api: Api, job_id: str) -> dict[str, Any]:
    body = api.get(f"/status/{job_id}").json
    assert isinstance(body, dict)
    return body


def test_a_finished_job_is_posted_signed_without_its_outputs(hook_api: Api, receiver) -> None:
    rec = receiver()
    job = hook_api.run_json("print('secret output')", callback_url=rec.url).json
    assert wait_until(lambda: status(hook_api, job["job_id"])["webhook"]["status"] == "delivered", timeout=10)
    assert status(hook_api, job["job_id"])["webhook"] == {"status": "delivered", "attempts": 1, "last_error": None}
    (path, headers, body) = rec.requests[0]
    assert path == "/hook?ci=1"
    sent = json.loads(body)
    assert (sent["job_id"], sent["status"], sent["exit_code"]) == (job["job_id"], "succeeded", 0)
    assert "stdout" not in sent and "secret output" not in body.decode()
    assert sent["links"] == {"status": f"/status/{job['job_id']}", "output": f"/status/{job['job_id']}/output"}
    secret = hook_api.app.extensions[EXTENSION].store.webhook_secret(hook_api.name)
    timestamp = headers["X-Runner-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Runner-Signature"] == f"sha256={expected}"


def test_failed_deliveries_are_retried_then_given_up_visibly(hook_api: Api, receiver) -> None:
    flaky = receiver([500, 503, 200])
    job = hook_api.run_json("print(1)", callback_url=flaky.url).json
    assert wait_until(lambda: status(hook_api, job["job_id"])["webhook"]["status"] == "delivered", timeout=15)
    assert status(hook_api, job["job_id"])["webhook"]["attempts"] == 3

    down = receiver([500])
    job = hook_api.run_json("print(1)", callback_url=down.url).json
    assert wait_until(lambda: status(hook_api, job["job_id"])["webhook"]["status"] == "failed", timeout=30)
    assert status(hook_api, job["job_id"])["webhook"] == {"status": "failed", "attempts": 6, "last_error": "HTTP 500"}
    assert len(down.requests) == 6


def test_redirects_are_not_followed(hook_api: Api, receiver) -> None:
    rec = receiver([302])
    job = hook_api.run_json("print(1)", callback_url=rec.url).json
    assert wait_until(lambda: status(hook_api, job["job_id"])["webhook"]["status"] == "failed", timeout=30)
    assert "redirects are not followed" in status(hook_api, job["job_id"])["webhook"]["last_error"]
    assert all(path == "/hook?ci=1" for path, _, _ in rec.requests)


def test_a_slow_receiver_blocks_neither_the_job_nor_the_api(hook_api: Api, receiver) -> None:
    slow = receiver([200], delay_s=4)
    started = time.monotonic()
    job = hook_api.run_json("print(1)", callback_url=slow.url).json
    assert job["status"] == "succeeded"
    assert time.monotonic() - started < 3
    assert hook_api.get("/jobs").status_code == 200
    assert wait_until(lambda: status(hook_api, job["job_id"])["webhook"]["status"] == "delivered", timeout=15)


@pytest.mark.parametrize(
    ("scheme", "head", "drip"),
    [
        ("http", b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"y" * 50),  # the status line and headers
        ("http", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"a" * 50),  # the body
        ("https", b"\x16\x03\x03\x40\x00", b"\0" * 50),  # the TLS handshake: a 16 KiB record, a byte at a time
    ],
    ids=["headers", "body", "tls-handshake"],
)
def test_a_receiver_dripping_its_answer_is_cut_at_the_attempt_time_limit(
    dripping: Callable[[bytes, bytes], Dripping], scheme: str, head: bytes, drip: bytes
) -> None:
    rec = dripping(head, drip)
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match=r"^the receiver took longer than 0\.5 s$"):
        post(f"{scheme}://127.0.0.1:{rec.port}/hook", b"{}", "s", parse_allow("127.0.0.1/32"), timeout_s=0.5)
    assert time.monotonic() - started < 1.5  # each read is within the limit; the attempt is not


def test_an_attempt_cut_at_its_time_limit_is_retried_then_given_up_visibly(
    make_app: Callable[..., Flask], base_image: str, dripping: Callable[[bytes, bytes], Dripping]
) -> None:
    api = Api(make_app(base_image=base_image, webhook_allow="127.0.0.1/32", webhook_backoff_s=0.05,
                       webhook_timeout_s=0.3))  # fmt: skip
    rec = dripping(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"y" * 50)
    job = api.run_json("print(1)", callback_url=f"http://127.0.0.1:{rec.port}/hook").json
    assert wait_until(lambda: status(api, job["job_id"])["webhook"]["status"] == "failed", timeout=15)
    last = {"status": "failed", "attempts": 6, "last_error": "the receiver took longer than 0.3 s"}
    assert status(api, job["job_id"])["webhook"] == last


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "https://user:pw@example.com/hook",
        "ftp://example.com/hook",
        "not a url",
    ],
)
def test_non_public_literal_addresses_and_odd_urls_are_refused_at_once(api: Api, url: str) -> None:
    r = api.run_json("print(1)", callback_url=url)
    assert r.status_code == 400, r.json
    assert "callback_url" in r.json["error"]["message"]
    assert api.app.extensions[EXTENSION].store.count_jobs(api.name) == 0


def test_a_name_resolving_to_loopback_is_refused_at_delivery(
    make_app: Callable[..., Flask], base_image: str, receiver
) -> None:
    api = Api(make_app(base_image=base_image, webhook_backoff_s=0.05))  # loopback not allowed
    rec = receiver()
    job = api.run_json("print(1)", callback_url=f"http://localhost:{rec.port}/hook").json
    assert wait_until(lambda: status(api, job["job_id"])["webhook"]["status"] == "failed", timeout=20)
    assert "not a public address" in status(api, job["job_id"])["webhook"]["last_error"]
    assert rec.requests == []


def test_the_webhook_secret_is_made_on_first_use_and_rotated(make_app: Callable[..., Flask], monkeypatch) -> None:
    app = make_app()
    Api(app, "hooked")
    monkeypatch.setenv("RUNNER_DATA_DIR", str(app.extensions[EXTENSION].settings.data_dir))
    runner = CliRunner()
    first = runner.invoke(cli, ["clients", "webhook-secret", "hooked"])
    assert first.exit_code == 0, first.output
    secret = first.output.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    assert runner.invoke(cli, ["clients", "webhook-secret", "hooked"]).output.strip().splitlines()[-1] == secret
    rotated = runner.invoke(cli, ["clients", "webhook-secret", "hooked", "--rotate"]).output.strip().splitlines()[-1]
    assert rotated != secret and rotated.startswith("whsec_")
    assert runner.invoke(cli, ["clients", "webhook-secret", "nobody"]).exit_code != 0


def test_deliveries_pending_at_a_stop_are_resumed_at_the_next_start(hook_api: Api, receiver) -> None:
    from app.models import Job, Limits, Status, WebhookState

    rec = receiver()
    svc = hook_api.app.extensions[EXTENSION]
    job_id = "7e5a3ed1c0ffee0123456789"  # an id as the service makes them (JOB_ID)
    job = Job(job_id, hook_api.name, Status.SUCCEEDED, Limits(30, 256, 1.0), "main.py", created_at=time.time(),
              finished_at=time.time(), worker=svc.settings.instance, callback_url=rec.url,
              webhook=WebhookState("pending", 2, "HTTP 500"))  # fmt: skip
    svc.store.save_job(job)
    assert svc.resume_webhooks() == 1
    assert wait_until(lambda: status(hook_api, job_id)["webhook"]["status"] == "delivered", timeout=10)
    assert status(hook_api, job_id)["webhook"]["attempts"] == 3
