"""/metrics: Prometheus text whose values move as runs, pool takes, removals and requests happen; no client labels."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import docker
import pytest
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import SCRAPERS, Metrics, serve_metrics
from app.sandbox.container import Run
from app.sandbox.janitor import GRACE_S
from app.sandbox.limits import resolve_limits
from app.services import EXTENSION, Services
from tests.helpers import Api, json_of, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api: Api, headers: dict[str, str] | None = None) -> Samples:
    r = api.http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.content_type.startswith("text/plain; version=")
    return parse(r.get_data(as_text=True))


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def pooled_api(make_app: Callable[..., Flask], base_image: str, docker_client: docker.DockerClient) -> Api:
    return Api(make_app(base_image=base_image, pool_size=1))


def test_a_run_moves_the_run_container_pool_and_http_metrics(pooled_api: Api) -> None:
    before = scrape(pooled_api)
    for _ in range(2):  # the first misses the cold pool and fills it; the second takes the filled one
        r = pooled_api.run_json("print('hi')")
        assert r.status_code == 200, r.json
        time.sleep(1.5)  # the refill
    after = scrape(pooled_api)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("runner_runs_total", status="succeeded") == 2
    assert moved("runner_run_duration_seconds_count") == 2
    assert moved("runner_queue_wait_seconds_count") == 2
    assert moved("runner_pool_takes_total", result="miss") == 1
    assert moved("runner_pool_takes_total", result="hit") == 1
    assert moved("runner_containers_created_total") >= 3  # two runs' containers and the pool's refills
    assert moved("runner_containers_removed_total") == 2  # the two that ran; the refilled one waits
    assert value(after, "runner_pool_containers") == 1
    assert moved("runner_http_requests_total", route="/run-json", method="POST", code="200") == 2
    assert moved("runner_http_request_duration_seconds_count", route="/run-json") == 2
    assert value(after, "runner_jobs", status="running") == 0


def test_labels_are_bounded_sets_never_clients_or_ids(pooled_api: Api) -> None:
    job = pooled_api.run_json("print(1)").json["job_id"]
    assert pooled_api.get(f"/status/{job}").status_code == 200
    pooled_api.http.get("/no-such-route/" + "x" * 40)
    pooled_api.http.open("/metrics", method="BREW")
    text = pooled_api.http.get("/metrics").get_data(as_text=True)
    assert pooled_api.name not in text and job not in text and "x" * 40 not in text
    samples = parse(text)
    assert value(samples, "runner_http_requests_total", route="/status/<job_id>", method="GET", code="200") == 1
    assert value(samples, "runner_http_requests_total", route="unmatched", method="GET", code="404") == 1
    assert value(samples, "runner_http_requests_total", route="unmatched", method="other", code="405") == 1


def test_a_leaked_container_reaped_by_the_janitor_is_counted(pooled_api: Api, docker_client) -> None:
    svc: Services = pooled_api.app.extensions[EXTENSION]
    job = pooled_api.run_json("print(1)").json
    leaked = Run(
        docker_client, svc.client_images.base_id(docker_client), resolve_limits({}, svc.settings), svc.policy, {}
    )
    try:
        docker_client.api.start(leaked.container_id)
        docker_client.api.kill(leaked.container_id)
        docker_client.api.wait(leaked.container_id, timeout=30)  # exited, never removed: a leak
        before = scrape(pooled_api)
        assert svc.janitor.sweep(now=time.time() + GRACE_S + 1).total >= 1
        after = scrape(pooled_api)
    finally:
        leaked.remove()
    reaped = ("runner_containers_reaped_total", (("reason", "exited"),))
    assert after[reaped] - before.get(reaped, 0) >= 1
    assert job["status"] == "succeeded"


def test_a_metrics_token_is_required_when_set(make_app: Callable[..., Flask]) -> None:
    api = Api(make_app(metrics_token="s3cret-token"))
    r = json_of(api.http.get("/metrics"))
    assert r["error"]["code"] == "unauthorized"
    assert api.http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.http.get("/metrics", headers=api.headers()).status_code == 401  # a client's key is not the token
    scrape(api, {"Authorization": "Bearer s3cret-token"})


def test_a_worker_serves_its_own_metrics_behind_the_token() -> None:
    metrics = Metrics()
    metrics.runs.labels("succeeded").inc(3)
    server = serve_metrics(metrics, "127.0.0.1", 0, "tok")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        denied = requests.get(url, timeout=5)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        r = requests.get(url, headers={"Authorization": "Bearer tok"}, timeout=5)
        assert r.status_code == 200
        assert value(parse(r.text), "runner_runs_total", status="succeeded") == 3
    finally:
        server.shutdown()
        server.server_close()


def test_half_sent_scrapes_cannot_pile_up_threads_in_a_worker() -> None:
    server = serve_metrics(Metrics(), "127.0.0.1", 0, "tok")
    before = threading.active_count()
    stalled = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", server.server_port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")  # headers never end
            stalled.append(s)
        time.sleep(0.5)
        assert threading.active_count() - before <= SCRAPERS
        for s in stalled:
            s.close()
        url = f"http://127.0.0.1:{server.server_port}/metrics"  # the slots are back once those connections end
        assert wait_until(lambda: threading.active_count() - before <= 1, timeout=10)
        assert requests.get(url, headers={"Authorization": "Bearer tok"}, timeout=5).ok
    finally:
        for s in stalled:
            s.close()
        server.shutdown()
        server.server_close()
