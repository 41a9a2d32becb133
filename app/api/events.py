"""The event stream of a run (`Accept: application/x-ndjson`): one JSON object per line.

`{"type": "build", "data": ...}` for each line of the image build, `{"type": "stdout"|"stderr", "data": ...}` for the
script's output as it comes, and last, exactly once, `{"type": "result", ...}`: the job as the service recorded it
(without its outputs, which came before; links to them). A script cannot forge the result: its output is always
inside `data`. Output that is not UTF-8 is never dropped: such a chunk comes as `"encoding": "base64"`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from app.api.schemas import webhook_body
from app.models import BUILD, STDERR, STDOUT, Chunk, Job

NDJSON = "application/x-ndjson"
TYPES = {STDOUT: "stdout", STDERR: "stderr"}
MAX_SPLIT = 3  # a UTF-8 character split between two chunks leaves at most 3 of its bytes behind


class Utf8Pieces:
    """One stream's bytes as JSON-ready pieces: text where they are UTF-8, base64 where they are not.

    A character split between two chunks is kept whole (its first bytes wait for the next chunk).
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[dict[str, str]]:
        data, self._pending = self._pending + data, b""
        if not data:
            return []
        try:
            return [{"data": data.decode()}]
        except UnicodeDecodeError as e:
            split = e.reason == "unexpected end of data" and len(data) - e.start <= MAX_SPLIT
            if split:
                head, self._pending = data[: e.start], data[e.start :]
                try:
                    return [{"data": head.decode()}] if head else []
                except UnicodeDecodeError:
                    pass
            return [_base64(data)]

    def flush(self) -> list[dict[str, str]]:
        pending, self._pending = self._pending, b""
        return [_base64(pending)] if pending else []


def _base64(data: bytes) -> dict[str, str]:
    return {"data": base64.b64encode(data).decode(), "encoding": "base64"}


def event_lines(chunks: Iterable[Chunk], result: Callable[[], Job]) -> Iterator[bytes]:
    """The NDJSON lines of a job's output, then of its result (read once the output has ended)."""
    pieces = {STDOUT: Utf8Pieces(), STDERR: Utf8Pieces()}
    for kind, data in chunks:
        if kind == BUILD:
            yield _line({"type": "build", "data": data.decode(errors="replace")})
            continue
        for piece in pieces[kind].feed(data):
            yield _line({"type": TYPES[kind], **piece})
    for kind, stream in pieces.items():
        for piece in stream.flush():
            yield _line({"type": TYPES[kind], **piece})
    yield _line({"type": "result", **webhook_body(result())})


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
