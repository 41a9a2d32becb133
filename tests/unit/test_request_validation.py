"""Bad input gets a clear JSON 4xx and changes nothing; no Docker needed."""

from __future__ import annotations

import io
import json
from typing import Any, cast

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app.services import EXTENSION
from tests.helpers import Api, json_of


@pytest.fixture
def api(app) -> Api:
    return Api(app)


def post_files(api: Api, files: list[tuple[bytes, str]], query: str = "", **form: str):
    data = {"files[]": [(io.BytesIO(c), n) for c, n in files], **form}
    return api.http.post(f"/run-file{query}", data=data, headers=api.headers())


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.data
    assert r.mimetype == "application/json"
    assert set(r.json) == {"error"}
    assert r.json["error"]["code"] == code
    assert r.json["error"]["message"]
    return r.json["error"]


def no_jobs_recorded(api: Api) -> bool:
    return api.app.extensions[EXTENSION].store.count_jobs(api.name) == 0


@pytest.mark.parametrize("name", ["../evil.py", "/etc/passwd.py", "a b.py", "..", "dir/x.py", "ünï.py", ".py", ""])
def test_unsafe_file_names_are_refused_not_renamed(api: Api, name: str) -> None:
    assert_error(post_files(api, [(b"print(1)", name)]), 400, "validation_failed")
    assert no_jobs_recorded(api)


def test_data_files_need_a_script_and_cannot_be_the_entrypoint(api: Api) -> None:
    err = assert_error(post_files(api, [(b"x", "notes.txt")]), 400, "validation_failed")
    assert ".py" in err["message"]
    files = [(b"print(1)", "main.py"), (b"a,b", "data.csv")]
    err = assert_error(post_files(api, files, entrypoint="data.csv"), 400, "validation_failed")
    assert ".py" in err["message"]
    assert_error(api.run_json("print(1)", script_name="data.csv"), 400, "validation_failed")
    assert_error(post_files(api, [(b"print(1)", "main.py"), (b"x", "out")]), 400, "validation_failed")
    assert no_jobs_recorded(api)


def test_json_script_name_is_checked_like_an_upload(api: Api) -> None:
    r = api.run_json("print(1)", script_name="../../x.py")
    assert_error(r, 400, "validation_failed")
    err = assert_error(api.run_json("print(1)", script_name="main.py\n"), 400, "validation_failed")
    assert "script_name" in err["details"]


def test_unknown_fields_are_rejected(api: Api) -> None:
    err = assert_error(api.run_json("print(1)", colour="blue"), 400, "validation_failed")
    assert "colour" in err["details"]
    err = assert_error(post_files(api, [(b"print(1)", "main.py")], colour="blue"), 400, "validation_failed")
    assert "colour" in err["details"]


def test_missing_code_and_wrong_types_are_explained(api: Api) -> None:
    r = api.http.post("/run-json", json={"script_name": "main.py"}, headers=api.headers())
    assert "code" in assert_error(r, 400, "validation_failed")["details"]
    err = assert_error(api.run_json(cast(Any, [1, 2])), 400, "validation_failed")  # deliberately not strings
    assert "code" in err["details"]
    err = assert_error(api.run_json("print(1)", timeout="soon"), 400, "validation_failed")
    assert "timeout" in err["details"]


@pytest.mark.parametrize("client", ["Test-Client", "a/b", "x" * 64, "-a", "a--b", "a b"])
def test_client_must_be_a_safe_slug(api: Api, client: str) -> None:
    assert_error(api.run_json("print(1)", client=client), 400, "validation_failed")


@pytest.mark.parametrize(
    ("field", "value", "maximum"), [("timeout", 301, "300"), ("memory_mb", 4096, "1024"), ("cpus", 8, "2")]
)
def test_limits_above_the_server_maximum_are_refused_naming_it(
    api: Api, field: str, value: float, maximum: str
) -> None:
    fields: dict[str, Any] = {field: value}
    err = assert_error(api.run_json("print(1)", **fields), 400, "validation_failed")
    assert maximum in err["details"][field][0]


def test_non_positive_limits_are_refused(api: Api) -> None:
    for field in ("timeout", "memory_mb", "cpus"):
        fields: dict[str, Any] = {field: 0}
        assert_error(api.run_json("print(1)", **fields), 400, "validation_failed")


def test_oversized_file_is_413(make_app) -> None:
    api = Api(make_app(max_file_bytes=100))
    assert_error(post_files(api, [(b"#" * 101, "main.py")]), 413, "payload_too_large")
    assert_error(api.run_json("#" * 101), 413, "payload_too_large")


def test_too_many_files_is_413(make_app) -> None:
    api = Api(make_app(max_files=2))
    files = [(b"", f"m{i}.py") for i in range(3)]
    assert_error(post_files(api, files), 413, "payload_too_large")


