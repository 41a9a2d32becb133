"""What a client may see of the host's tools' words: no host paths, no index URLs or credentials."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

# Lines that only say where pip looks or saves (the index URL, host folders): dropped whole.
_HOST_ONLY = re.compile(r"\s*(Looking in (indexes|links)|Saved |File was already downloaded|User for )")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)]*[^\s'\"<>),.:;]")  # not a closing punctuation
_PATH = re.compile(r"(?<![\w.~\-/])/[^\s'\"<>(),;:]+")
_HOST_ARG = re.compile(r"\bhost='[^']*'")  # urllib3's words: HTTPSConnectionPool(host='…', port=…)
_PORT_ARG = re.compile(r"\bport=\d+")
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
    """`text` without host details.

    URLs and absolute paths become package file names (or <url>, <path>); the configured index's host names,
    and any `host=`/`port=` a library quotes, become placeholders.
    """
    text = _PATH.sub(_path, _URL.sub(_url, text))
    text = _PORT_ARG.sub("port=<port>", _HOST_ARG.sub("host='<host>'", text))
    for host in index_hosts():  # with whatever port and path follow it
        text = re.sub(rf"{re.escape(host)}(:\d+)?(/[^\s'\"]*)?", "<index>", text)
    return text


def index_hosts(env: Mapping[str, str] | None = None) -> list[str]:
    """Host names of the configured package indexes (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST)."""
    env = os.environ if env is None else env
    hosts: set[str] = set()
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
        for word in env.get(name, "").split():
            host = urlsplit(word if "://" in word else f"//{word}").hostname
            if host:
                hosts.add(host)
    return sorted(hosts, key=len, reverse=True)


def client_line(line: str) -> str | None:
    """A host tool's output line as a client may see it, or None when it only describes the host."""
    if _HOST_ONLY.match(line):
        return None
    return redact(line)
