"""The store keeps jobs, clients and image use as given: on a temp SQLite file and on a real PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.models import STDERR, STDOUT, Artifact, Job, JobSummary, Limits, Output, PageCursor, RunSpec, Status
from app.store import Store, database_url, decode_record, encode_record
from tests.backing import PostgresServer, ReplyCutter

LIMITS = Limits(timeout_s=30, memory_mb=256, cpus=1.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "sqlite":
        store = Store(tmp_path / "runner.sqlite3")
    else:
        store = Store(database_url(request.getfixturevalue("postgres").new_database(), tmp_path))
    yield store
    store.close()


def job(
    job_id: str,
    client: str = "acme",
    status: Status = Status.SUCCEEDED,
    created_at: float = 1000.0,
    finished_at: float | None = None,
) -> Job:
    """A job; a finished status gets a finish time just after its creation unless given one."""
    if finished_at is None and status.finished:
        finished_at = created_at + 1
    return Job(job_id, client, status, LIMITS, "main.py", created_at=created_at, finished_at=finished_at)


def ids(jobs: Sequence[Job | JobSummary]) -> list[str]:
    return [j.id for j in jobs]


def test_a_saved_job_reads_back_field_for_field(store: Store) -> None:
    saved = Job(
        id="j1",
        client="acme",
        status=Status.OOM_KILLED,
        limits=Limits(timeout_s=12.5, memory_mb=512, cpus=1.5),
        entrypoint="main.py",
        created_at=1000.25,
        started_at=1001.5,
        finished_at=1003.75,
        exit_code=137,
        printed=Output(((STDOUT, b"not utf-8: \xff\xfe\x00"), (STDERR, b"Killed\n"), (STDOUT, b"\x00\x01out"))),
        build_log="Collecting six\n",
        message="The run used more than 512 MiB.",
        cpu_seconds=0.25,
        peak_memory_bytes=3 * 2**31,  # beyond 32 bits
    )
    store.save_job(saved)
    got = store.get_job("j1")
    assert got == saved
    assert got is not None
    assert got.status is Status.OOM_KILLED
    assert type(got.stdout) is bytes and type(got.output) is bytes
    assert (got.stdout, got.stderr) == (b"not utf-8: \xff\xfe\x00\x00\x01out", b"Killed\n")
    assert got.output == b"not utf-8: \xff\xfe\x00Killed\n\x00\x01out"  # interleaved as printed
    assert got.limits == Limits(timeout_s=12.5, memory_mb=512, cpus=1.5)


def test_saving_a_job_again_replaces_its_record(store: Store) -> None:
    queued = job("j1", status=Status.QUEUED)
    store.save_job(queued)
    queued.finish(Status.FAILED, "exit 1", exit_code=1)
    store.save_job(queued)
    got = store.get_job("j1")
    assert got is not None
    assert (got.status, got.exit_code, got.message) == (Status.FAILED, 1, "exit 1")
    assert store.count_jobs("acme") == 1


def test_a_job_survives_reopening_the_file(tmp_path: Path) -> None:
    first = Store(tmp_path / "runner.sqlite3")
    first.save_job(job("j1"))
    first.close()
    again = Store(tmp_path / "runner.sqlite3")
    try:
        assert again.get_job("j1") == job("j1")
    finally:
        again.close()


def test_another_clients_job_is_none_when_asked_as_a_client(store: Store) -> None:
    store.save_job(job("j1", client="acme"))
    assert store.get_job("j1", client="other") is None
    assert store.get_job("j1", client="acme") is not None
    assert store.get_job("j1") is not None  # the operator's view
    assert store.get_job("missing") is None


def test_summaries_are_the_clients_own_newest_first_from_a_cursor_with_filters(store: Store) -> None:
    for n in range(1, 6):
        store.save_job(job(f"j{n}", created_at=1000.0 + n, status=Status.FAILED if n % 2 else Status.SUCCEEDED))
    store.save_job(job("tie", created_at=1003.0))  # same time as j3: ties go by id, newest-first order kept
    store.save_job(job("theirs", client="other", created_at=2000.0))
    first = store.list_summaries("acme", 2)
    assert ids(first) == ["j5", "j4"]
    after = PageCursor(first[-1].created_at, first[-1].id)
    second = store.list_summaries("acme", 2, after=after)
    assert ids(second) == ["tie", "j3"]
    rest = store.list_summaries("acme", 10, after=PageCursor(second[-1].created_at, second[-1].id))
    assert ids(rest) == ["j2", "j1"]
    assert ids(store.list_summaries("acme", 10, statuses=[Status.FAILED])) == ["j5", "j3", "j1"]
    assert ids(store.list_summaries("acme", 10, since=1004.0)) == ["j5", "j4"]
    assert ids(store.list_summaries("other", 10)) == ["theirs"]


def test_count_jobs_counts_only_the_clients_jobs(store: Store) -> None:
    for n in range(3):
        store.save_job(job(f"a{n}", client="acme"))
    store.save_job(job("b0", client="other"))
    assert store.count_jobs("acme") == 3
    assert store.count_jobs("other") == 1
    assert store.count_jobs("nobody") == 0
    store.delete_job("a0")
    assert store.count_jobs("acme") == 2


def test_purge_finished_before_deletes_only_jobs_that_ended_before_the_cutoff(store: Store) -> None:
    store.save_job(job("old", finished_at=100.0, created_at=90.0))
    store.save_job(job("new", finished_at=300.0, created_at=290.0))
    store.save_job(job("old-running", status=Status.RUNNING, created_at=10.0))
    store.save_job(job("old-queued", status=Status.QUEUED, created_at=10.0))
    assert store.purge_finished_before(200.0) == 1
    assert store.get_job("old") is None
    assert {j.id for j in store.list_summaries("acme", 10)} == {"new", "old-running", "old-queued"}


def test_purge_beyond_keeps_the_newest_finished_jobs_and_every_unfinished_one(store: Store) -> None:
    store.save_job(job("oldest-running", status=Status.RUNNING, created_at=1.0))
    for n in range(2, 6):
        store.save_job(job(f"j{n}", created_at=float(n)))
    store.save_job(job("theirs", client="other", created_at=0.5))
    assert store.purge_beyond("acme", keep=2) == 2
    assert ids(store.list_summaries("acme", 10)) == ["j5", "j4", "oldest-running"]
    assert store.get_job("theirs") is not None


def test_a_new_queued_job_purges_its_clients_finished_jobs_beyond_the_newest_it_keeps(store: Store) -> None:
    store.save_job(job("oldest-running", status=Status.RUNNING, created_at=1.0))
    for n in range(2, 6):
        store.save_job(job(f"j{n}", created_at=float(n)))
    store.save_job(job("theirs", client="other", created_at=0.5))
    store.save_queued(job("new", status=Status.QUEUED, created_at=9.0), SPEC, keep=2)
    assert ids(store.list_summaries("acme", 10)) == ["new", "j5", "j4", "oldest-running"]  # as purge_beyond, then it
    assert store.get_job("theirs") is not None
    store.save_queued(job("newer", status=Status.QUEUED, created_at=10.0), SPEC, keep=10)
    assert len(store.list_summaries("acme", 10)) == 5  # nothing beyond: nothing purged


def test_unfinished_jobs_are_the_queued_and_running_ones_of_every_client(store: Store) -> None:
    store.save_job(job("q", status=Status.QUEUED))
    store.save_job(job("r", client="other", status=Status.RUNNING))
    for status in (Status.SUCCEEDED, Status.CANCELLED, Status.INTERNAL_ERROR):
        store.save_job(job(f"done-{status}", status=status))
    assert sorted(ids(store.unfinished_jobs())) == ["q", "r"]


def test_a_client_is_found_by_its_key_hash_until_revoked(store: Store) -> None:
    store.add_client("acme", "hash-1")
    found = store.client_by_key_hash("hash-1")
    assert found is not None
    assert (found.name, found.key_hash, found.revoked_at) == ("acme", "hash-1", None)
    assert store.client_by_key_hash("hash-unknown") is None
    assert store.revoke_client("acme")
    revoked = store.client_by_key_hash("hash-1")
    assert revoked is not None and revoked.revoked_at is not None
    assert not store.revoke_client("acme")  # already revoked
    assert not store.revoke_client("nobody")


def test_adding_a_known_client_gives_it_a_new_key_and_reactivates_it(store: Store) -> None:
    store.add_client("acme", "hash-1")
    store.revoke_client("acme")
    store.add_client("acme", "hash-2")
    assert store.client_by_key_hash("hash-1") is None
    again = store.client_by_key_hash("hash-2")
    assert again is not None and again.revoked_at is None
    assert [c.name for c in store.list_clients()] == ["acme"]


def test_clients_are_listed_by_name(store: Store) -> None:
    for name in ("zeta", "acme", "mid"):
        store.add_client(name, f"hash-{name}")
    assert [c.name for c in store.list_clients()] == ["acme", "mid", "zeta"]


def test_image_use_keeps_the_last_time_per_tag_until_forgotten(store: Store) -> None:
    assert store.image_last_used("e1") == {}
    store.touch_image("e1", "img:1", 10.0)
    store.touch_image("e1", "img:2", 20.0)
    store.touch_image("e1", "img:1", 30.0)
    store.touch_image("e2", "img:1", 5.0)  # another Docker host's image of the same tag
    assert store.image_last_used("e1") == {"img:1": 30.0, "img:2": 20.0}
    store.forget_image("e1", "img:1")
    store.forget_image("e1", "img:never-seen")
    assert store.image_last_used("e1") == {"img:2": 20.0}
    assert store.image_last_used("e2") == {"img:1": 5.0}


SPEC = RunSpec(
    client="acme",
    files={"main.py": b"print(1)\n", "data.bin": b"\xff\x00"},
    entrypoint="main.py",
    limits=LIMITS,
    requirements=("six==1.16.0",),
    args=("--n", "3"),
    env={"TOKEN": "secret"},
    stdin=b"\xff input",
)


def spec_of(store: Store, job_id: str) -> RunSpec | None:
    """The spec the store holds for a job (a worker reads it with the job)."""
    found = store.get_job_and_spec(job_id)
    return found[1] if found is not None else None


def test_an_unfinished_jobs_spec_reads_back_and_is_dropped_when_it_ends(store: Store) -> None:
    queued = job("j1", status=Status.QUEUED)
    store.save_job(queued, SPEC)
    assert spec_of(store, "j1") == SPEC
    queued.status = Status.RUNNING
    store.save_job(queued)  # saving without a spec keeps it while the job is unfinished
    assert spec_of(store, "j1") == SPEC
    assert store.get_job_and_spec("j1") == (queued, SPEC)  # one query: what a worker reads once it claimed a job
    queued.finish(Status.SUCCEEDED, "done", exit_code=0)
    store.save_job(queued)
    assert spec_of(store, "j1") is None
    assert store.get_job_and_spec("j1") == (queued, None)
    assert store.get_job_and_spec("nope") is None


def test_a_new_queued_job_is_saved_with_its_spec_and_counted_with_the_unfinished_ones(store: Store) -> None:
    store.save_job(job("r1", client="bob", status=Status.RUNNING))
    store.save_job(job("done", client="acme"))
    counts = store.save_queued(job("q1", status=Status.QUEUED), SPEC, keep=10)
    assert store.get_job_and_spec("q1") == (job("q1", status=Status.QUEUED), SPEC)
    postgres = store._engine.dialect.name == "postgresql"
    assert counts == ((2, 1) if postgres else None)  # everyone's unfinished jobs, then acme's; this one included
    assert store.count_unfinished("acme") == (2, 1)


def test_a_queued_job_whose_spec_nobody_reads_is_saved_without_it(store: Store) -> None:
    store.save_job(job("r1", client="bob", status=Status.RUNNING))
    counts = store.save_queued(job("q1", status=Status.QUEUED), None, keep=10)
    assert store.get_job_and_spec("q1") == (job("q1", status=Status.QUEUED), None)
    assert spec_of(store, "q1") is None
    assert counts == ((2, 1) if store._engine.dialect.name == "postgresql" else None)


def test_a_queued_job_is_claimed_once_and_records_its_worker(store: Store) -> None:
    store.save_job(job("j1", status=Status.QUEUED), SPEC)
    assert store.claim_job("j1", "worker-a", now=1234.0)
    assert not store.claim_job("j1", "worker-b", now=1235.0)
    got = store.get_job("j1")
    assert got is not None
    assert (got.status, got.worker, got.started_at) == (Status.RUNNING, "worker-a", 1234.0)
    assert [j.id for j in store.unfinished_jobs(worker="worker-a")] == ["j1"]
    assert store.unfinished_jobs(worker="worker-b") == []


def test_a_worker_claims_a_queued_job_and_reads_it_with_its_spec_in_one_step(store: Store) -> None:
    store.save_job(job("j1", status=Status.QUEUED), SPEC)
    claimed = store.claim_and_read("j1", "worker-a", now=1234.0)
    running = job("j1", status=Status.RUNNING)
    running.worker, running.started_at = "worker-a", 1234.0
    assert claimed == (running, SPEC)
    assert store.get_job("j1") == running
    assert store.claim_and_read("j1", "worker-b", now=1235.0) is None  # taken
    assert store.claim_and_read("nope", "worker-b", now=1235.0) is None
    store.save_job(job("a1", status=Status.QUEUED), SPEC)
    assert store.claim_and_read("a1", "worker-b", now=1.0, client="acme", limit=1) is None  # acme runs j1 already
    assert store.get_job("a1").status is Status.QUEUED  # type: ignore[union-attr]


def test_a_job_is_claimed_at_first_try_only_while_no_other_job_is_queued(store: Store) -> None:
    if store._engine.dialect.name != "postgresql":
        assert store.claim_if_alone("j1", "w", now=1.0) is None  # no such statement: the worker reads the queue
        return
    store.save_job(job("j1", status=Status.QUEUED), SPEC)
    store.save_job(job("other", client="bob", status=Status.QUEUED, created_at=2000.0), SPEC)
    assert store.claim_if_alone("j1", "w", now=1.0) is None  # bob waits too: the fair rule must choose
    assert store.get_job("j1").status is Status.QUEUED  # type: ignore[union-attr]
    store.end_unfinished("other", Status.CANCELLED, "cancelled")
    store.save_job(job("running", status=Status.RUNNING), SPEC)
    claimed = store.claim_if_alone("j1", "w", now=1.0)
    assert claimed is not None and claimed[1] == SPEC
    assert (claimed[0].status, claimed[0].worker, claimed[0].started_at) == (Status.RUNNING, "w", 1.0)
    assert store.claim_if_alone("j1", "w2", now=2.0) is None  # taken


def test_a_claim_under_a_running_limit_counts_the_clients_running_jobs_in_the_same_step(store: Store) -> None:
    for n in range(3):
        store.save_job(job(f"a{n}", status=Status.QUEUED), SPEC)
    store.save_job(job("b0", client="other", status=Status.QUEUED), SPEC)
    assert store.claim_job("a0", "w", now=1.0, client="acme", limit=2)
    assert store.claim_job("a1", "w", now=1.0, client="acme", limit=2)
    assert not store.claim_job("a2", "w", now=1.0, client="acme", limit=2)  # acme holds two
    assert store.claim_job("b0", "w", now=1.0, client="other", limit=2)
    assert store.get_job("a2").status is Status.QUEUED  # type: ignore[union-attr]
    store.end_unfinished("a0", Status.SUCCEEDED, "done")
    assert store.claim_job("a2", "w", now=2.0, client="acme", limit=2)


def test_end_unfinished_ends_only_a_job_still_in_the_named_state(store: Store) -> None:
    store.save_job(job("queued", status=Status.QUEUED), SPEC)
    store.save_job(job("done"))
    assert not store.end_unfinished("queued", Status.INTERNAL_ERROR, "lost", only=Status.RUNNING)
    assert store.end_unfinished("queued", Status.CANCELLED, "cancelled", only=Status.QUEUED)
    assert not store.end_unfinished("done", Status.INTERNAL_ERROR, "lost")
    got = store.get_job("queued")
    assert got is not None
    assert (got.status, got.message) == (Status.CANCELLED, "cancelled")
    assert got.finished_at is not None
    assert spec_of(store, "queued") is None


def test_count_unfinished_counts_queued_and_running_in_total_and_per_client(store: Store) -> None:
    store.save_job(job("q", status=Status.QUEUED))
    store.save_job(job("r", status=Status.RUNNING, client="other"))
    store.save_job(job("done"))
    assert (store.count_unfinished("acme"), store.count_unfinished("nobody")) == ((2, 1), (2, 0))


def test_an_unversioned_sqlite_store_is_migrated_keeping_its_jobs_and_clients(tmp_path: Path) -> None:
    path = tmp_path / "runner.sqlite3"
    with sqlite3.connect(path) as old:  # the schema as the embedded store created it before versioning
        old.executescript(
            """
            CREATE TABLE jobs (
                id TEXT PRIMARY KEY, client TEXT NOT NULL, status TEXT NOT NULL, limits TEXT NOT NULL,
                entrypoint TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
                exit_code INTEGER, stdout BLOB NOT NULL, stderr BLOB NOT NULL, output BLOB NOT NULL,
                build_log TEXT NOT NULL, message TEXT NOT NULL);
            CREATE TABLE images (tag TEXT PRIMARY KEY, last_used REAL NOT NULL);
            CREATE TABLE clients (
                name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, revoked_at REAL);
            INSERT INTO jobs VALUES ('j1', 'acme', 'succeeded', '{"timeout_s": 30, "memory_mb": 256, "cpus": 1.0}',
                'main.py', 1000.0, 1000.5, 1001.0, 0, x'6869', x'', x'6869', '', 'ok');
            INSERT INTO jobs VALUES ('j2', 'acme', 'failed', '{"timeout_s": 30, "memory_mb": 256, "cpus": 1.0}',
                'main.py', 1000.0, 1000.5, 1001.0, 1, x'6162', x'4552', x'61455262', '', 'exit 1');
            INSERT INTO images VALUES ('img:1', 5.0);
            INSERT INTO clients VALUES ('acme', 'hash', 1.0, NULL);
            """
        )
    old.close()
    store = Store(path)
    try:
        got = store.get_job("j1")
        assert got is not None
        assert (got.status, got.stdout, got.worker) == (Status.SUCCEEDED, b"hi", None)
        mixed = store.get_job("j2")  # stdout "ab" and stderr "ER", printed interleaved as "aERb"
        assert mixed is not None and (mixed.stdout, mixed.stderr, mixed.output) == (b"ab", b"ER", b"aERb")
        assert [c.name for c in store.list_clients()] == ["acme"]
        store.touch_image("e1", "img:2", 6.0)
        assert store.image_last_used("e1") == {"img:2": 6.0}
    finally:
        store.close()
    again = Store(path)  # opening a current store changes nothing
    try:
        assert again.get_job("j1") == got
    finally:
        again.close()


def test_the_queue_view_shows_each_waiting_clients_oldest_job_running_counts_and_last_start(store: Store) -> None:
    assert store.queue_view() == ([], {}, {})
    store.save_job(job("a1", client="alice", status=Status.QUEUED, created_at=10.0))
    store.save_job(job("a2", client="alice", status=Status.QUEUED, created_at=5.0))
    store.save_job(job("b2", client="bob", status=Status.QUEUED, created_at=7.0))
    store.save_job(job("b1", client="bob", status=Status.QUEUED, created_at=7.0))  # a tie: the lower id first
    running = job("a0", client="alice", status=Status.RUNNING, created_at=1.0)
    running.started_at = 3.0
    store.save_job(running)
    waiting, counts, last_started = store.queue_view()
    assert sorted(waiting) == [("alice", 5.0, "a2"), ("bob", 7.0, "b1")]
    assert (counts, last_started) == ({"alice": 1}, {"alice": 3.0})


def test_a_corrected_result_replaces_the_verdict_and_says_so(store: Store) -> None:
    done = job("j1")
    done.exit_code, done.printed = 0, Output(((STDOUT, b"out"),))
    store.save_job(done)
    assert store.get_job("j1").status_corrected is False  # type: ignore[union-attr]
    done.finish(Status.FAILED, "The script exited with code 3.", exit_code=3)
    assert store.correct_result(done)
    got = store.get_job("j1")
    assert got is not None
    assert (got.status, got.exit_code, got.status_corrected, got.stdout) == (Status.FAILED, 3, True, b"out")
    store.delete_job("j1")
    assert not store.correct_result(done)  # a deleted job stays deleted


def test_output_files_are_listed_on_the_job_and_go_with_it(store: Store) -> None:
    from app.models import Artifact

    done = job("j1", created_at=1000.0)
    chart = Artifact.of("chart.png", b"\x89PNG...")
    done.artifacts = [chart]
    store.save_artifacts("j1", [(chart, b"\x89PNG...")])
    store.save_job(done)
    assert store.get_job("j1").artifacts == [chart]  # type: ignore[union-attr]
    assert store.get_artifact("j1", "chart.png") == b"\x89PNG..."
    assert store.get_artifact("j1", "other.png") is None
    store.purge_finished_before(5000.0)
    assert store.get_artifact("j1", "chart.png") is None
    store.save_artifacts("j2", [(chart, b"x")])
    store.save_job(job("j2"))
    store.delete_job("j2")
    assert store.get_artifact("j2", "chart.png") is None


def test_over_its_budget_the_store_drops_the_oldest_finished_outputs_keeping_the_records(store: Store) -> None:
    for n in range(4):
        done = job(f"j{n}", finished_at=2000.0 + n)
        done.printed, done.build_log = Output(((STDOUT, b"x" * 1000),)), "built"
        if n == 0:
            listed = Artifact.of("chart.png", b"p" * 500)
            store.save_artifacts(done.id, [(listed, b"p" * 500)])
            done.artifacts = [listed]
        store.save_job(done)
    running = job("live", status=Status.RUNNING)
    running.printed = Output(((STDOUT, b"y" * 5000),))
    store.save_job(running)
    total = store.stored_bytes()
    assert total > 4 * 1000
    assert store.evict_outputs(budget_bytes=total) == 0
    assert store.evict_outputs(budget_bytes=total - 2000) == 2  # the oldest (1510 bytes with its file), the next
    first, second, third = (store.get_job(f"j{n}") for n in range(3))
    assert first is not None and second is not None and third is not None
    assert first.output_evicted and second.output_evicted and not third.output_evicted
    assert (first.stdout, first.build_log, first.status) == (b"", "", Status.SUCCEEDED)  # the record stays
    assert first.artifacts and store.get_artifact("j0", "chart.png") is None
    assert third.stdout == b"x" * 1000
    assert store.get_job("live").stdout == b"y" * 5000  # type: ignore[union-attr]  # a running job is never touched
    assert store.stored_bytes() <= total - 2000


def test_a_spec_stored_inside_its_job_before_v8_moves_to_its_own_table(tmp_path: Path) -> None:
    path = tmp_path / "runner.sqlite3"
    store = Store(path)
    store.save_job(job("old", status=Status.QUEUED))
    store.close()
    legacy = (
        '{"client": "acme", "files": {"main.py": "cHJpbnQoMSkK"}, "entrypoint": "main.py", '
        '"limits": {"timeout_s": 30, "memory_mb": 256, "cpus": 1.0}, "requirements": null}'
    )
    with sqlite3.connect(path) as conn:  # as a version 7 store kept it
        conn.execute("UPDATE jobs SET spec = ? WHERE id = 'old'", (legacy,))
        conn.execute("DROP TABLE specs")
        conn.execute("UPDATE schema_version SET version = 7")
    conn.close()
    migrated = Store(path)
    try:
        spec = spec_of(migrated, "old")
        assert spec is not None and spec.files == {"main.py": b"print(1)\n"} and spec.client == "acme"
        queued = job("new", status=Status.QUEUED)
        migrated.save_job(queued, SPEC)
        assert spec_of(migrated, "new") == SPEC
        queued.status = Status.RUNNING
        migrated.save_job(queued)  # an update of the job leaves its spec alone
        assert spec_of(migrated, "new") == SPEC
    finally:
        migrated.close()


def test_one_waiting_client_needs_no_counts_unless_a_running_limit_applies(store: Store) -> None:
    store.save_job(job("a1", client="alice", status=Status.QUEUED, created_at=5.0))
    running = job("a0", client="alice", status=Status.RUNNING, created_at=1.0)
    running.started_at = 3.0
    store.save_job(running)
    assert store.queue_view() == ([("alice", 5.0, "a1")], {}, {})  # the fair choice is alice whatever the counts
    assert store.queue_view(limit=1) == ([("alice", 5.0, "a1")], {"alice": 1}, {"alice": 3.0})  # the limit reads them


def test_a_record_encoded_beside_the_store_decodes_to_the_same_job() -> None:
    original = job("encoded00000000000000001", status=Status.FAILED)
    original.printed = Output.of([(STDOUT, b"out\xff\n"), (STDERR, b"err\n"), (STDOUT, b"more\n")])
    original.artifacts = [Artifact.of("a.csv", b"1,2\n")]
    original.worker, original.exit_code, original.status_corrected = "w1", 3, True
    assert decode_record(encode_record(original)) == original


def test_bytes_that_are_no_record_are_refused() -> None:
    with pytest.raises(ValueError):
        decode_record(b'{"id": "x"}\n')
    with pytest.raises(ValueError):
        decode_record(b"not json")


def test_a_claim_sent_again_finds_its_own_and_no_one_elses(store: Store) -> None:
    """What `_retry` does after a dropped connection: the first claim may have been done already."""
    store.save_job(job("j1", status=Status.QUEUED), SPEC)
    assert store.claim_job("j1", "worker-a", now=1234.0, client="acme", limit=1)
    assert store.claim_job("j1", "worker-a", now=1234.0, client="acme", limit=1)  # not counted as its own limit
    store.save_job(job("j0", status=Status.QUEUED), SPEC)
    assert store.claim_job("j0", "worker-c", now=1.0)  # a worker with no limit: acme runs two now
    assert store.claim_job("j1", "worker-a", now=1234.0, client="acme", limit=1)  # its own, whatever the count
    assert not store.claim_job("j1", "worker-a", now=1235.0)  # a later claim of this worker is another claim
    assert not store.claim_job("j1", "worker-b", now=1234.0)
    store.save_job(job("j2", status=Status.QUEUED), SPEC)
    first = store.claim_and_read("j2", "worker-a", now=2.0)
    assert first is not None and store.claim_and_read("j2", "worker-a", now=2.0) == first
    assert store.claim_and_read("j2", "worker-b", now=2.0) is None
    if store._engine.dialect.name == "postgresql":
        store.save_job(job("j3", status=Status.QUEUED), SPEC)
        first = store.claim_if_alone("j3", "worker-a", now=3.0)
        store.save_job(job("j4", client="bob", status=Status.QUEUED), SPEC)  # no longer alone, but it is its own
        assert first is not None and store.claim_if_alone("j3", "worker-a", now=3.0) == first
        assert store.claim_if_alone("j3", "worker-b", now=3.0) is None


def test_a_claim_whose_answer_is_lost_with_its_connection_still_claims_the_job(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = urlsplit(postgres.new_database())
    cutter = ReplyCutter(postgres.port)
    store = Store(
        database_url(url._replace(netloc=url.netloc.replace(f":{postgres.port}", f":{cutter.port}")).geturl(), tmp_path)
    )
    try:
        store.save_job(job("j1", status=Status.QUEUED), SPEC)
        cutter.cut_next_reply()  # the claim is committed; its connection drops before the answer
        claimed = store.claim_and_read("j1", "worker-a", now=1234.0)
        assert cutter.cuts == 1
        assert claimed is not None and claimed[0].worker == "worker-a"
    finally:
        store.close()
        cutter.close()


def test_a_refused_job_is_withdrawn_unless_a_worker_claimed_it(store: Store) -> None:
    store.save_job(job("j1", status=Status.QUEUED), SPEC)
    store.save_job(job("j2", status=Status.QUEUED), SPEC)
    assert store.claim_job("j2", "w", now=1.0)
    assert store.withdraw_unstarted("j1")
    assert store.get_job("j1") is None and spec_of(store, "j1") is None
    assert store.withdraw_unstarted("j1")  # sent again: it is gone
    assert not store.withdraw_unstarted("j2")
    store.save_job(job("j3", status=Status.QUEUED), SPEC)
    store.end_unfinished("j3", Status.CANCELLED, "cancelled while queued")
    assert store.withdraw_unstarted("j3") and store.get_job("j3") is None  # it never started
    assert store.get_job("j2").status is Status.RUNNING  # type: ignore[union-attr]
    assert spec_of(store, "j2") == SPEC