def test_oversized_body_is_413_json(make_app) -> None:
    api = Api(make_app(max_body_bytes=1000))
    assert_error(post_files(api, [(b"#" * 2000, "main.py")]), 413, "payload_too_large")


def test_wrong_content_types_are_415(api: Api) -> None:
    assert_error(
        api.http.post("/run-json", data="x", headers=api.headers({"Content-Type": "text/plain"})),
        415,
        "unsupported_media_type",
    )
    assert_error(api.http.post("/run-file", json={}, headers=api.headers()), 415, "unsupported_media_type")


def test_malformed_json_is_400(api: Api) -> None:
    r = api.http.post("/run-json", data="{nope", headers=api.headers({"Content-Type": "application/json"}))
    assert_error(r, 400, "validation_failed")


def test_several_files_without_main_need_an_entrypoint(api: Api) -> None:
    err = assert_error(post_files(api, [(b"", "a.py"), (b"", "b.py")]), 400, "validation_failed")
    assert "entrypoint" in err["message"]
    assert_error(post_files(api, [(b"", "a.py")], entrypoint="zzz.py"), 400, "validation_failed")


def test_duplicate_and_missing_files_are_400(api: Api) -> None:
    assert_error(post_files(api, [(b"", "a.py"), (b"", "a.py")]), 400, "validation_failed")
    r = api.http.post(
        "/run-file", data={"client": "test-client"}, content_type="multipart/form-data", headers=api.headers()
    )
    assert "No files" in assert_error(r, 400, "validation_failed")["message"]


def test_unknown_routes_and_methods_get_json_errors(api: Api) -> None:
    assert_error(api.http.get("/nope", headers=api.headers()), 404, "not_found")
    assert_error(api.http.get("/run-json", headers=api.headers()), 405, "method_not_allowed")


def test_absurdly_nested_json_is_400_not_500(api: Api) -> None:
    body = "[" * 200_000 + "]" * 200_000
    r = api.http.post("/run-json", data=body, headers=api.headers({"Content-Type": "application/json"}))
    assert_error(r, 400, "validation_failed")


def test_overlong_file_name_is_refused(api: Api) -> None:
    assert_error(api.run_json("print(1)", script_name="a" * 200 + ".py"), 400, "validation_failed")


def test_readyz_is_503_json_without_the_base_image_while_healthz_stays_live(make_app) -> None:
    http = make_app(base_image="datapane-no-such-image:none").test_client()
    assert http.get("/healthz").status_code == 200  # the process answers: a restart would not help
    r = http.get("/readyz")
    assert r.status_code == 503
    assert r.json["status"] == "unavailable"
    assert r.json["base_image_present"] is False


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"env": {"PYTHONPATH": "/tmp"}}, "env"),
        ({"env": {"PYTHONSTARTUP": "x"}}, "env"),
        ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "env"),
        ({"env": {"PATH": "/tmp"}}, "env"),
        ({"env": {"HOME": "/"}}, "env"),
        ({"env": {"1ABC": "x"}}, "env"),
        ({"env": {"A-B": "x"}}, "env"),
        ({"env": {"A": "x\u0000y"}}, "env"),
        ({"env": {f"V{i}": "x" for i in range(65)}}, "env"),
        ({"env": {"BIG": "x" * 40_000}}, "env"),
        ({"env": {"A": 1}}, "env"),
        ({"env": ["A=1"]}, "env"),
        ({"args": ["x"] * 65}, "args"),
        ({"args": ["x" * 4097]}, "args"),
        ({"args": ["a\u0000b"]}, "args"),
        ({"args": "--flag"}, "args"),
        ({"stdin": ["not", "text"]}, "stdin"),
    ],
)
def test_bad_stdin_args_and_env_are_400_naming_the_field(api: Api, fields: dict[str, Any], field: str) -> None:
    err = assert_error(api.run_json("print(1)", **fields), 400, "validation_failed")
    assert field in err["details"]
    assert "/tmp/x.so" not in str(err)  # values may be secrets: never echoed
    assert no_jobs_recorded(api)


def test_form_fields_args_and_env_must_be_json(api: Api) -> None:
    err = assert_error(post_files(api, [(b"print(1)", "main.py")], args="--flag"), 400, "validation_failed")
    assert "args" in err["details"]
    err = assert_error(post_files(api, [(b"print(1)", "main.py")], env='{"LD_PRELOAD": "x"}'), 400, "validation_failed")
    assert "env" in err["details"]


def test_oversized_stdin_is_413(make_app) -> None:
    api = Api(make_app(max_file_bytes=1000))
    assert_error(api.run_json("print(1)", stdin="x" * 1001), 413, "payload_too_large")
    assert no_jobs_recorded(api)


