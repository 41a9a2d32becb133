"""The service as a user runs it: `python run.py` behind gunicorn, keys from `run.py clients create`."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from app.store import Store
from tests.helpers import wait_until
from tests.served import Served, serve

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path, base_image: str, docker_client: docker.DockerClient) -> Iterator[tuple[int, str, dict]]:
    yield from (s[:3] for s in serve(tmp_path, base_image, docker_client, {}))


@pytest.fixture
def json_logging_server(
    tmp_path: Path, base_image: str, docker_client: docker.DockerClient
) -> Iterator[tuple[int, str, dict]]:
    yield from (s[:3] for s in serve(tmp_path, base_image, docker_client, {"RUNNER_LOG_FORMAT": "json"}))


@pytest.fixture
def draining_server(tmp_path: Path, base_image: str, docker_client: docker.DockerClient) -> Iterator[Served]:
    yield from serve(tmp_path, base_image, docker_client, {"RUNNER_DRAIN_S": "4"})


def test_served_stream_delivers_first_line_before_the_script_ends(server, request: pytest.FixtureRequest) -> None:
    port, key, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    request.addfinalizer(conn.close)
    body = json.dumps(
        {
            "script_name": "main.py",
            "client": "test-client",
            "code": ["import time", "print('first')", "time.sleep(2)", "print('second')"],
        }
    )
    conn.request(
        "POST", "/run-json", body=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    started = time.monotonic()
    first = resp.readline()
    first_at = time.monotonic() - started
    rest = resp.read()
    total = time.monotonic() - started
    assert first == b"first\n"
    assert rest == b"second\n"
    assert first_at < total - 1  # the first line came a whole sleep before the end


def test_seed_curl_examples_work_with_a_key(server, tmp_path: Path) -> None:
    port, key, _ = server
    main = tmp_path / "main.py"
    main.write_text("print('hello from a file')\n")
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--location",
            "--request",
            "POST",
            f"http://localhost:{port}/run-file",
            "-H",
            f"Authorization: Bearer {key}",
            "--form",
            f'files[]=@"{main}"',
            "--form",
            'client="test-client"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "hello from a file\n"
    body = json.dumps(
        {
            "script_name": "main.py",
            "client": "test-client",
            "code": [
                "import flask, marshmallow, os, zipp, docker,time",
                'print("hello world")',
                'os.chdir("/")',
                "print(os.getcwd())",
                'print("goodbye world")',
            ],
        }
    )
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--location",
            "--request",
            "POST",
            f"http://localhost:{port}/run-json",
            "--header",
            "Content-Type: application/json",
            "-H",
            f"Authorization: Bearer {key}",
            "--data-raw",
            body,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "hello world\n/\ngoodbye world\n"


def test_healthz_and_readyz_are_public_and_ok(server, request: pytest.FixtureRequest) -> None:
    port, _, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    request.addfinalizer(conn.close)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    conn.request("GET", "/readyz")
    resp = conn.getresponse()
    assert resp.status == 200
    body = json.loads(resp.read())
    assert body["base_image_present"] is True and body["draining"] is False


def test_json_logs_are_one_object_per_line_with_the_job_client_and_container(
    json_logging_server, tmp_path: Path
) -> None:
    port, key, _ = json_logging_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"script_name": "main.py", "code": "print('hello')"})
    headers = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {key}"}
    conn.request("POST", "/run-json", body=body, headers=headers)
    job = json.loads(conn.getresponse().read())
    conn.close()
    assert job["status"] == "succeeded"
    time.sleep(0.5)  # the access line follows the answer

    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.strip()]
    assert all({"time", "level", "event", "logger"} <= line.keys() for line in lines)
    access = [line for line in lines if line["event"] == "http_request" and line.get("path") == "/run-json"]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["method"] == "POST" and access[0]["client"] == "test-client"
    assert access[0]["job_id"] == job["job_id"]
    ran = [line for line in lines if line.get("job_id") == job["job_id"] and "container_id" in line]
    assert ran, "no line of the run names its container"
    stored = Store(tmp_path / "runner.sqlite3").get_job(job["job_id"])
    assert stored is not None and stored.container_id == ran[0]["container_id"]
    assert ran[0]["client"] == "test-client"
    assert "container_id" not in job  # a host detail: operators see it, clients do not


def test_sigterm_drains_running_jobs_end_new_ones_get_503_and_the_rest_are_cancelled(
    draining_server: Served, tmp_path: Path
) -> None:
    port, key, _, proc = draining_server
    auth = {"Authorization": f"Bearer {key}"}

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {**auth, "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
        resp = conn.getresponse()
        answer = (resp.status, json.loads(resp.read() or b"{}"), dict(resp.getheaders()))
        conn.close()
        return answer

    def submit(code: str) -> str:
        status, body, _ = call("POST", "/run-json?async=1", {"script_name": "main.py", "code": code})
        assert status == 202, body
        return str(body["job_id"])

    short = submit("import time; time.sleep(2); print('finished')")
    long = submit("import time; time.sleep(120)")
    time.sleep(1)  # both running (two workers)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)

    status, body, headers = call("POST", "/run-json", {"script_name": "main.py", "code": "print(1)"})
    assert status == 503 and body["error"]["code"] == "draining" and headers["Retry-After"]
    status, ready, _ = call("GET", "/readyz")
    assert status == 503 and ready["draining"] is True and "draining" in ready["message"]
    assert call("GET", "/healthz")[0] == 200
    assert call("GET", f"/status/{short}")[0] == 200  # reads go on while draining

    proc.wait(timeout=4 + 30)  # the drain (RUNNER_DRAIN_S=4), then the stop
    store = Store(tmp_path / "runner.sqlite3")
    done, cut = store.get_job(short), store.get_job(long)
    assert done is not None and (done.status.value, done.stdout) == ("succeeded", b"finished\n")
    assert cut is not None and cut.status.value == "cancelled"
    assert "RUNNER_DRAIN_S (4 s)" in cut.message


@pytest.fixture
def strict_server(tmp_path: Path, base_image: str, docker_client: docker.DockerClient) -> Iterator[Served]:
    settings = {
        "RUNNER_HTTP_READ_TIMEOUT_S": "2",
        "RUNNER_HTTP_WRITE_TIMEOUT_S": "3",
        "RUNNER_HTTP_THREADS": "4",
        "RUNNER_QUEUE_SIZE": "2",
        "RUNNER_MAX_OUTPUT_BYTES": str(64 << 20),
    }
    yield from serve(tmp_path, base_image, docker_client, settings)


PRINT_1 = json.dumps({"script_name": "main.py", "code": "print(1)"}).encode()  # a /run-json body


def run_head(key: str, framing: str, *headers: str) -> bytes:
    """The head of an asynchronous /run-json request: its body's framing (a length, or chunked), then `headers`."""
    lines = ["POST /run-json?async=1 HTTP/1.1", "Host: x", f"Authorization: Bearer {key}"]
    return "\r\n".join([*lines, "Content-Type: application/json", framing, *headers, "", ""]).encode()


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while received := sock.recv(65536):
        answer += received
    return answer


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (EOF or reset), or None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def test_half_sent_requests_are_dropped_and_cannot_take_every_thread(strict_server: Served, tmp_path: Path) -> None:
    port = strict_server.port
    stalled = []
    for _ in range(6):  # more than the server's 4 threads
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")  # headers never end
        stalled.append(s)
    trickle = socket.create_connection(("127.0.0.1", port))
    trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    for _ in range(8):  # a byte every 0.5 s: each read is quick, the request never completes
        time.sleep(0.5)
        try:
            trickle.sendall(b"X")
        except OSError:
            break
    assert closed_within(trickle, 3) is not None
    assert time.monotonic() - started < 7
    for s in stalled:
        assert closed_within(s, 5) is not None
        s.close()
    trickle.close()
    assert healthz_status(port) == 200
    assert "sent its request too slowly" in (tmp_path / "server.log").read_text()


