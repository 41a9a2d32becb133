"""A tiny pure-python wheel, written by hand, served from a PEP 503 simple index on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NAME = "bench-dep"
MODULE = "bench_dep"
VERSION = "1.0"
REQUIREMENT = f"{NAME}=={VERSION}"
IMPORT_CODE = f"import {MODULE}; print({MODULE}.GREETING)"

_FILES = {
    f"{MODULE}/__init__.py": '"""Benchmark dependency."""\nGREETING = "hello world"\n',
    f"{MODULE}-{VERSION}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n",
    f"{MODULE}-{VERSION}.dist-info/WHEEL": (
        "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ),
}


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(directory: Path) -> Path:
    """Write bench_dep-1.0-py3-none-any.whl into `directory`; return its path."""
    path = directory / f"{MODULE}-{VERSION}-py3-none-any.whl"
    record_name = f"{MODULE}-{VERSION}.dist-info/RECORD"
    rows = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for name, text in _FILES.items():
            data = text.encode()
            whl.writestr(name, data)
            rows.append(f"{name},{_record_hash(data)},{len(data)}")
        whl.writestr(record_name, "\n".join([*rows, f"{record_name},,"]) + "\n")
    return path


def build_index(root: Path) -> None:
    """Lay out root/simple/index.html and root/simple/bench-dep/{index.html,wheel}."""
    project = root / "simple" / NAME
    project.mkdir(parents=True)
    wheel = write_wheel(project)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "simple" / "index.html").write_text(f'<html><body><a href="{NAME}/">{NAME}</a></body></html>\n')
    link = f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>'
    (project / "index.html").write_text(f"<html><body>{link}</body></html>\n")


class _Handler(SimpleHTTPRequestHandler):
    """Serves files quietly and counts wheel downloads."""

    downloads = 0

    def do_GET(self) -> None:
        if self.path.split("?")[0].endswith(".whl"):
            type(self).downloads += 1
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class PackageIndex:
    """The index server, running on a daemon thread; a context manager."""

    def __init__(self, root: Path) -> None:
        build_index(root)
        handler = type("Handler", (_Handler,), {"downloads": 0})
        self._handler = handler
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/simple"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def downloads(self) -> int:
        return self._handler.downloads

    def __enter__(self) -> PackageIndex:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
