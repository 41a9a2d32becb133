"""Packages a script imports are installed into a cached, content-addressed image; failures name the package."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from app.sandbox.container import LABEL
from app.services import EXTENSION
from tests.helpers import Api, chunks_of, json_of, read_line
from tests.package_index import serve_index

PACKAGES = [
    ("PyYAML", "6.0.99", "yaml", "__version__ = '6.0.99-test'\n"),
    ("beautifulsoup4", "4.99", "bs4", "class BeautifulSoup:\n    version = 'bs4-test'\n"),
    ("greetpkg", "1.0", "greetpkg", "VERSION = '1.0'\n"),
    ("greetpkg", "2.0", "greetpkg", "VERSION = '2.0'\n"),
    ("otherpkg", "1.0", "otherpkg", "NAME = 'other'\n"),
]


@pytest.fixture(scope="module")
def index_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_index(tmp_path_factory.mktemp("index"), PACKAGES) as url:
        yield url


@pytest.fixture
def deps_app(make_app, base_image: str, index_url: str, docker_client: docker.DockerClient, monkeypatch):
    """An app whose pip sees only the test index, with its own image prefix (removed afterwards)."""
    monkeypatch.setenv("PIP_INDEX_URL", index_url)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
    prefix = f"datapane-deps-test-{uuid.uuid4().hex[:8]}"
    made = []

    def make(**overrides: object):
        app = make_app(base_image=base_image, image_prefix=prefix, **overrides)
        made.append(app)
        return app

    yield make
    for image in docker_client.api.images():
        for tag in image.get("RepoTags") or []:
            if tag.startswith(prefix):
                docker_client.api.remove_image(tag, force=True)


def image_id(docker_client: docker.DockerClient, tag: str) -> str:
    return docker_client.api.inspect_image(tag)["Id"]


def client_tags(docker_client: docker.DockerClient, app) -> set[str]:
    prefix = app.extensions[EXTENSION].settings.image_prefix
    return {t for i in docker_client.api.images() for t in i.get("RepoTags") or [] if t.startswith(prefix)}


def sample(api: Api, name: str, **labels: str) -> float | None:
    """A value of the app's metrics, as /metrics shows it."""
    return api.app.extensions[EXTENSION].metrics.registry.get_sample_value(name, labels)


def builds(api: Api, result: str) -> float:
    return sample(api, "runner_image_builds_total", result=result) or 0.0


def test_detected_import_is_installed_with_its_mapped_name(deps_app) -> None:
    api = Api(deps_app())
    r = api.run_json(["import yaml", "from bs4 import BeautifulSoup", "print(yaml.__version__, BeautifulSoup.version)"])
    assert r.json["status"] == "succeeded", r.json
    assert r.json["stdout"] == "6.0.99-test bs4-test\n"
    assert "beautifulsoup4" in r.json["build_log"] and "pyyaml" in r.json["build_log"].lower()


def test_second_run_with_the_same_imports_builds_nothing(deps_app, docker_client) -> None:
    api = Api(deps_app())
    first = api.run_json("import greetpkg\nprint(greetpkg.VERSION)").json
    tags = client_tags(docker_client, api.app)
    second = api.run_json("def f():\n    import greetpkg\n    return greetpkg.VERSION\nprint(f())").json
    assert (first["status"], second["status"]) == ("succeeded", "succeeded")
    assert first["build_log"] and second["build_log"] == ""
    assert client_tags(docker_client, api.app) == tags
    assert len(tags) == 1
    assert builds(api, "built") == 1 and builds(api, "failed") == 0
    assert sample(api, "runner_image_build_duration_seconds_count") == 1


def test_changed_import_set_builds_a_new_image(deps_app, docker_client) -> None:
    api = Api(deps_app())
    api.run_json("import greetpkg")
    (one,) = client_tags(docker_client, api.app)
    r = api.run_json("import greetpkg, otherpkg\nprint(otherpkg.NAME)")
    assert r.json["stdout"] == "other\n"
    tags = client_tags(docker_client, api.app)
    assert len(tags) == 2
    (two,) = tags - {one}
    assert image_id(docker_client, one) != image_id(docker_client, two)


def test_stdlib_only_script_builds_no_dependency_image(deps_app, docker_client) -> None:
    api = Api(deps_app())
    code = "import os, json, sys, collections.abc\nimport flask, requests  # already in the base image\nprint('ok')"
    r = api.run_json(code)
    assert r.json["status"] == "succeeded"
    assert "installing" not in r.json["build_log"]
    assert {t.split(":")[1] for t in client_tags(docker_client, api.app)} == {"nodeps"}


def test_own_uploaded_modules_are_not_installed(deps_app) -> None:
    import io

    api = Api(deps_app())
    data = {
        "files[]": [(io.BytesIO(b"import helper\nprint(helper.X)\n"), "main.py"), (io.BytesIO(b"X = 5\n"), "helper.py")]
    }
    r = api.http.post("/run-file", data=data, headers=api.headers({"Accept": "application/json"}))
    assert json_of(r)["status"] == "succeeded"
    assert json_of(r)["stdout"] == "5\n"
    assert "installing" not in json_of(r)["build_log"]