def test_connections_that_send_nothing_take_no_thread(strict_server: Served) -> None:
    silent = [socket.create_connection(("127.0.0.1", strict_server.port)) for _ in range(8)]  # twice the threads
    time.sleep(0.2)
    started = time.monotonic()
    assert healthz_status(strict_server.port) == 200
    assert time.monotonic() - started < 4  # gunicorn's own accept held each thread 5 s for them (9.8 s here)
    for s in silent:
        assert closed_within(s, 4) is not None  # RUNNER_HTTP_READ_TIMEOUT_S is 2 s here
        s.close()


@pytest.fixture
def patient_server(tmp_path: Path, base_image: str, docker_client: docker.DockerClient) -> Iterator[Served]:
    """Four threads and a long read limit: a stalled request that held a thread would hold it for 8 s."""
    settings = {"RUNNER_HTTP_READ_TIMEOUT_S": "8", "RUNNER_HTTP_THREADS": "4", "RUNNER_QUEUE_SIZE": "2"}
    yield from serve(tmp_path, base_image, docker_client, settings)


def test_requests_that_stall_after_their_first_bytes_take_no_thread(patient_server: Served) -> None:
    port = patient_server.port
    stalled: list[socket.socket] = []
    for start in (
        b"G",  # one byte
        b"POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n",  # headers never end
        b'POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"code": ',  # body never ends
        b"\r\nPOST /run-json HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",  # after an empty line
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nG",  # a whole request, then the first byte of the next
        b"POST /run-json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # chunks stop
        b"POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",  # refused, body never sent
        b"POST /run-json HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n",  # the same
    ):
        for _ in range(4):  # each kind alone would have taken every thread
            stalled.append(socket.create_connection(("127.0.0.1", port)))
            stalled[-1].sendall(start)
    try:
        time.sleep(0.3)
        started = time.monotonic()
        assert healthz_status(port) == 200
        assert time.monotonic() - started < 4  # a thread for each stalled request: 8 s (RUNNER_HTTP_READ_TIMEOUT_S)
        for s in stalled:
            assert closed_within(s, 10) is not None
    finally:
        for s in stalled:
            s.close()