def test_what_the_document_allows_is_accepted_and_what_it_refuses_is_refused(app) -> None:
    """Found by schemathesis: an empty cursor, form `null`s, a non-boolean `async`, an empty script name."""
    api = Api(app)
    assert api.get("/jobs?cursor=").status_code == 200  # empty: the first page
    for flag in ("maybe", "", "%20true"):
        r = api.http.post(
            f"/run-json?async={flag}", json={"script_name": "main.py", "code": "print(1)"}, headers=api.headers()
        )
        assert r.status_code == 400 and json_of(r)["error"]["details"] == {"async": ["Not a boolean."]}, flag
    assert no_jobs_recorded(api)  # refused before anything was recorded
    r = api.http.post("/run-json", json={"script_name": "", "code": ""}, headers=api.headers())
    assert r.status_code == 400 and "script_name" in json_of(r)["error"]["details"]


def test_json_null_in_a_form_field_means_the_field_left_out() -> None:
    from app.api.schemas import RunFormSchema

    assert RunFormSchema().load({"args": "null", "env": "null"}) == {"args": [], "env": {}}


@pytest.mark.parametrize(
    "name", ["main.py", "a.py", "my-job_2.v1.py", "-x.py", ".py", "_x.py", ".hidden.py", "a b.py", "x.py ", "main.txt"]
)
def test_the_documented_script_name_pattern_is_what_an_upload_may_run(name: str) -> None:
    """The JSON body's script_name pattern admits exactly the names an upload keeps as sent and can run."""
    from werkzeug.utils import secure_filename

    from app.api.schemas import SCRIPT_NAME

    runnable = secure_filename(name) == name and name.endswith(".py")
    assert bool(SCRIPT_NAME.match(name)) is runnable


def test_status_filter_is_a_list_of_known_statuses(api: Api) -> None:
    """Found by schemathesis: the document says a comma-separated list of 1 to 10 statuses; nothing else passes."""
    assert api.get("/jobs?status=failed,timed_out").status_code == 200
    for bad in ("status=", "status=failed,", "status=failed,%20timed_out", "status=" + ",".join(["failed"] * 11)):
        r = api.get(f"/jobs?{bad}")
        assert r.status_code == 400 and json_of(r)["error"]["code"] == "validation_failed", bad


