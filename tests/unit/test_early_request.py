"""What the HTTP server reads of a request on its poller before a thread takes it (app/slow_clients.EarlyRequest)."""

from __future__ import annotations

import pytest

from app.slow_clients import MAX_EARLY_HEAD, EarlyRequest, body_to_wait_for

HEAD = b"POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def fed(*chunks: bytes, max_body: int = 1000) -> list[bool]:
    early = EarlyRequest(max_body)
    return [early.add(chunk) for chunk in chunks]


def test_a_request_without_a_body_is_taken_once_its_head_has_ended() -> None:
    assert fed(b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n") == [False, False, True]


def test_a_body_of_known_length_is_awaited_whole() -> None:
    assert fed(HEAD + b"Content-Length: 10\r\n\r\n", b"12345", b"67890") == [False, False, True]
    assert fed(HEAD + b"Content-Length: 10\r\n\r\n0123456789") == [True]


def test_bare_newlines_end_a_head_too() -> None:
    assert fed(b"GET / HTTP/1.1\nHost: x\n\n") == [True]


@pytest.mark.parametrize(
    "header",
    [
        b"Transfer-Encoding: chunked",  # the thread reads a chunked body under the request's read limit
        b"Expect: 100-continue",  # the client waits for the go-ahead before its body
        b"Content-Length: 1001",  # longer than the body worth holding
        b"Content-Length: -5",
        b"Content-Length: 1e3",
    ],
)
def test_a_body_not_worth_awaiting_goes_to_a_thread_with_the_head(header: bytes) -> None:
    assert fed(HEAD + header + b"\r\n\r\n") == [True]


def test_two_content_lengths_or_a_broken_header_line_go_to_gunicorn_which_refuses_them() -> None:
    assert body_to_wait_for(HEAD + b"Content-Length: 5\r\nContent-Length: 5", 1000) == 0
    assert body_to_wait_for(b"POST / HTTP/1.1\r\nno colon here", 1000) == 0


def test_a_head_that_never_ends_goes_to_a_thread_past_the_longest_worth_holding() -> None:
    early = EarlyRequest(1000)
    assert not early.add(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 100)
    assert early.add(b"X" * MAX_EARLY_HEAD)
