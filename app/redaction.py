"""What a client may see of the host's tools' words: no host paths, no index URLs or credentials."""

from __future__ import annotations

import re

# Lines that only say where pip looks or saves (the index URL, host folders): dropped whole.
_HOST_ONLY = re.compile(r"\s*(Looking in (indexes|links)|Saved |File was already downloaded|User for )")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)]+")
_PATH = re.compile(r"(?<![\w.~\-/])/[^\s'\"<>(),;:]+")
_FILE_NAME = re.compile(r"[\w.+-]+\.(whl|tar\.gz|zip)")


def _url(match: re.Match[str]) -> str:
    """A URL becomes its file name when it names one (a wheel), else <url>: never host, path, query or user."""
    last = match.group(0).split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return last if _FILE_NAME.fullmatch(last) else "<url>"


def redact(text: str) -> str:
    """`text` with URLs reduced to file names and absolute paths replaced by <path>."""
    return _PATH.sub("<path>", _URL.sub(_url, text))


def client_line(line: str) -> str | None:
    """A host tool's output line as a client may see it, or None when it only describes the host."""
    if _HOST_ONLY.match(line):
        return None
    return redact(line)