def test_nonexistent_package_is_build_failed_naming_it(deps_app) -> None:
    api = Api(deps_app())
    r = api.run_json("import nosuchpkgxyz", accept_json=False)
    assert (
        r.data.decode()
        .splitlines()[-1]
        .endswith("build_failed: Could not install 'nosuchpkgxyz': pip found no wheel for it on the package index.")
    )
    job = api.get(f"/status/{r.headers['X-Job-Id']}").json
    assert job["status"] == "build_failed"
    assert "nosuchpkgxyz" in job["message"]
    assert "No matching distribution found for nosuchpkgxyz" in job["build_log"]
    assert builds(api, "failed") == 1 and builds(api, "built") == 0


def test_requirements_field_pins_are_honoured(deps_app) -> None:
    api = Api(deps_app())
    code = "import greetpkg\nprint(greetpkg.VERSION)"
    assert api.run_json(code, requirements=["greetpkg==1.0"]).json["stdout"] == "1.0\n"
    assert api.run_json(code, requirements=["greetpkg==2.0"]).json["stdout"] == "2.0\n"
    assert api.run_json(code).json["stdout"] == "2.0\n"  # detected: latest


def test_uploaded_requirements_txt_overrides_detection(deps_app) -> None:
    import io

    api = Api(deps_app())
    data = {
        "files[]": [
            (io.BytesIO(b"import greetpkg\nprint(greetpkg.VERSION)\n"), "main.py"),
            (io.BytesIO(b"# pinned\ngreetpkg==1.0\n"), "requirements.txt"),
        ]
    }
    r = api.http.post("/run-file", data=data, headers=api.headers({"Accept": "application/json"}))
    assert json_of(r)["status"] == "succeeded", r.json
    assert json_of(r)["stdout"] == "1.0\n"


def test_requirement_options_and_urls_are_refused(deps_app) -> None:
    api = Api(deps_app())
    for bad in (["--index-url=http://evil/"], ["pkg @ https://evil/pkg.whl"], ["not a requirement!"]):
        r = api.run_json("print(1)", requirements=bad)
        assert r.status_code == 400, bad


def test_gc_removes_the_least_recently_used_image_but_never_one_in_use(deps_app, docker_client) -> None:
    api = Api(deps_app(image_cache_size=1))
    api.run_json("import greetpkg")
    (oldest,) = client_tags(docker_client, api.app)
    api.run_json("import otherpkg")  # over budget: the greetpkg image goes
    (newest,) = client_tags(docker_client, api.app)
    assert newest != oldest
    code = ["import otherpkg, time", "print('started', flush=True)", "time.sleep(30)"]
    running = api.run_json(code, query="?async=1").json["job_id"]
    stream = api.http.get(f"/status/{running}/output", headers=api.headers(), buffered=False)
    assert read_line(chunks_of(stream)) == b"started\n"
    api.run_json("import greetpkg")  # over budget, but the otherpkg image is in use
    assert newest in client_tags(docker_client, api.app)
    assert len(client_tags(docker_client, api.app)) == 2
    api.delete(f"/jobs/{running}")
    stream.close()


def test_the_pool_keeps_at_most_its_number_of_hot_images(deps_app, docker_client) -> None:
    app = deps_app(pool_size=1, pool_images=1)
    api = Api(app)
    pool = app.extensions[EXTENSION].pool
    instance = app.extensions[EXTENSION].settings.instance
    label = {"label": [f"{LABEL}.instance={instance}"]}

    def pooled_images() -> set[str]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = {c["ImageID"] for c in docker_client.api.containers(all=True, filters=label)}
            if len(found) == 1 and pool.size() == 1:
                return found
            time.sleep(0.1)
        raise AssertionError("the pool did not settle on one image")

    api.run_json("import greetpkg")
    deps_image = pooled_images()
    api.run_json("print('stdlib only')")  # another image becomes hot: the first one's pool goes
    assert pooled_images() != deps_image


def test_ndjson_shows_the_image_build_before_the_output(deps_app) -> None:
    import json

    api = Api(deps_app())
    r = api.http.post(
        "/run-json", json={"script_name": "main.py", "code": "import greetpkg\nprint(greetpkg.VERSION)"},
        headers=api.headers({"Accept": "application/x-ndjson"}),
    )  # fmt: skip
    events = [json.loads(line) for line in r.data.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "build" and kinds[-1] == "result" and "stdout" in kinds
    assert kinds.index("stdout") > max(i for i, k in enumerate(kinds) if k == "build")
    assert any("greetpkg" in e["data"] for e in events if e["type"] == "build")
    assert events[-1]["status"] == "succeeded"
