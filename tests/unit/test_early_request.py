"""What the HTTP server reads of a request on its poller before a thread takes it (app/slow_clients.EarlyRequest)."""

from __future__ import annotations

import time

import pytest

from app.slow_clients import BODY_TOO_LARGE, MAX_EARLY_HEAD, READY, TOO_LARGE, WAIT, EarlyRequest, body_to_wait_for

HEAD = b"POST /run-json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def fed(*chunks: bytes, max_body: int = 1000) -> list[str]:
    early = EarlyRequest(max_body)
    return [early.add(chunk) for chunk in chunks]


def test_a_request_without_a_body_is_taken_once_its_head_has_ended() -> None:
    assert fed(b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n") == [WAIT, WAIT, READY]


def test_a_body_of_known_length_is_awaited_whole() -> None:
    assert fed(HEAD + b"Content-Length: 10\r\n\r\n", b"12345", b"67890") == [WAIT, WAIT, READY]
    assert fed(HEAD + b"Content-Length: 10\r\n\r\n0123456789") == [READY]


def test_bare_newlines_end_a_head_too() -> None:
    assert fed(b"GET / HTTP/1.1\nHost: x\n\n") == [READY]


@pytest.mark.parametrize(
    "header",
    [
        b"Transfer-Encoding: chunked, gzip",  # chunked not last: gunicorn refuses it
        b"Transfer-Encoding: chunked\r\nContent-Length: 5",  # both: gunicorn refuses it
        b"Content-Length: -5",
        b"Content-Length: 1e3",
    ],
)
def test_a_body_framed_oddly_goes_to_a_thread_with_the_head_for_gunicorn_to_refuse(header: bytes) -> None:
    assert fed(HEAD + header + b"\r\n\r\n") == [READY]


def test_a_chunked_body_is_awaited_to_its_last_chunk_and_trailers() -> None:
    head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    assert fed(head, b"5\r\nhel", b"lo\r\n", b"3;ext=1\r\nabc\r\n0\r", b"\n\r\n") == [WAIT, WAIT, WAIT, WAIT, READY]
    assert fed(head + b"1\r\na\r\n0\r\n", b"X-Trailer: 1\r\n", b"\r\n") == [WAIT, WAIT, READY]


def test_a_chunked_body_past_the_limit_is_refused_and_a_malformed_one_goes_to_a_thread() -> None:
    head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    assert fed(head + b"3E9\r\n") == [BODY_TOO_LARGE]  # 1001 bytes declared
    assert fed(head + b"zz\r\n") == [READY]
    assert fed(head + b"5" * 9000) == [READY]  # a size line past gunicorn's limit: it refuses that at once


def test_chunked_framing_that_gunicorn_accepts_is_awaited_whole_not_handed_over() -> None:
    head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    assert fed(head + b"000000005\r\nhel", b"lo\r\n0\r\n\r\n") == [WAIT, READY]  # leading zeros
    assert fed(head + b"100000000\r\n") == [BODY_TOO_LARGE]  # nine significant digits
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 90) for i in range(60))  # ~6 KB of trailer lines
    assert fed(head + b"1\r\na\r\n0\r\n" + trailers, b"\r\n") == [WAIT, READY]
    assert fed(head + b"0\r\n" + b"X-T: v\r\n" * 9000) == [TOO_LARGE]  # trailers that never end: 431
    for codings in (b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked"):
        assert fed(HEAD + codings + b"\r\n\r\n1\r\na\r\n", b"0\r\n\r\n") == [WAIT, READY]


def test_a_content_length_with_leading_zeros_is_the_length_it_says() -> None:
    assert fed(HEAD + b"Content-Length: " + b"0" * 30 + b"5\r\n\r\n", b"12345") == [WAIT, READY]


def test_two_content_lengths_or_a_broken_header_line_go_to_gunicorn_which_refuses_them() -> None:
    assert body_to_wait_for(HEAD + b"Content-Length: 5\r\nContent-Length: 5", 1000) == 0
    assert body_to_wait_for(b"POST / HTTP/1.1\r\nno colon here", 1000) == 0


def test_a_head_longer_than_the_longest_worth_holding_is_too_large_ended_or_not() -> None:
    early = EarlyRequest(1000)
    assert early.add(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 100) == WAIT
    assert early.add(b"X" * MAX_EARLY_HEAD) == TOO_LARGE
    assert fed(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * (MAX_EARLY_HEAD // 8) + b"\r\n") == [TOO_LARGE]


def test_an_empty_line_before_the_request_line_is_skipped_as_gunicorn_does() -> None:
    assert fed(b"\r\n" + HEAD + b"Content-Length: 10\r\n\r\n", b"0123456789") == [WAIT, READY]


def test_a_body_over_the_limit_is_refused_declared_or_counted_in_chunks_and_never_read() -> None:
    assert fed(HEAD + b"Content-Length: 1001\r\n\r\n") == [BODY_TOO_LARGE]
    assert fed(HEAD + b"Content-Length: " + b"1" * 4301 + b"\r\n\r\n") == [BODY_TOO_LARGE]  # int() would raise
    chunked = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    assert fed(chunked + b"1F4\r\n" + b"a" * 500 + b"\r\n", b"1F5\r\n") == [WAIT, BODY_TOO_LARGE]


def test_a_client_awaiting_100_continue_is_told_so_and_its_body_still_awaited() -> None:
    early = EarlyRequest(1000)
    assert early.add(HEAD + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n") == WAIT
    assert early.expects_continue
    assert early.add(b"abc") == READY
    http10 = EarlyRequest(1000)
    assert http10.add(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n") == WAIT
    assert not http10.expects_continue  # never a 100 Continue to an HTTP/1.0 client


def test_a_head_sent_a_byte_at_a_time_costs_in_proportion_to_its_length_not_its_square() -> None:
    def seconds_for(lines: int) -> float:
        early = EarlyRequest(1000)
        head = b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * lines
        started = time.process_time()
        assert [early.add(head[i : i + 1]) for i in range(len(head))].count(WAIT) == len(head)
        return time.process_time() - started

    small, large = seconds_for(1500), seconds_for(6000)
    assert large < 8 * small + 0.05  # four times the bytes: ~4x the time; each byte searching the head again: ~16x