def test_a_body_trickled_after_100_continue_is_held_to_the_request_deadline(patient_server: Served) -> None:
    head = run_head(patient_server.key, "Content-Length: 20", "Expect: 100-continue")
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=5) as s:
        s.sendall(head)
        assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b'{"code": "print(1)"}':  # a byte a second: 20 s against the 8 s limit
                s.sendall(bytes([byte]))
                time.sleep(1)
        answer = b""
        with contextlib.suppress(OSError):
            while received := s.recv(65536):
                answer += received
    assert time.monotonic() - started < 14
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:300]


def test_clients_that_keep_a_closed_connection_open_do_not_hold_up_the_others(patient_server: Served) -> None:
    lingering = []
    try:
        for _ in range(6):  # each answered, then left open: gunicorn waited 2 s on its main loop for each
            s = socket.create_connection(("127.0.0.1", patient_server.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            lingering.append(s)
        time.sleep(0.3)
        started = time.monotonic()
        assert healthz_status(patient_server.port) == 200
        assert time.monotonic() - started < 2
        for s in lingering:
            answer = read_to_end(s)  # the server closes its side within its 2 s linger
            assert answer.startswith(b"HTTP/1.0 200 "), answer[:300]
    finally:
        for s in lingering:
            s.close()


def test_a_head_over_64_kib_is_refused_with_431_without_a_thread(patient_server: Served) -> None:
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 9000)  # never ends
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_header_fields_too_large"


def test_a_content_length_of_thousands_of_digits_is_refused_and_the_server_lives_on(
    patient_server: Served, tmp_path: Path
) -> None:
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=5) as s:
        s.sendall(b"POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"1" * 4301 + b"\r\n\r\n")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:300]  # gunicorn's refusal, not a dead worker
    assert healthz_status(patient_server.port) == 200
    assert "Exception in worker process" not in (tmp_path / "server.log").read_text()


def test_a_request_sent_in_pieces_within_the_read_limit_is_answered(patient_server: Served) -> None:
    request = run_head(patient_server.key, f"Content-Length: {len(PRINT_1)}", "Connection: close") + PRINT_1
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=20) as s:
        for at in range(0, len(request), 40):  # a head and a body in pieces, the last of them after ~2 s
            s.sendall(request[at : at + 40])
            time.sleep(0.1)
        answer = read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]


