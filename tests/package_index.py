"""A PEP 503 package index on loopback serving tiny wheels made on the spot, for the dependency tests and the
benchmark (no network needed)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name


def make_wheel(directory: Path, dist: str, version: str, module: str, source: str, payload_mb: int = 0) -> Path:
    """Write a pure-Python wheel of `dist` that installs `module` with `source` as its __init__.py
    (and `payload_mb` MiB of incompressible data beside it)."""
    stem = f"{dist.replace('-', '_')}-{version}"
    files = {
        f"{module}/__init__.py": source.encode(),
        **({f"{module}/payload.bin": os.urandom(payload_mb * 2**20)} if payload_mb else {}),
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


class PackageIndex:
    """A PEP 503 index on 127.0.0.1 of (dist, version, module, source) packages; counts wheel downloads.

    `big` gives some distributions a payload of that many MiB; pages of `slow` distributions answer after 60 s;
    `wheels` are real wheel files served as they are (named by their file names).
    """

    def __init__(
        self,
        root: Path,
        packages: list[tuple[str, str, str, str]],
        big: dict[str, int] | None = None,
        slow: Iterable[str] = (),
        wheels: Iterable[Path] = (),
    ) -> None:
        build = root / "build"
        build.mkdir(parents=True, exist_ok=True)
        big = big or {}
        made = [(d, make_wheel(build, d, v, m, s, big.get(d, 0))) for d, v, m, s in packages]
        _layout(root / "www", made + [(w.name.split("-")[0], w) for w in wheels])
        slow_paths = tuple(f"/simple/{canonicalize_name(name)}/" for name in slow)
        index = self
        self.downloads = 0

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root / "www"), **kwargs)

            def do_GET(self) -> None:
                if self.path.startswith(slow_paths):
                    time.sleep(60)
                if self.path.split("?")[0].endswith(".whl"):
                    index.downloads += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/simple"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> PackageIndex:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def serve_index(
    root: Path,
    packages: list[tuple[str, str, str, str]],
    big: dict[str, int] | None = None,
    slow: Iterable[str] = (),
    wheels: Iterable[Path] = (),
) -> Iterator[str]:
    """Serve packages as PackageIndex does; yields the index URL for PIP_INDEX_URL."""
    with PackageIndex(root, packages, big, slow, wheels) as index:
        yield index.url
