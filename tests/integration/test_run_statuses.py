"""Every status a run can end in, produced by a real script in a real container."""

from __future__ import annotations

import docker
import pytest

from tests.helpers import Api, json_of, registered_runtime


@pytest.fixture(params=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> str:
    """Every check here holds under runc and under gVisor (runsc), except where marked with the reason."""
    return registered_runtime(docker_client, request.param)


def test_hello_world_succeeds(api: Api) -> None:
    r = api.run_json(['print("hello world")'])
    assert r.status_code == 200
    body = r.json
    assert body["status"] == "succeeded"
    assert body["exit_code"] == 0
    assert body["stdout"] == "hello world\n"
    assert body["stderr"] == ""
    assert body["client"] == "test-client"
    assert body["limits"] == {"timeout": 30.0, "memory_mb": 256, "cpus": 1.0}
    assert isinstance(body["duration_ms"], int)
    assert r.headers["X-Job-Id"] == body["job_id"]


def test_seed_json_example_prints_its_expected_output(api: Api) -> None:
    code = [
        "import flask, marshmallow, os, zipp, docker,time",
        'print("hello world")',
        'os.chdir("/")',
        "print(os.getcwd())",
        'print("goodbye world")',
    ]
    r = api.run_json(code, client="test-client")
    assert r.json["status"] == "succeeded", r.json
    assert r.json["stdout"] == "hello world\n/\ngoodbye world\n"


def test_raising_script_fails_with_its_exit_code_and_traceback(api: Api) -> None:
    r = api.run_json("raise SystemExit(3)")
    assert (r.json["status"], r.json["exit_code"]) == ("failed", 3)
    r = api.run_json("raise ValueError('boom')")
    assert r.json["status"] == "failed"
    assert r.json["exit_code"] == 1
    assert "ValueError: boom" in r.json["stderr"]


def test_infinite_loop_is_timed_out(api: Api) -> None:
    r = api.run_json("while True: pass", timeout=1)
    assert r.json["status"] == "timed_out"
    assert "time limit of 1 s" in r.json["message"]
    assert r.json["duration_ms"] < 10_000


def test_sleeping_script_is_timed_out(api: Api) -> None:
    r = api.run_json(["import time", "print('before', flush=True)", "time.sleep(60)"], timeout=1)
    assert r.json["status"] == "timed_out"
    assert r.json["stdout"] == "before\n"


def test_multi_gigabyte_allocation_is_oom_killed(api: Api) -> None:
    r = api.run_json("x = b'a' * (3 * 1024**3)\nprint('survived')", memory_mb=64)
    assert r.json["status"] == "oom_killed", r.json
    assert "survived" not in r.json["stdout"]
    assert "64 MiB" in r.json["message"]


def test_output_flood_is_truncated_and_stopped(make_app, base_image: str, runtime: str) -> None:
    api = Api(make_app(base_image=base_image, max_output_bytes=10_000, runtime=runtime))
    r = api.run_json("while True: print('x' * 1000)")
    assert r.json["status"] == "output_truncated"
    assert len(r.json["stdout"]) == 10_000


def test_invalid_utf8_output_does_not_break_json(api: Api) -> None:
    r = api.run_json("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')")
    assert r.json["status"] == "succeeded"
    assert r.json["stdout"] == "ok \ufffd\ufffd end\n"


def test_stderr_is_kept_apart_from_stdout(api: Api) -> None:
    r = api.run_json("import sys; print('out'); print('err', file=sys.stderr)")
    assert (r.json["stdout"], r.json["stderr"]) == ("out\n", "err\n")


def test_uploaded_modules_import_each_other(api: Api) -> None:
    files = [
        (b"import helper\nprint(helper.greet())\n", "main.py"),
        (b"def greet():\n    return 'hi from helper'\n", "helper.py"),
    ]
    data = {"files[]": [(__import__("io").BytesIO(c), n) for c, n in files], "client": "test-client"}
    r = api.http.post("/run-file", data=data, headers=api.headers({"Accept": "application/json"}))
    assert r.status_code == 200, r.json
    assert json_of(r)["stdout"] == "hi from helper\n"
    assert json_of(r)["entrypoint"] == "main.py"


def test_script_gets_empty_stdin(api: Api) -> None:
    r = api.run_json("import sys; print(repr(sys.stdin.read()))", timeout=5)
    assert r.json["status"] == "succeeded"
    assert r.json["stdout"] == "''\n"


def test_script_runs_as_main_like_python_would_run_it(api: Api) -> None:
    code = [
        "import sys, os",
        "print(__name__, __file__, sys.argv, os.getcwd(), sys.modules['__main__'].__file__)",
        "if __name__ == '__main__':",
        "    print('main block')",
    ]
    r = api.run_json(code)
    assert r.json["stdout"] == "__main__ /sandbox/main.py ['main.py'] /sandbox /sandbox/main.py\nmain block\n"


def test_syntax_error_is_reported_like_python_does(api: Api) -> None:
    r = api.run_json("print('unclosed'")
    assert (r.json["status"], r.json["exit_code"]) == ("failed", 1)
    assert r.json["stderr"].startswith('  File "/sandbox/main.py", line 1')
    assert "SyntaxError" in r.json["stderr"]
