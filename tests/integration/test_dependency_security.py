"""A client's requirements reach pip only as plain index names, pip never runs on the host for them, and what
the client sees of a build names nothing of the host."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from app.errors import BuildFailed
from app.images.downloads import DownloadRequest, _DownloadBox, download_wheels
from app.images.wheels import wheel_platforms
from app.sandbox.container import LABEL
from app.services import EXTENSION
from tests.helpers import Api, host_docker_proxy, proxy_variables, wait_until
from tests.package_index import serve_index
from tests.unit.test_deps import HOSTILE

PACKAGES = [
    ("greetpkg", "1.0", "greetpkg", "VERSION = '1.0'\n"),
    ("otherpkg", "1.0", "otherpkg", "NAME = 'other'\n"),
    ("bigpkg", "1.0", "bigpkg", "BIG = True\n"),
    ("slowpkg", "1.0", "slowpkg", "SLOW = True\n"),
]
BIG_MB = 96


@pytest.fixture(scope="module")
def index_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_index(tmp_path_factory.mktemp("index"), PACKAGES, big={"bigpkg": BIG_MB}, slow=["slowpkg"]) as url:
        yield url


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A project folder whose build backend writes a marker file when pip so much as asks it for metadata."""
    project = Path("/tmp") / f"planted-{uuid.uuid4().hex[:8]}" / "someproject"
    project.mkdir(parents=True)
    marker = project.parent / "MARKER"
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "evil"\nversion = "1.0"\n'
    )
    (project / "backend.py").write_text(f"open({str(marker)!r}, 'w').write('built on the host')\n")
    (project / "setup.py").write_text(f"open({str(marker)!r}, 'w').write('built on the host')\n")
    project.parent.chmod(0o777)
    yield project, marker
    import shutil

    shutil.rmtree(project.parent, ignore_errors=True)


@pytest.fixture
def deps_api(make_app, base_image: str, index_url: str, docker_client: docker.DockerClient, monkeypatch):
    """Make an Api whose pip sees only the test index, with its own image prefix (removed afterwards)."""
    monkeypatch.setenv("PIP_INDEX_URL", index_url)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    prefix = f"datapane-sec-test-{uuid.uuid4().hex[:8]}"

    def make(client_name: str = "test-client", **overrides: object) -> Api:
        app = make_app(base_image=base_image, image_prefix=prefix, **overrides)
        return Api(app, client_name)

    yield make
    for image in docker_client.api.images():
        for tag in image.get("RepoTags") or []:
            if tag.startswith(prefix):
                docker_client.api.remove_image(tag, force=True)


def spellings(project: Path) -> list[str]:
    relative = "../../../../../../.." + str(project)
    return [
        f"evil==={relative}",
        f"evil==={project}",
        f"EVIL === {project}",
        f"evil[extra]==={relative}",
        f"evil @ file://{project}",
        str(project),
        relative,
        f"evil==={relative} ; python_version > '3'",
        f"evil==1.0 ; sys_platform == '{project}'",
        f"./{relative}",
        f"evil==={relative}\x00",
        f"evil===${{HOME}}{project}",
    ]


def test_every_hostile_spelling_is_refused_and_nothing_is_built(deps_api, planted) -> None:
    project, marker = planted
    api = deps_api()
    for line in [*spellings(project), *HOSTILE]:
        r = api.run_json("print(1)", requirements=[line])
        assert r.status_code == 400, line
        assert r.json["error"]["code"] == "validation_failed"
        upload = {
            "files[]": [(io.BytesIO(b"print(1)\n"), "main.py"), (io.BytesIO(f"{line}\n".encode()), "requirements.txt")]
        }
        r = api.http.post("/run-file", data=upload, headers=api.headers({"Accept": "application/json"}))
        assert r.status_code == 400, line
    assert api.get("/jobs").json["jobs"] == []  # a refused request records nothing
    assert not marker.exists()


def test_an_imported_module_never_names_a_host_folder(deps_api, planted) -> None:
    _project, marker = planted
    api = deps_api()
    r = api.run_json("import someproject\nimport évil\n")
    assert r.json["status"] == "build_failed"
    assert "someproject" in r.json["message"]
    assert not marker.exists()


def test_pip_in_the_download_container_cannot_reach_a_host_folder(planted, base_image, docker_client, tmp_path) -> None:
    """Defence in depth: even a string that skipped validation finds no host folder to build."""
    project, marker = planted
    platforms = tuple(wheel_platforms(docker_client))
    for line in spellings(project)[:7]:
        request = DownloadRequest((line,), platforms, budget_mb=16, deadline=time.monotonic() + 60)
        with pytest.raises(BuildFailed):
            download_wheels(
                docker_client, base_image, request, tmp_path / "out.tar",
                labels={f"{LABEL}.test": "1"}, log=lambda _line: None, on_cancel=lambda _cb: None,
            )  # fmt: skip
    assert not marker.exists()
    assert not docker_client.api.containers(all=True, filters={"label": f"{LABEL}.test"})


