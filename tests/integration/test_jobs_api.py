"""Jobs as their owner sees them, and as nobody else can: async runs, status, output, list, cancel."""

from __future__ import annotations

import io
import json
import time

import docker
import pytest

from app.images.client_images import BuildHooks, client_image_tag
from app.models import Job, Limits, Status
from app.sandbox.container import LABEL, Run
from app.services import EXTENSION
from app.store import Store
from tests.helpers import Api, chunks_of, containers_gone, read_line, wait_until


def wait_done(api: Api, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/status/{job_id}").json
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_async_run_answers_202_and_status_reaches_succeeded(api: Api) -> None:
    r = api.run_json(['print("hello world")'], query="?async=1")
    assert r.status_code == 202
    job_id = r.json["job_id"]
    assert r.headers["Location"] == r.json["status_url"]
    assert r.json["status_url"].endswith(f"/status/{job_id}")
    body = wait_done(api, job_id)
    assert body["status"] == "succeeded"
    assert body["stdout"] == "hello world\n"
    assert api.get(f"/status/{job_id}/output").data == b"hello world\n"


def test_output_of_a_running_job_streams_live(api: Api) -> None:
    r = api.run_json(["import time", "print('first')", "time.sleep(3)", "print('second')"], query="?async=1")
    job_id = r.json["job_id"]
    stream = api.http.get(f"/status/{job_id}/output", headers=api.headers(), buffered=False)
    chunks = chunks_of(stream)
    assert read_line(chunks) == b"first\n"
    assert api.app.extensions[EXTENSION].store.get_job(job_id).status is Status.RUNNING
    assert b"".join(chunks) == b"second\n"
    stream.close()


def test_a_job_ended_elsewhere_while_it_ran_ends_its_stream_with_the_stores_record(api: Api) -> None:
    r = api.run_json(["import time", "print('first')", "time.sleep(2)"], query="?async=1")
    job_id = r.json["job_id"]
    headers = api.headers({"Accept": "application/x-ndjson"})
    stream = api.http.get(f"/status/{job_id}/output", headers=headers, buffered=False)
    chunks = chunks_of(stream)
    assert b'"first' in read_line(chunks)  # followed live
    store = api.app.extensions[EXTENSION].store
    assert store.end_unfinished(job_id, Status.INTERNAL_ERROR, "Ended by a watchdog meanwhile.")
    result = json.loads(b"".join(chunks).splitlines()[-1])
    assert (result["type"], result["status"], result["message"]) == (
        "result", "internal_error", "Ended by a watchdog meanwhile."
    )  # fmt: skip  # the runner's own end was not saved, so it is not what the stream's end carries
    stream.close()


def test_other_clients_job_is_404_on_every_endpoint(api: Api) -> None:
    job_id = api.run_json(['print("secret")']).json["job_id"]
    other = Api(api.app, "other-client")
    for path in (f"/status/{job_id}", f"/status/{job_id}/output"):
        r = other.get(path)
        assert r.status_code == 404
        assert r.json["error"]["code"] == "not_found"
    assert other.delete(f"/jobs/{job_id}").status_code == 404
    assert other.get("/jobs").json["jobs"] == []
    assert api.get(f"/status/{job_id}").json["stdout"] == "secret\n"


def test_jobs_lists_summaries_newest_first_by_cursor_without_skips_or_repeats(api: Api) -> None:
    ids = [api.run_json(f"print({i})" if i != 1 else "import sys; sys.exit(3)").json["job_id"] for i in range(3)]
    page = api.get("/jobs?limit=2").json
    assert [j["job_id"] for j in page["jobs"]] == ids[::-1][:2]
    summary = page["jobs"][1]
    assert "stdout" not in summary and "stderr" not in summary and "build_log" not in summary
    assert (summary["status"], summary["exit_code"], summary["stdout_bytes"]) == ("failed", 3, 0)
    assert page["jobs"][0]["stdout_bytes"] == len("2\n") and page["jobs"][0]["artifact_count"] == 0
    assert page["jobs"][0]["created_at"].endswith("Z") and page["jobs"][0]["status_url"] == f"/status/{ids[2]}"
    newer = api.run_json("print('new')").json["job_id"]  # arrives between two pages: neither skips nor repeats
    rest = api.get(page["next"]).json
    assert [j["job_id"] for j in rest["jobs"]] == ids[:1] and rest["next"] is None
    assert api.get("/jobs?limit=1").json["jobs"][0]["job_id"] == newer
    failed = api.get("/jobs?status=failed,timed_out").json["jobs"]
    assert [j["job_id"] for j in failed] == [ids[1]]
    since = api.get(f"/status/{ids[2]}").json["created_at"]
    assert [j["job_id"] for j in api.get(f"/jobs?since={since}").json["jobs"]] == [newer, ids[2]]
    bad_queries = ("limit=1000", "limit=0", "status=exploded", "status=", "since=yesterday", "cursor=bm9wZQ")
    for bad in (*bad_queries, "cursor=%00"):
        r = api.get(f"/jobs?{bad}")
        assert r.status_code == 400 and r.json["error"]["code"] == "validation_failed", bad


def test_delete_cancels_a_running_job_and_kills_its_container(api: Api, docker_client: docker.DockerClient) -> None:
    job_id = api.run_json(["import time", "print('started', flush=True)", "time.sleep(60)"], query="?async=1").json[
        "job_id"
    ]
    stream = api.http.get(f"/status/{job_id}/output", headers=api.headers(), buffered=False)
    assert read_line(chunks_of(stream)) == b"started\n"
    stream.close()
    label = f"{LABEL}.job={job_id}"
    assert len(docker_client.api.containers(filters={"label": [label]})) == 1
    r = api.delete(f"/jobs/{job_id}")
    assert r.json == {"job_id": job_id, "result": "cancelled"}
    body = wait_done(api, job_id, timeout=20)
    assert body["status"] == "cancelled"
    assert containers_gone(docker_client, label)


def test_delete_removes_a_finished_job(api: Api) -> None:
    job_id = api.run_json("print(1)").json["job_id"]
    assert api.delete(f"/jobs/{job_id}").json["result"] == "deleted"
    assert api.get(f"/status/{job_id}").status_code == 404


def test_queue_full_answers_429_with_retry_after(make_app, base_image: str) -> None:
    app = make_app(base_image=base_image, workers=1, queue_size=2, client_queue_limit=5)
    first, second = Api(app, "first"), Api(app, "second")
    sleeper = ["import time", "time.sleep(30)"]
    ids = [
        first.run_json(sleeper, query="?async=1").json["job_id"],
        second.run_json(sleeper, query="?async=1").json["job_id"],
    ]
    r = Api(app, "third").run_json(sleeper, query="?async=1")
    assert r.status_code == 429
    assert r.headers["Retry-After"]
    assert r.json["error"]["code"] == "queue_full"
    assert "maximum of 2 jobs" in r.json["error"]["message"]
    first.delete(f"/jobs/{ids[0]}")
    second.delete(f"/jobs/{ids[1]}")


def test_cancelled_queued_job_never_runs(make_app, base_image: str) -> None:
    api = Api(make_app(base_image=base_image, workers=1))
    blocker = api.run_json(["import time", "time.sleep(30)"], query="?async=1").json["job_id"]
    queued = api.run_json("print('should not run')", query="?async=1").json["job_id"]
    assert api.get(f"/status/{queued}").json["status"] == "queued"
    assert api.delete(f"/jobs/{queued}").json["result"] == "cancelled"
    api.delete(f"/jobs/{blocker}")
    body = wait_done(api, queued)
    assert (body["status"], body["stdout"], body["duration_ms"]) == ("cancelled", "", None)


def test_shutdown_cancels_queued_jobs_instead_of_running_them(make_app, base_image: str) -> None:
    app = make_app(base_image=base_image, workers=1)
    api = Api(app)
    running = api.run_json(["import time", "time.sleep(1)", "print('done')"], query="?async=1").json["job_id"]
    queued = [api.run_json("print('never')", query="?async=1").json["job_id"] for _ in range(3)]
    app.extensions[EXTENSION].close(wait=True)
    settings = app.extensions[EXTENSION].settings
    store = Store(settings.data_dir / "runner.sqlite3")
    finished = store.get_job(running)
    assert finished is not None
    assert finished.status is Status.SUCCEEDED
    queued_jobs = [store.get_job(j) for j in queued]
    assert {job.status if job is not None else None for job in queued_jobs} == {Status.CANCELLED}


def test_client_disconnect_leaves_the_job_to_finish_and_be_read(api: Api, docker_client: docker.DockerClient) -> None:
    r = api.http.post(
        "/run-json",
        json={"script_name": "main.py", "code": ["import time", "print('a')", "time.sleep(1)", "print('b')"]},
        headers=api.headers(),
        buffered=False,
    )
    job_id = r.headers["X-Job-Id"]
    assert read_line(chunks_of(r)) == b"a\n"
    r.close()  # the client goes away mid-run
    body = wait_done(api, job_id)
    assert (body["status"], body["stdout"]) == ("succeeded", "a\nb\n")
    assert containers_gone(docker_client, f"{LABEL}.job={job_id}")


def test_one_client_cannot_fill_the_whole_queue(make_app, base_image: str) -> None:
    app = make_app(base_image=base_image, workers=1, queue_size=4, client_queue_limit=1)
    greedy, polite = Api(app, "greedy"), Api(app, "polite")
    sleeper = ["import time", "time.sleep(30)"]
    first = greedy.run_json(sleeper, query="?async=1").json["job_id"]
    r = greedy.run_json(sleeper, query="?async=1")
    assert r.status_code == 429
    assert "per client" in r.json["error"]["message"]
    other = polite.run_json("print('still served')", query="?async=1")
    assert other.status_code == 202
    greedy.delete(f"/jobs/{first}")
    assert wait_done(polite, other.json["job_id"])["stdout"] == "still served\n"


def test_results_survive_an_app_restart(make_app, base_image: str) -> None:
    first = Api(make_app(base_image=base_image))
    job_id = first.run_json(['print("kept")']).json["job_id"]
    first.app.extensions[EXTENSION].close(wait=True)
    second = make_app(base_image=base_image)
    again = Api.__new__(Api)
    again.app, again.name, again.key, again.http = second, first.name, first.key, second.test_client()
    body = again.get(f"/status/{job_id}").json
    assert (body["status"], body["stdout"]) == ("succeeded", "kept\n")


def test_next_start_removes_leftover_containers_and_marks_interrupted_jobs(docker_app, docker_client) -> None:
    svc = docker_app.extensions[EXTENSION]
    job = stored_job("j1", Status.RUNNING, created_at=time.time())
    svc.store.save_job(job)
    tag = client_image_tag(svc.settings.image_prefix, "c", ())
    hooks = BuildHooks(log=lambda _: None, labels={})
    svc.client_images.ensure(docker_client, tag=tag, client_name="c", requirements=(), hooks=hooks)
    Run(docker_client, tag, job.limits, svc.policy, {"job": "j1"})  # a crash leaves it behind
    label = f"{LABEL}.job=j1"
    assert len(docker_client.api.containers(all=True, filters={"label": [label]})) == 1
    assert svc.recover() == (1, 1)
    assert docker_client.api.containers(all=True, filters={"label": [label]}) == []
    stored = svc.store.get_job("j1")
    assert stored.status is Status.INTERNAL_ERROR
    assert "stopped before this job ended" in stored.message


def test_expired_results_are_gone(make_app, base_image: str) -> None:
    api = Api(make_app(base_image=base_image, retention_s=1))
    job_id = api.run_json("print(1)").json["job_id"]
    assert api.get(f"/status/{job_id}").status_code == 200
    time.sleep(1.5)
    assert api.get(f"/status/{job_id}").status_code == 404
    assert api.get("/jobs").json["jobs"] == []


def test_a_submit_purges_expired_jobs_without_waiting_for_it(make_app, base_image: str) -> None:
    app = make_app(base_image=base_image, retention_s=1)
    api = Api(app)
    old = api.run_json("print(1)").json["job_id"]
    time.sleep(1.5)
    api.run_json("print(2)", query="?async=1")  # no read in between: the submit's own purge removes it
    store = app.extensions[EXTENSION].store
    assert wait_until(lambda: store.get_job(old) is None, timeout=5)


def stored_job(job_id: str, status: Status, *, created_at: float, finished_at: float | None = None) -> Job:
    """A job record as the store keeps it, for tests of the store's own rules."""
    return Job(
        id=job_id,
        client="c",
        status=status,
        limits=Limits(1, 64, 1),
        entrypoint="main.py",
        created_at=created_at,
        finished_at=finished_at,
    )


def test_purge_deletes_only_jobs_past_retention(app) -> None:
    svc = app.extensions[EXTENSION]
    now = time.time()
    old = stored_job("old", Status.SUCCEEDED, created_at=now - 10, finished_at=now - svc.settings.retention_s - 1)
    new = stored_job("new", Status.SUCCEEDED, created_at=now, finished_at=now)
    running = stored_job("running", Status.RUNNING, created_at=now - svc.settings.retention_s - 10)
    for job in (old, new, running):
        svc.store.save_job(job)
    assert svc.jobs.purge_expired(now=now) == 1
    assert [svc.store.get_job(j) is None for j in ("old", "new", "running")] == [True, False, False]


@pytest.mark.parametrize("path", ["/jobs", "/status/x", "/status/x/output"])
def test_missing_or_wrong_key_is_401_with_how_to_get_one(app, path: str) -> None:
    http = app.test_client()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = http.get(path, headers=headers)
        assert r.status_code == 401
        assert "clients create" in r.json["error"]["message"]


def test_revoked_key_stops_working_at_once(app) -> None:
    api = Api(app, "soon-gone")
    assert api.get("/jobs").status_code == 200
    app.extensions[EXTENSION].store.revoke_client("soon-gone")
    assert api.get("/jobs").status_code == 401


def test_naming_another_client_in_the_body_is_403(app) -> None:
    api = Api(app, "me")
    r = api.run_json("print(1)", client="someone-else")
    assert r.status_code == 403
    assert r.json["error"]["code"] == "forbidden"


def test_each_client_keeps_at_most_its_newest_finished_jobs(make_app, base_image: str) -> None:
    app = make_app(base_image=base_image, client_max_jobs=2)
    api, other = Api(app, "busy"), Api(app, "quiet")
    kept_elsewhere = other.run_json("print(0)").json["job_id"]
    ids = [api.run_json(f"print({i})").json["job_id"] for i in range(4)]
    assert [j["job_id"] for j in api.get("/jobs").json["jobs"]] == ids[::-1][:3]  # 2 kept + the newest
    assert other.get(f"/status/{kept_elsewhere}").status_code == 200


def test_another_clients_hello_world_waits_at_most_one_run_behind_a_backlog(make_app, base_image: str) -> None:
    """Client A queues 8 jobs of 3 s on 2 workers; client B's hello world starts when the first of A's ends."""
    app = make_app(base_image=base_image, workers=2)
    alice, bob = Api(app, "alice"), Api(app, "bob")
    backlog = [alice.run_json("import time; time.sleep(3)", query="?async=1").json["job_id"] for _ in range(8)]
    assert wait_until(lambda: sum(alice.get(f"/status/{j}").json["status"] == "running" for j in backlog) == 2, 30)
    started = time.monotonic()
    r = bob.run_json("print('hello world')")
    waited = time.monotonic() - started
    assert r.json["status"] == "succeeded"
    assert waited < 3 + 2, f"bob waited {waited:.1f} s behind alice's backlog (one run is 3 s)"
    queued = [j for j in backlog if alice.get(f"/status/{j}").json["status"] == "queued"]
    assert len(queued) >= 4  # bob did not wait for the backlog to drain
    for j in backlog:
        alice.delete(f"/jobs/{j}")


def test_the_documents_examples_run_as_sent(api: Api) -> None:
    """What Postman's import fills in (the examples, optional fields left out) runs: the seed's two requests."""
    doc = api.get("/openapi.json").json
    run_json = doc["paths"]["/run-json"]["post"]
    query = "&".join(f"{p['name']}={str(p['example']).lower()}" for p in run_json["parameters"])
    body = run_json["requestBody"]["content"]["application/json"]["example"]
    r = api.http.post(f"/run-json?{query}", json=body, headers=api.headers())
    assert r.status_code == 200 and r.data.decode().splitlines() == ["hello world", "/", "goodbye world"]
    script = doc["components"]["schemas"]["RunFile"]["example"]["files[]"].encode()
    r = api.http.post("/run-file", data={"files[]": (io.BytesIO(script), "main.py")}, headers=api.headers())
    assert r.status_code == 200 and r.data == b"hello world\n"
