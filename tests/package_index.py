"""A PEP 503 package index on loopback serving tiny wheels made on the spot, for offline dependency tests."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from packaging.utils import canonicalize_name


def make_wheel(directory: Path, dist: str, version: str, module: str, source: str) -> Path:
    """Write a pure-Python wheel of `dist` that installs `module` with `source` as its __init__.py."""
    stem = f"{dist.replace('-', '_')}-{version}"
    files = {
        f"{module}/__init__.py": source.encode(),
        f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{stem}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{stem}.dist-info/top_level.txt": f"{module}\n".encode(),
    }
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{stem}.dist-info/RECORD"] = ("\n".join([*record, f"{stem}.dist-info/RECORD,,"]) + "\n").encode()
    path = directory / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _layout(root: Path, wheels: list[tuple[str, Path]]) -> None:
    projects: dict[str, list[Path]] = {}
    for dist, wheel in wheels:
        projects.setdefault(canonicalize_name(dist), []).append(wheel)
    for name, files in projects.items():
        page = root / "simple" / name
        page.mkdir(parents=True, exist_ok=True)
        links = []
        for wheel in files:
            (page / wheel.name).write_bytes(wheel.read_bytes())
            links.append(f'<a href="{wheel.name}">{wheel.name}</a>')
        (page / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")


@contextmanager
def serve_index(root: Path, packages: list[tuple[str, str, str, str]]) -> Iterator[str]:
    """Serve (dist, version, module, source) packages; yields the index URL for PIP_INDEX_URL."""
    build = root / "build"
    build.mkdir(parents=True, exist_ok=True)
    _layout(root / "www", [(d, make_wheel(build, d, v, m, s)) for d, v, m, s in packages])

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root / "www"), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
