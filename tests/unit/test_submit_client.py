"""`run.py submit` facing a service that answers things no real one would: it goes nowhere else, and says so."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.submit import main

Handler = Callable[[BaseHTTPRequestHandler], None]


class StandIn:
    """An HTTP server on loopback that records each request's method and path and answers with `answer`."""

    def __init__(self, answer: Handler) -> None:
        seen: list[tuple[str, str]] = []
        self.seen = seen

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append(("POST", self.path))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer(self)

            def do_GET(self) -> None:
                seen.append(("GET", self.path))
                answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[Callable[[Handler], StandIn]]:
    made: list[StandIn] = []

    def make(answer: Handler) -> StandIn:
        made.append(StandIn(answer))
        return made[-1]

    yield make
    for s in made:
        s.close()


def reply(h: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    h.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(body)


JOB = "0123456789abcdef01234567"
RESULT: dict[str, object] = {"type": "result", "job_id": JOB, "status": "succeeded", "exit_code": 0}


def one_output_file(url: str) -> Handler:
    """A service whose run ends listing one output file, a.txt, at `url`, and that answers any GET with its bytes."""
    listed = {**RESULT, "artifacts": [{"name": "a.txt", "url": url}]}

    def answer(h: BaseHTTPRequestHandler) -> None:
        if h.command == "POST":
            reply(h, 200, json.dumps(listed).encode() + b"\n", **{"X-Job-Id": JOB})
        else:
            reply(h, 200, b"made there")

    return answer


def a_script(tmp_path: Path) -> str:
    script = tmp_path / "main.py"
    script.write_text("print(1)\n")
    return str(script)


def test_output_files_are_asked_for_at_the_service_whatever_url_it_lists(
    stand_in: Callable[[Handler], StandIn], tmp_path: Path
) -> None:
    service = stand_in(one_output_file(".evil.example/steal"))
    code = main([a_script(tmp_path), "--url", service.url, "--key", "k", "--artifacts", str(tmp_path / "got")])
    assert code == 0
    assert service.seen[-1] == ("GET", f"/status/{JOB}/artifacts/a.txt")
    assert (tmp_path / "got" / "a.txt").read_bytes() == b"made there"


def test_a_redirect_sends_the_request_nowhere_else(stand_in: Callable[[Handler], StandIn], tmp_path: Path) -> None:
    elsewhere = stand_in(lambda h: reply(h, 200, json.dumps(RESULT).encode() + b"\n"))
    service = stand_in(lambda h: reply(h, 307, b"", Location=f"{elsewhere.url}/run-file"))
    assert main([a_script(tmp_path), "--url", service.url, "--key", "k", "--env", "TOKEN=secret"]) != 0
    assert elsewhere.seen == []


def test_an_output_file_that_cannot_be_written_is_said_and_the_exit_stays_the_scripts(
    stand_in: Callable[[Handler], StandIn], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = stand_in(one_output_file(f"/status/{JOB}/artifacts/a.txt"))
    (tmp_path / "got" / "a.txt").mkdir(parents=True)  # a folder where the file would go
    assert main([a_script(tmp_path), "--url", service.url, "--key", "k", "--artifacts", str(tmp_path / "got")]) == 0
    assert "could not write 'a.txt'" in capsys.readouterr().err
