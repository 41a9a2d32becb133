"""What a client may see of the host's tools' words: no host paths, no index URLs or credentials."""

from __future__ import annotations

import re

# Lines that only say where pip looks or saves (the index URL, host folders): dropped whole.
_HOST_ONLY = re.compile(r"\s*(Looking in (indexes|links)|Saved |File was already downloaded|User for )")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)]*[^\s'\"<>),.:;]")  # not a closing punctuation
_PATH = re.compile(r"(?<![\w.~\-/])/[^\s'\"<>(),;:]+")
_FILE_NAME = re.compile(r"[\w.+-]+\.(whl|tar\.gz|zip)")


def _url(match: re.Match[str]) -> str:
    """A URL becomes its file name when it names a package file, else <url>: never host, path, query or user."""
    last = match.group(0).split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return last if _FILE_NAME.fullmatch(last) else "<url>"


def _path(match: re.Match[str]) -> str:
    """A path becomes its file name when it names a package file, else <path>."""
    last = match.group(0).rstrip("/").rsplit("/", 1)[-1]
    return last if _FILE_NAME.fullmatch(last) else "<path>"


def redact(text: str) -> str:
    """`text` with URLs and absolute paths reduced to package file names, or to <url> and <path>."""
    return _PATH.sub(_path, _URL.sub(_url, text))


def client_line(line: str) -> str | None:
    """A host tool's output line as a client may see it, or None when it only describes the host."""
    if _HOST_ONLY.match(line):
        return None
    return redact(line)
