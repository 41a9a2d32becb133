"""What clients see of host tools' output: package names yes; host paths, index URLs and credentials never."""

from __future__ import annotations

import pytest

from app.redaction import client_line, redact


@pytest.mark.parametrize(
    "line",
    [
        "Looking in indexes: https://user:secret@pypi.internal.example/simple",
        "Looking in links: /opt/wheels",
        "Saved /tmp/datapane-build-x/wheels/six-1.17.0-py2.py3-none-any.whl",
        "File was already downloaded /root/wheels/six-1.17.0-py2.py3-none-any.whl",
    ],
)
def test_lines_that_only_describe_the_host_are_dropped(line: str) -> None:
    assert client_line(line) is None


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("Collecting greetpkg==1.0", "Collecting greetpkg==1.0"),
        (
            "  Downloading https://u:tok@files.example/packages/ab/six-1.17.0-py2.py3-none-any.whl?sig=1 (11 kB)",
            "  Downloading six-1.17.0-py2.py3-none-any.whl (11 kB)",
        ),
        ("Processing /tmp/build/wheels/six-1.17.0-py2.py3-none-any.whl", "Processing six-1.17.0-py2.py3-none-any.whl"),
        (
            "WARNING: The directory '/root/.cache/pip' is not writable",
            "WARNING: The directory '<path>' is not writable",
        ),
        ("ERROR: Could not fetch URL http://127.0.0.1:8080/simple/x/: 404", "ERROR: Could not fetch URL <url>: 404"),
        ("Step 4/10 : COPY wheels/ /tmp/build/wheels/", "Step 4/10 : COPY wheels/ <path>"),
    ],
)
def test_urls_and_paths_become_package_names_or_placeholders(line: str, shown: str) -> None:
    assert client_line(line) == shown


def test_credentials_and_hosts_never_survive() -> None:
    text = redact("pip failed: https://alice:hunter2@index.corp:8443/simple/pkg/ and /home/svc/.netrc")
    assert "hunter2" not in text and "index.corp" not in text and "/home" not in text


def test_the_configured_index_host_and_quoted_hosts_and_ports_never_survive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://devpi.corp.internal:3141/root/pypi/+simple/")
    monkeypatch.setenv("PIP_TRUSTED_HOST", "mirror.corp.internal:8080")
    lines = [
        "HTTPSConnectionPool(host='devpi.corp.internal', port=3141): Max retries exceeded",
        "The repository located at devpi.corp.internal is not a trusted or secure host",
        "Credentials not correct for devpi.corp.internal:3141/root/pypi",
        "WARNING: Retrying after connection broken by mirror.corp.internal",
    ]
    for line in lines:
        shown = client_line(line) or ""
        assert "corp.internal" not in shown and "3141" not in shown, shown