def test_a_chunked_request_sent_in_pieces_is_answered(patient_server: Served) -> None:
    chunks = [PRINT_1[:10], PRINT_1[10:]]
    request = (
        run_head(patient_server.key, "Transfer-Encoding: chunked", "Connection: close")
        + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        + b"0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=20) as s:
        for at in range(0, len(request), 7):
            s.sendall(request[at : at + 7])
            time.sleep(0.02)
        answer = read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]


def test_a_kept_alive_request_that_takes_longer_than_the_keep_alive_to_arrive_is_answered(
    patient_server: Served,
) -> None:
    head = run_head(patient_server.key, "Transfer-Encoding: chunked", "Connection: close")
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=20) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}\n"):
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        time.sleep(1.5)  # gunicorn keeps the connection 2 s for the next request's first byte
        s.sendall(head)
        for piece in (PRINT_1[:10], PRINT_1[10:]):  # the request's end comes 3 s after its start (its limit: 8 s)
            time.sleep(1.5)
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        s.sendall(b"0\r\n\r\n")
        answer = read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]


def test_a_client_that_awaits_100_continue_gets_it_before_it_sends_its_body(patient_server: Served) -> None:
    head = run_head(patient_server.key, f"Content-Length: {len(PRINT_1)}", "Expect: 100-continue", "Connection: close")
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=5) as s:
        s.sendall(head)
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n", "no go-ahead: the body would never come"
        time.sleep(0.5)
        s.sendall(PRINT_1)
        answer = read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]  # one go-ahead only: gunicorn's is not sent again


def test_a_client_still_sending_when_refused_reads_the_refusal_and_an_orderly_close(patient_server: Served) -> None:
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=5) as s:
        s.sendall(b"POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 100_000)
        time.sleep(0.3)  # the refusal is sent while the body is on its way: unread, a close would reset
        answer = read_to_end(s)  # a reset here (ConnectionResetError) would lose the answer on a network
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]


def test_a_body_over_the_limit_is_refused_before_it_is_sent(patient_server: Served) -> None:
    with socket.create_connection(("127.0.0.1", patient_server.port), timeout=5) as s:
        s.sendall(b"POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "payload_too_large"


def test_a_reader_that_stops_reading_is_dropped(strict_server: Served, tmp_path: Path) -> None:
    port, key = strict_server.port, strict_server.key
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    body = json.dumps({"script_name": "main.py", "code": "import sys\nfor _ in range(320): print('x' * 65535)"})
    request = (
        f"POST /run-json HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    s.sendall(request.encode())
    log = tmp_path / "server.log"
    assert wait_until(lambda: "stopped reading its answer" in log.read_text(), timeout=60)
    s.close()
    assert healthz_status(port) == 200


def healthz_status(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_keep_alive_request_whose_body_comes_after_its_headers_is_read_whole(strict_server: Served) -> None:
    """The second request on a connection, its body sent a moment after its headers, as clients often do."""
    head = run_head(strict_server.key, f"Content-Length: {len(PRINT_1)}")
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=10) as s:
        answers = b""
        for n in range(1, 4):
            s.sendall(head)
            time.sleep(0.3)  # the body arrives after the server has started reading the request
            s.sendall(PRINT_1)
            while answers.count(b"HTTP/1.1 ") < n or not answers.endswith(b"}\n"):
                received = s.recv(65536)
                assert received, answers
                answers += received
        statuses = re.findall(rb"HTTP/1\.1 (\d{3})", answers)
    # each body was read whole: an answer about the job (202, or 429 when the earlier ones still hold the small
    # queue), never a 400 for a body cut short
    assert len(statuses) == 3 and set(statuses) <= {b"202", b"429"} and statuses[0] == b"202", answers[-500:]


def test_requests_the_http_server_refuses_itself_get_the_json_error_shape(server) -> None:
    port, _, _ = server
    for raw, status, code in (
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request"),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(raw)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode()), head
        assert b"Content-Type: application/json" in head
        assert json.loads(body)["error"]["code"] == code
