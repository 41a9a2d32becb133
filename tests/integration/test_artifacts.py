"""Output files: what a script writes to /sandbox/out comes back with its job, to its owner only, bounded."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app.models import BYTES, Artifact, Job, Limits, Status
from app.services import EXTENSION
from tests.helpers import Api, wait_until
from tests.package_index import serve_index


@pytest.fixture(params=[0, 2], ids=["on-demand", "pooled"])
def api(request: pytest.FixtureRequest, make_app: Callable[..., Flask], base_image: str) -> Api:
    return Api(make_app(base_image=base_image, pool_size=request.param))


WRITE_THREE = [
    "import hashlib",
    "open('out/notes.txt', 'w').write('hello\\n')",
    "open('out/report.html', 'w').write('<script>alert(document.cookie)</script>')",
    "data = bytes(range(256)) * 400",
    "open('out/data.bin', 'wb').write(data)",
    "print(hashlib.sha256(data).hexdigest())",
]


def test_output_files_come_back_listed_and_downloadable(api: Api) -> None:
    r = api.run_json(WRITE_THREE)
    job = r.json
    assert job["status"] == "succeeded", job
    listed = {a["name"]: a for a in job["artifacts"]}
    assert sorted(listed) == ["data.bin", "notes.txt", "report.html"]
    data = bytes(range(256)) * 400
    assert listed["data.bin"]["size"] == len(data)
    assert listed["data.bin"]["sha256"] == job["stdout"].strip() == hashlib.sha256(data).hexdigest()
    assert listed["notes.txt"]["content_type"] == "text/plain"
    assert api.get(f"/status/{job['job_id']}").json["artifacts"] == job["artifacts"]

    got = api.get(listed["data.bin"]["url"])
    assert got.status_code == 200
    assert got.data == data
    html = api.get(listed["report.html"]["url"])
    assert html.mimetype == listed["report.html"]["content_type"] == "application/octet-stream"  # never rendered
    assert html.headers["Content-Disposition"] == 'attachment; filename="report.html"'
    assert html.headers["X-Content-Type-Options"] == "nosniff"
    assert html.headers["Content-Security-Policy"] == "sandbox"
    for artifact in listed.values():  # the job lists the type each file is served with
        assert api.get(artifact["url"]).mimetype == artifact["content_type"]


@pytest.mark.parametrize(
    ("name", "served"),
    [("notes.txt", "text/plain"), ("rows.csv", "text/csv"), ("cfg.json", "application/json"),
     ("chart.png", "image/png"), ("photo.jpg", "image/jpeg"), ("anim.gif", "image/gif"), ("pic.webp", "image/webp"),
     ("report.pdf", "application/pdf"), ("data.bin", BYTES),
     ("page.html", BYTES), ("page.htm", BYTES), ("logo.svg", BYTES), ("app.js", BYTES), ("page.xhtml", BYTES),
     ("feed.xml", BYTES), ("style.css", BYTES), ("rows.csv.gz", BYTES), ("data.parquet", BYTES)],
)  # fmt: skip
def test_only_passive_types_are_served_as_themselves_anything_else_as_bytes(name: str, served: str) -> None:
    assert Artifact.of(name, b"x").content_type == served


def test_a_file_listed_before_there_were_passive_types_is_listed_and_served_as_bytes(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    api, store = Api(app), app.extensions[EXTENSION].store
    job = Job("0" * 23 + "1", api.name, Status.SUCCEEDED, Limits(30, 256, 1.0), "main.py", created_at=time.time(),
              finished_at=time.time(), artifacts=[Artifact.of("page.html", b"<b>hi</b>")])  # fmt: skip
    store.save_job(job)
    store.save_artifacts(job.id, [(job.artifacts[0], b"<b>hi</b>")])
    with sqlite3.connect(app.extensions[EXTENSION].settings.data_dir / "runner.sqlite3") as conn:
        listed = json.dumps([{**job.artifacts[0].__dict__, "content_type": "text/html"}])  # as an older release did
        conn.execute("UPDATE jobs SET artifacts = ? WHERE id = ?", (listed, job.id))
    conn.close()
    (artifact,) = api.get(f"/status/{job.id}").json["artifacts"]
    assert api.get(artifact["url"]).mimetype == artifact["content_type"] == BYTES


def test_output_files_are_their_owners_only(api: Api) -> None:
    job = api.run_json(WRITE_THREE).json
    url = job["artifacts"][0]["url"]
    other = Api(api.app, "other-client")
    r = other.get(url)
    assert (r.status_code, r.json["error"]["code"]) == (404, "not_found")
    assert api.get(f"/status/{job['job_id']}/artifacts/missing.txt").status_code == 404
    assert api.get(f"/status/{job['job_id']}/artifacts/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_output_files_go_with_their_job(api: Api) -> None:
    job = api.run_json(WRITE_THREE).json
    assert api.delete(f"/jobs/{job['job_id']}").status_code == 200
    store = api.app.extensions[EXTENSION].store
    assert store.get_artifact(job["job_id"], "notes.txt") is None


def test_links_devices_fifos_and_folders_are_left_out_saying_why(api: Api) -> None:
    r = api.run_json(
        [
            "import os",
            "os.symlink('/etc/passwd', 'out/passwd')",
            "os.mkfifo('out/pipe')",
            "os.mkdir('out/nested')",
            "open('out/nested/inner.txt', 'w').write('x')",
            "open('out/kept.txt', 'w').write('kept')",
        ]
    )
    job = r.json
    assert job["status"] == "succeeded", job
    assert [a["name"] for a in job["artifacts"]] == ["kept.txt"]
    assert "passwd: not a regular file" in job["message"]
    assert "pipe: not a regular file" in job["message"]
    assert "nested: a folder" in job["message"]


def test_thousands_of_entries_left_out_are_named_twenty_and_counted(api: Api) -> None:
    r = api.run_json(
        ["import os", "for n in range(5000): os.mkdir(f'out/d{n:04}')", "open('out/kept.txt', 'w').write('k')"]
    )
    job = r.json
    assert job["status"] == "succeeded", job
    assert [a["name"] for a in job["artifacts"]] == ["kept.txt"]
    assert "d0000: a folder" in job["message"] and "d0019: a folder" in job["message"]
    assert "d0020" not in job["message"]
    assert job["message"].endswith("; and 4980 more.")
    assert len(job["message"]) < 2000


def test_an_out_folder_replaced_by_a_link_is_not_followed(api: Api) -> None:
    r = api.run_json(["import os", "os.rmdir('out')", "os.symlink('/etc', 'out')"])
    assert r.json["status"] == "succeeded", r.json
    assert r.json["artifacts"] == []


def test_bounds_keep_the_first_files_and_name_the_rest(make_app: Callable[..., Flask], base_image: str) -> None:
    api = Api(make_app(base_image=base_image, max_artifacts=2, max_artifact_bytes=10_000))
    r = api.run_json(
        [
            "open('out/a.txt', 'w').write('a' * 6000)",
            "open('out/b.txt', 'w').write('b' * 6000)",  # over the bytes left
            "open('out/c.txt', 'w').write('c')",
            "open('out/d.txt', 'w').write('d')",  # over the count
        ]
    )
    job = r.json
    assert job["status"] == "succeeded", job
    assert [a["name"] for a in job["artifacts"]] == ["a.txt", "c.txt"]
    assert "b.txt: over the limit on output file bytes" in job["message"]
    assert "d.txt: over the limit on the number of output files" in job["message"]


def test_data_files_go_in_next_to_the_script(api: Api) -> None:
    files = [
        (b"import csv, json\nrows = list(csv.reader(open('data.csv')))\nprint(rows, json.load(open('cfg.json')))\n",
         "main.py"),
        (b"a,b\n1,2\n", "data.csv"),
        (b'{"k": 1}', "cfg.json"),
        (b"import not_a_real_package_xyz\n", "notes.txt"),  # not Python: its imports are not looked for
    ]  # fmt: skip
    data: dict[str, Any] = {"files[]": [(io.BytesIO(c), n) for c, n in files]}
    r: Any = api.http.post("/run-file", data=data, headers=api.headers({"Accept": "application/json"}))
    assert r.json["status"] == "succeeded", r.json
    assert r.json["stdout"] == "[['a', 'b'], ['1', '2']] {'k': 1}\n"
    assert r.json["build_log"] == ""


MATPLOTLIB = "matplotlib==3.10.*"


@pytest.fixture(scope="module")
def real_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A loopback index of matplotlib's real wheels and their dependencies, downloaded by the host's pip."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", MATPLOTLIB, "--only-binary=:all:", "--dest", str(wheels), "-q"],
        check=True,
        timeout=600,
    )
    with serve_index(tmp_path_factory.mktemp("index"), [], wheels=sorted(Path(wheels).glob("*.whl"))) as url:
        yield url


def test_a_matplotlib_chart_comes_back_byte_identical(
    make_app: Callable[..., Flask], base_image: str, real_index: str, monkeypatch: pytest.MonkeyPatch, docker_client
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", real_index)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    api = Api(make_app(base_image=base_image, image_prefix="datapane-artifacts-test"))
    try:
        r = api.run_json(
            [
                "import hashlib",
                "import matplotlib",
                "matplotlib.use('Agg')",
                "import matplotlib.pyplot as plt",
                "plt.plot([1, 2, 3], [2, 4, 1])",
                "plt.savefig('out/chart.png')",
                "print(hashlib.sha256(open('out/chart.png', 'rb').read()).hexdigest())",
            ],
            timeout=120,
            memory_mb=512,
        )
        job = r.json
        assert job["status"] == "succeeded", (job["message"], job["stderr"][-2000:], job["build_log"][-2000:])
        (chart,) = job["artifacts"]
        assert (chart["name"], chart["content_type"]) == ("chart.png", "image/png")
        png = api.get(chart["url"]).data
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert hashlib.sha256(png).hexdigest() == chart["sha256"] == job["stdout"].strip()
        assert len(png) == chart["size"]
    finally:
        for image in docker_client.api.images():
            for tag in image.get("RepoTags") or []:
                if tag.startswith("datapane-artifacts-test"):
                    docker_client.api.remove_image(tag, force=True)


def test_over_the_store_budget_the_oldest_outputs_and_files_go_and_the_jobs_say_so(
    make_app: Callable[..., Flask], base_image: str
) -> None:
    app = make_app(base_image=base_image, store_mb=1)
    api = Api(app)
    svc = app.extensions[EXTENSION]
    svc.start_store_budget()
    big = ["open('out/a.bin', 'wb').write(b'a' * 300_000)", "print('x' * 300_000)"]  # ~600 KB stored per job
    ids = []
    for _ in range(3):
        r = api.run_json(big)
        assert r.json["status"] == "succeeded", r.json
        ids.append(r.json["job_id"])
    assert wait_until(lambda: svc.store.stored_bytes() <= 2**20)
    oldest, newest = api.get(f"/status/{ids[0]}").json, api.get(f"/status/{ids[-1]}").json
    assert oldest["output_evicted"] is True and oldest["stdout"] == "" and oldest["status"] == "succeeded"
    gone = api.get(f"/status/{ids[0]}/artifacts/a.bin")
    assert gone.status_code == 404 and "budget" in gone.json["error"]["message"]
    assert newest["output_evicted"] is False and newest["stdout"] == "x" * 300_000 + "\n"
    assert api.get(f"/status/{ids[-1]}/artifacts/a.bin").data == b"a" * 300_000
    metrics = svc.metrics.registry
    assert (metrics.get_sample_value("runner_outputs_evicted_total") or 0) >= 1
    assert (metrics.get_sample_value("runner_store_bytes") or 0) <= 2**20
