"""The event stream's text: UTF-8 kept whole across chunks, anything else base64, nothing dropped."""

from __future__ import annotations

import base64

from app.api.events import Utf8Pieces


def joined(pieces: list[dict[str, str]]) -> bytes:
    out = b""
    for piece in pieces:
        out += base64.b64decode(piece["data"]) if piece.get("encoding") == "base64" else piece["data"].encode()
    return out


def test_a_character_split_between_chunks_comes_whole_as_text() -> None:
    stream = Utf8Pieces()
    snowman = "☃".encode()  # three bytes
    first = stream.feed(b"a" + snowman[:1])
    second = stream.feed(snowman[1:] + b"b")
    assert first == [{"data": "a"}] and second == [{"data": "☃b"}]
    assert stream.flush() == []


def test_bytes_that_are_not_utf8_come_as_base64_and_round_trip() -> None:
    stream = Utf8Pieces()
    raw = b"ok \xff\xfe bad"
    pieces = stream.feed(raw) + stream.flush()
    assert pieces == [{"data": base64.b64encode(raw).decode(), "encoding": "base64"}]
    assert joined(pieces) == raw


def test_a_stream_ending_inside_a_character_keeps_those_bytes() -> None:
    stream = Utf8Pieces()
    pieces = stream.feed(b"x\xe2\x98") + stream.flush()
    assert joined(pieces) == b"x\xe2\x98"
