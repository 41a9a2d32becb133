"""What a script is given besides its files: stdin, arguments and environment variables, pooled and on demand."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.services import EXTENSION
from tests.helpers import Api


@pytest.fixture(params=[0, 2], ids=["on-demand", "pooled"])
def api(request: pytest.FixtureRequest, make_app: Callable[..., Flask], base_image: str) -> Api:
    return Api(make_app(base_image=base_image, pool_size=request.param))


ECHO = [
    "import os, sys",
    "data = sys.stdin.read()",
    "print(repr(data), sys.argv[1:], os.environ.get('GREETING'))",
]


def test_stdin_args_and_env_reach_the_script(api: Api) -> None:
    r = api.run_json(ECHO, stdin="line one\nline two\n", args=["--n", "3", "ünï cödé"], env={"GREETING": "hi there"})
    assert r.json["status"] == "succeeded", r.json
    assert r.json["stdout"] == "'line one\\nline two\\n' ['--n', '3', 'ünï cödé'] hi there\n"


def test_without_stdin_the_script_reads_an_immediate_eof(api: Api) -> None:
    r = api.run_json(ECHO)
    assert r.json["stdout"] == "'' [] None\n"
    r = api.run_json(["import sys", "print(sys.argv)", "print(input())"], stdin="")
    assert r.json["status"] == "failed"
    assert r.json["stdout"] == "['main.py']\n"
    assert "EOFError" in r.json["stderr"]


def test_large_stdin_is_fed_while_the_script_writes(api: Api) -> None:
    """Both directions at once: a script echoing 1 MiB would deadlock a supervisor that wrote stdin first."""
    data = "x" * 1023 + "\n"
    r = api.run_json(
        [
            "import sys",
            "n = 0",
            "for line in sys.stdin:",
            "    n += len(line)",
            "    sys.stderr.write(line)",
            "print(n)",
        ],
        stdin=data * 900,
    )
    assert r.json["status"] == "succeeded", r.json["message"]
    assert r.json["stdout"] == f"{1024 * 900}\n"
    assert len(r.json["stderr"]) == 1024 * 900


def test_a_script_that_ignores_its_stdin_still_ends(api: Api) -> None:
    r = api.run_json("print('done')", stdin="y\n" * 500_000)
    assert (r.json["status"], r.json["stdout"]) == ("succeeded", "done\n")


def test_the_services_environment_never_reaches_the_script(api: Api, base_image: str, docker_client) -> None:
    r = api.run_json(["import os", "print(sorted(os.environ))"], env={"A_SECRET": "s3cret"})
    names = set(json.loads(r.json["stdout"].replace("'", '"')))
    image_env = {v.split("=")[0] for v in docker_client.api.inspect_image(base_image)["Config"]["Env"]}
    ours = {"A_SECRET", "HOME", "HOSTNAME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    assert names == ours | image_env, names
    assert not names & {"RUNNER_DATABASE_URL", "PIP_FIND_LINKS", "PIP_CERT", "CI", "DOCKER_HOST"}


def test_env_values_are_never_returned_nor_kept(api: Api) -> None:
    r = api.run_json("print('ok')", env={"TOKEN": "very-secret-value"})
    job_id = r.json["job_id"]
    assert "very-secret-value" not in r.get_data(as_text=True)
    assert "very-secret-value" not in api.get(f"/status/{job_id}").get_data(as_text=True)
    assert "very-secret-value" not in api.get("/jobs").get_data(as_text=True)
    store = api.app.extensions[EXTENSION].store
    found = store.get_job_and_spec(job_id)
    assert found is not None and found[1] is None  # the spec, with its variables, went when the job ended


def test_in_the_embedded_mode_a_scripts_variables_never_reach_the_disk(api: Api) -> None:
    """The in-process executor is handed the spec: the store never holds it, not even while the job runs."""
    secret = "disk-must-never-see-" + "x" * 16
    r = api.run_json(["import time", "time.sleep(1)", "print('ok')"], query="?async=1", env={"TOKEN": secret})
    job_id = r.json["job_id"]
    svc = api.app.extensions[EXTENSION]
    while True:
        found = svc.store.get_job_and_spec(job_id)
        assert found is not None and found[1] is None, found[0].status  # queued, running and ended alike
        if found[0].status.finished:
            break
        time.sleep(0.05)
    assert found[0].status.value == "succeeded"
    data_dir = Path(svc.settings.data_dir)
    for path in data_dir.rglob("*"):  # the database, its write-ahead log, anything else the service wrote
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_run_file_takes_the_same_fields_as_form_fields(api: Api) -> None:
    data = {
        "files[]": (io.BytesIO("\n".join(ECHO).encode()), "main.py"),
        "stdin": "from a form",
        "args": json.dumps(["a", "b"]),
        "env": json.dumps({"GREETING": "hello"}),
    }
    r: Any = api.http.post("/run-file", data=data, headers=api.headers({"Accept": "application/json"}))
    assert r.json["status"] == "succeeded", r.json
    assert r.json["stdout"] == "'from a form' ['a', 'b'] hello\n"


def test_a_form_stdin_may_be_as_large_as_a_json_one(api: Api) -> None:
    """Past Flask's own limit on a form's text part (500 kB): up to RUNNER_MAX_FILE_BYTES, as in a JSON body."""
    script = FileStorage(io.BytesIO(b"import sys\nprint(len(sys.stdin.read()))\n"), "main.py")
    boundary, body = encode_multipart({"files[]": script, "stdin": "x" * 600_000})  # in memory, not a temp file
    headers = api.headers({"Accept": "application/json", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    r: Any = api.http.post("/run-file", data=body, headers=headers)
    assert (r.json["status"], r.json["stdout"]) == ("succeeded", "600000\n"), r.json