def test_form_args_and_env_may_come_as_json_parts(api: Api) -> None:
    """The document sends args and env as application/json parts (its `encoding`); plain text parts work too."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="args"\r\nContent-Type: application/json\r\n\r\n[1]\r\n'
        b'--b\r\nContent-Disposition: form-data; name="files[]"; filename="main.py"\r\n\r\nprint(1)\r\n--b--\r\n'
    )
    headers = {**api.headers(), "Content-Type": "multipart/form-data; boundary=b"}
    err = assert_error(api.http.post("/run-file", data=body, headers=headers), 400, "validation_failed")
    assert "args" in err["details"]  # read as JSON: a number is not a string


def test_the_document_says_where_it_was_fetched_from_and_types_every_form_field(app) -> None:
    doc = app.test_client().get("/openapi.json", base_url="http://runner.example:8080").json
    assert doc["servers"] == [{"url": "http://runner.example:8080"}]  # Postman's import sends its requests there
    assert all("414" in op["responses"] for ops in doc["paths"].values() for op in ops.values())  # gunicorn's limit
    form = doc["components"]["schemas"]["RunFile"]["properties"]
    assert form["files[]"] == {**form["files[]"], "type": "string", "format": "binary"}  # a file field on import
    assert form["args"]["type"] == "array" and form["env"]["type"] == "object"
    assert "maxLength" not in form["env"] and form["env"]["maxProperties"] == 64
    encoding = doc["paths"]["/run-file"]["post"]["requestBody"]["content"]["multipart/form-data"]["encoding"]
    assert encoding == {"args": {"contentType": "application/json"}, "env": {"contentType": "application/json"}}


SURROGATE = "\ud800"  # JSON can spell a lone surrogate (as the escape \ud800); UTF-8 has no form for it


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"code": SURROGATE}, "code"),
        ({"code": ["print(1)", SURROGATE]}, "code"),
        ({"stdin": SURROGATE}, "stdin"),
        ({"args": ["ok", SURROGATE]}, "args"),
        ({"env": {"A": SURROGATE}}, "env"),
        ({"callback_url": f"https://example.com/{SURROGATE}"}, "callback_url"),
        ({"script_name": f"{SURROGATE}.py"}, "script_name"),
        ({"requirements": [SURROGATE]}, "requirements"),
    ],
)
def test_text_with_no_utf8_form_is_400_naming_the_field(api: Api, fields: dict[str, Any], field: str) -> None:
    body = {"script_name": "main.py", "code": "print(1)", **fields}
    r = api.http.post("/run-json?async=1", json=body, headers=api.headers())  # Flask's JSON escapes it as \ud800
    err = assert_error(r, 400, "validation_failed")
    assert field in err["details"]
    assert no_jobs_recorded(api)


def test_form_fields_with_no_utf8_form_are_400_naming_the_field(api: Api) -> None:
    for field, text in (("args", '["ok", "\\ud800"]'), ("env", '{"A": "\\ud800"}')):
        r = post_files(api, [(b"print(1)", "main.py")], query="?async=1", **{field: text})
        assert field in assert_error(r, 400, "validation_failed")["details"]
    assert no_jobs_recorded(api)


@pytest.mark.parametrize(
    "url",
    ["https://example.com/\n", "https://example.com/a\tb", "https://exa\x01mple.com/", "https://example.com/\x7f"],
)
def test_a_callback_url_with_a_control_character_is_400(api: Api, url: str) -> None:
    r = api.run_json("", query="?async=1", callback_url=url)
    assert "callback_url" in assert_error(r, 400, "validation_failed")["details"]
    r = post_files(api, [(b"", "main.py")], query="?async=1", callback_url=url)
    assert "callback_url" in assert_error(r, 400, "validation_failed")["details"]
    assert no_jobs_recorded(api)


def post_chunked(api: Api, body: bytes):
    """A JSON body as a chunked request brings it: no Content-Length, the server ending the stream."""
    headers = api.headers({"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    return api.http.post(
        "/run-json?async=1",
        input_stream=io.BytesIO(body),
        headers=headers,
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
    )


def test_a_chunked_body_past_the_cap_is_413_as_one_with_a_length_is(make_app) -> None:
    api = Api(make_app(max_body_bytes=1000))
    body = json.dumps({"script_name": "main.py", "code": "#" * 2000}).encode()
    sized = api.http.post("/run-json", data=body, headers=api.headers({"Content-Type": "application/json"}))
    expected = assert_error(sized, 413, "payload_too_large")
    assert assert_error(post_chunked(api, body), 413, "payload_too_large") == expected
    padded = json.dumps({"script_name": "main.py", "code": "print(1)"}).encode() + b" " * 2000  # valid in the cap
    assert_error(post_chunked(api, padded), 413, "payload_too_large")
    assert no_jobs_recorded(api)
    start = b'{"script_name": "main.py", "code": "", "colour": "'
    at_the_cap = start + b"x" * (1000 - len(start) - 2) + b'"}'
    err = assert_error(post_chunked(api, at_the_cap), 400, "validation_failed")
    assert "colour" in err["details"]  # read whole: a body of exactly the cap is not too large


def test_a_form_stdin_has_the_documented_limit_and_past_it_a_413_naming_it(make_app) -> None:
    """Above Flask's own limit on a form's text part (500 kB), RUNNER_MAX_FILE_BYTES applies, as to JSON's stdin."""
    api = Api(make_app(max_file_bytes=600_000))
    script = FileStorage(io.BytesIO(b"print(1)"), "main.py")
    boundary, body = encode_multipart({"files[]": script, "stdin": "x" * 600_001})  # in memory, not a temp file
    headers = api.headers({"Content-Type": f"multipart/form-data; boundary={boundary}"})
    r = api.http.post("/run-file?async=1", data=body, headers=headers)
    message = assert_error(r, 413, "payload_too_large")["message"]
    assert "stdin" in message and "600000" in message
    assert no_jobs_recorded(api)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store_api(make_app, request: pytest.FixtureRequest) -> Api:
    if request.param == "sqlite":
        return Api(make_app())
    return Api(make_app(database_url=request.getfixturevalue("postgres").new_database()))


def test_a_job_id_not_of_the_services_making_is_404_as_a_missing_job_is(any_store_api: Api) -> None:
    """Never sent to the store: PostgreSQL refuses a NUL (a 500), and no job has such an id anyway."""
    api = any_store_api

    def missing(job_id: str) -> dict[str, Any]:
        return {"error": {"code": "not_found", "message": f"No job {job_id!r} for this client.", "details": None}}

    assert json_of(api.get(f"/status/{'0' * 24}")) == missing("0" * 24)  # well formed, but no such job
    for sent, job_id in (("abc%00", "abc\0"), ("0" * 23 + "%00", "0" * 23 + "\0"), ("resumed1", "resumed1")):
        for method, path in (
            ("GET", f"/status/{sent}"),
            ("GET", f"/status/{sent}/output"),
            ("GET", f"/status/{sent}/artifacts/a.txt"),
            ("DELETE", f"/jobs/{sent}"),
        ):
            r = api.http.open(path, method=method, headers=api.headers())
            assert (r.status_code, r.json) == (404, missing(job_id)), path