def test_the_download_container_gets_the_index_settings_and_not_the_hosts_docker_proxies(
    base_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_docker_proxy(tmp_path, monkeypatch)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    client = docker.from_env()
    try:
        request = DownloadRequest(("six",), ("any",), budget_mb=16, deadline=time.monotonic() + 60)
        box = _DownloadBox(client, base_image, request, {f"{LABEL}.test": "1"})
        try:
            env = client.api.inspect_container(box.container_id)["Config"]["Env"]
        finally:
            box.remove()
    finally:
        client.close()
    assert "PIP_INDEX_URL=http://127.0.0.1:9/simple" in env
    assert not proxy_variables(env), env


def test_build_logs_name_no_host_path_and_no_index_url(deps_api, index_url: str) -> None:
    api = deps_api()
    ok = api.run_json("import greetpkg\nprint(greetpkg.VERSION)").json
    failed = api.run_json("import nosuchpkgxyz").json
    assert ok["status"] == "succeeded" and failed["status"] == "build_failed"
    assert "greetpkg" in ok["build_log"] and "nosuchpkgxyz" in failed["build_log"]
    for job in (ok, failed):
        seen = job["build_log"] + job["message"]
        for host_detail in ("127.0.0.1", index_url, "http://", "/tmp/", "/root", "Looking in indexes", "Saved "):
            assert host_detail not in seen, (host_detail, seen)


def test_downloads_past_the_budget_stop_cleanly(deps_api) -> None:
    api = deps_api(max_download_mb=BIG_MB // 2)
    r = api.run_json("import bigpkg").json
    assert r["status"] == "build_failed"
    assert f"download budget of {BIG_MB // 2} MiB" in r["message"]
    assert "RUNNER_MAX_DOWNLOAD_MB" in r["message"]


def test_a_large_wheel_set_does_not_grow_the_service_memory(deps_api) -> None:
    api = deps_api()
    api.run_json("print('warm')")  # the base image's probe and the app's own start-up are not measured
    Path("/proc/self/clear_refs").write_text("5")  # reset this process's peak RSS (the service runs in it)
    before = _rss_kib("VmRSS")
    r = api.run_json("import bigpkg\nprint(bigpkg.BIG)").json
    grown_mib = (_rss_kib("VmHWM") - before) / 1024
    assert r["status"] == "succeeded", r
    assert grown_mib < BIG_MB / 4, f"peak RSS grew by {grown_mib:.0f} MiB for a {BIG_MB} MiB wheel"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def cancel_and_wait(api: Api, job_id: str, within_s: float) -> None:
    """Cancel a running job and check that it ends as cancelled within `within_s` seconds."""
    assert api.delete(f"/jobs/{job_id}").json["result"] == "cancelled"
    ended = wait_until(lambda: api.get(f"/status/{job_id}").json["status"] != "running", within_s)
    assert ended, f"the job went on for {within_s} s after the cancel"
    assert api.get(f"/status/{job_id}").json["status"] == "cancelled"


def test_cancel_stops_the_download_at_once(deps_api, docker_client) -> None:
    api = deps_api()
    job_id = api.run_json("import slowpkg", query="?async=1").json["job_id"]
    label = {"label": [f"{LABEL}.job={job_id}", f"{LABEL}.purpose=download"]}
    assert wait_until(lambda: docker_client.api.containers(filters=label), 30), "no download container started"
    time.sleep(1)  # pip is now waiting on the slow index
    cancel_and_wait(api, job_id, within_s=10)
    assert not docker_client.api.containers(all=True, filters=label)


def test_cancel_stops_the_image_build_at_once(deps_api, docker_client, monkeypatch) -> None:
    from app.images import client_images

    slow = client_images.DEPS_DOCKERFILE.replace("RUN python -m pip", "RUN sleep 120\nRUN python -m pip")
    monkeypatch.setattr(client_images, "DEPS_DOCKERFILE", slow)  # a build step that takes long, after the label
    api = deps_api()
    job_id = api.run_json("import otherpkg", query="?async=1").json["job_id"]

    def step_containers() -> list[str]:
        return [c["Id"] for c in docker_client.api.containers(all=True) if "sleep 120" in c["Command"]]

    assert wait_until(lambda: bool(step_containers()), 60), "no build step started"
    cancel_and_wait(api, job_id, within_s=15)
    assert wait_until(lambda: not step_containers(), 10), "the build's step container was left behind"


def test_a_new_image_evicts_only_its_own_clients_least_recently_used(deps_api, docker_client) -> None:
    alice = deps_api("alice", client_max_images=1)
    bob = Api(alice.app, "bob")
    assert bob.run_json("import greetpkg").json["status"] == "succeeded"
    assert alice.run_json("import greetpkg").json["status"] == "succeeded"
    assert alice.run_json("import otherpkg").json["status"] == "succeeded"
    prefix = alice.app.extensions[EXTENSION].settings.image_prefix
    tags = {t for i in docker_client.api.images() for t in i.get("RepoTags") or [] if t.startswith(prefix)}
    owners = sorted(t.split(":")[0].removeprefix(prefix + "-") for t in tags)
    assert owners == ["alice", "bob"]  # alice's greetpkg image went; bob's stayed


def test_clients_with_the_same_packages_share_every_layer(deps_api, docker_client) -> None:
    alice = deps_api("alice")
    bob = Api(alice.app, "bob")
    assert alice.run_json("import greetpkg").json["status"] == "succeeded"
    assert bob.run_json("import greetpkg").json["status"] == "succeeded"
    prefix = alice.app.extensions[EXTENSION].settings.image_prefix
    tags = [t for i in docker_client.api.images() for t in i.get("RepoTags") or [] if t.startswith(prefix)]
    layers = [docker_client.api.inspect_image(t)["RootFS"]["Layers"] for t in sorted(tags)]
    assert len(layers) == 2 and layers[0] == layers[1]  # Docker's build cache: one copy on disk


def test_an_image_larger_than_the_whole_cache_is_refused(deps_api) -> None:
    api = deps_api(image_cache_mb=BIG_MB // 2)
    r = api.run_json("import bigpkg").json
    assert r["status"] == "build_failed"
    assert "more than the whole image cache" in r["message"]
