"""Import detection, name mapping and requirement parsing: pure logic, no Docker."""

from __future__ import annotations

import sys
import time

import pytest

from app.errors import ValidationFailed
from app.images.client_images import deps_key
from app.images.deps import (
    ImageEnvironment,
    canonical_set,
    check_detected_count,
    detect_imports,
    distributions_for,
    parse_requirements,
    third_party_imports,
)

ENV = ImageEnvironment(
    stdlib=frozenset({"os", "sys", "json", "collections", "__future__"}), installed=frozenset({"flask"})
)


def test_imports_are_found_everywhere_in_the_syntax_tree() -> None:
    source = b"""
from __future__ import annotations
import a.b.c, d as e
from f.g import h
def fn():
    import inner
try:
    import optional
except ImportError:
    optional = None
class K:
    from in_class import x
"""
    assert detect_imports({"main.py": source}) == {"__future__", "a", "d", "f", "inner", "optional", "in_class"}


def test_relative_imports_and_strings_are_ignored() -> None:
    source = b"from . import sibling\nfrom .pkg import x\ns = 'import notreal'\n# import alsonot\n"
    assert detect_imports({"main.py": source}) == set()


def test_files_with_syntax_errors_are_skipped() -> None:
    assert detect_imports({"bad.py": b"import (\n", "ok.py": b"import yaml\n"}) == {"yaml"}


def test_stdlib_installed_and_own_modules_are_excluded() -> None:
    files = {"main.py": b"import os, sys, json, flask, helper, numpy\nfrom collections import abc\n", "helper.py": b""}
    assert third_party_imports(files, ENV) == {"numpy"}


@pytest.mark.parametrize(
    ("module", "dist"),
    [("yaml", "PyYAML"), ("bs4", "beautifulsoup4"), ("PIL", "Pillow"), ("sklearn", "scikit_learn"), ("numpy", "numpy")],
)
def test_import_names_map_to_distributions(module: str, dist: str) -> None:
    assert distributions_for([module]) == [dist]


def test_requirements_keep_pins_extras_and_comments() -> None:
    lines = ["# comment", "", "greetpkg==1.0", "requests[socks] >= 2, < 3  # why", "PyYAML", "x ~= 1.4", "y==1.0.*"]
    assert parse_requirements(lines) == ("greetpkg==1.0", "requests[socks]<3,>=2", "pyyaml", "x~=1.4", "y==1.0.*")


HOSTILE = [
    "evil===../../../../../../tmp/someproject",
    "EVIL===/tmp/someproject",
    "evil === 1.0",
    "Evil[extra]===../x",
    "evil @ file:///tmp/someproject",
    "evil@https://example.invalid/evil.whl",
    "https://example.invalid/evil.whl",
    "/tmp/someproject",
    "./someproject",
    "../someproject",
    ".someproject",
    "someproject/",
    "C:\\someproject",
    "~/someproject",
    "evil~1.0",
    "evil==1.0; python_version > '3'",
    "evil; os_name == 'posix'",
    "evil==${HOME}",
    "evil==$HOME",
    "-e .",
    "--index-url=http://evil/",
    "-r other.txt",
    "evil==1 .0",
    "evil==1.0 2",
    "evil\x00",
    "evil==1.0\x00",
    "evil (==1.0)",
    "evil<=1.*",
    "evil==",
    "bad name!!",
    "évil",
    "evil==1.0+abc.whl",  # a valid local version, but pip reads a line ending like an archive as a file's path
    "evil[x]==1+a.tar.gz",
    "evil!=1+a.zip",
    "evil" + " " * 300 + "x",  # longer than any requirement needs
]


@pytest.mark.parametrize("line", HOSTILE)
def test_anything_but_a_plain_index_requirement_is_refused_naming_the_line(line: str) -> None:
    with pytest.raises(ValidationFailed) as e:
        parse_requirements([line])
    assert repr(line)[:40] in e.value.message


@pytest.mark.parametrize("line", HOSTILE)
def test_a_hostile_line_is_refused_also_inside_a_valid_set(line: str) -> None:
    with pytest.raises(ValidationFailed):
        canonical_set(["greetpkg", line])


def test_local_versions_that_name_no_archive_stay_allowed() -> None:
    assert canonical_set(["torch==2.1.0+cu118"]) == ("torch==2.1.0+cu118",)


def test_module_names_that_are_no_distribution_names_are_not_installed() -> None:
    assert distributions_for(["yaml", "évil", "_private"]) == ["PyYAML"]


def test_at_most_fifty_requirements_per_run() -> None:
    parse_requirements([f"pkg{i}" for i in range(50)])
    with pytest.raises(ValidationFailed, match="at most 50"):
        parse_requirements([f"pkg{i}" for i in range(51)])
    many_imports = "".join(f"import pkg{i}\n" for i in range(51)).encode()
    with pytest.raises(ValidationFailed, match="at most 50"):
        check_detected_count({"main.py": many_imports}, frozenset())
    check_detected_count({"main.py": many_imports}, frozenset({"pkg0"}))


def test_the_same_set_in_any_order_or_spelling_has_one_key() -> None:
    a = canonical_set(["PyYAML", "greet_pkg==1.0", "pyyaml"])
    b = canonical_set(["greet-pkg==1.0", "pyyaml"])
    assert a == b == ("greet-pkg==1.0", "pyyaml")
    assert deps_key(a) == deps_key(b) != deps_key(canonical_set(["greet-pkg==2.0", "pyyaml"]))
    assert deps_key(()) == "nodeps"


STDLIB_ONLY = ImageEnvironment(stdlib=frozenset(sys.stdlib_module_names), installed=frozenset({"flask"}))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (b"import os, json as j\nfrom collections import (\n  OrderedDict)\nimport flask\n", set()),  # the quick path
        (b'"""Usage:\nimport yaml\n"""\nprint(1)\n', set()),  # looks like an import, is a string: the parse says
        (b"x = 1; import yamlish\n", {"yamlish"}),  # not a plain import line: parsed
        (b"from os import path; import yamlish\n", {"yamlish"}),  # a second statement after a from-import: parsed
        (b"from . import a; import yamlish\n", {"yamlish"}),
        (b"import os, \\\n    yamlish\n", {"yamlish"}),  # continued: parsed
        (b"try: import fastjson\nexcept ImportError: pass\n", {"fastjson"}),
        (b"from . import helper\nfrom .sub import x\n", set()),  # the client's own package
        (b"import importlib\nm = importlib.import_module('x')\n", set()),  # the word inside a name is no import
        (b"import requestsx.adapters as a\n", {"requestsx"}),
    ],
)
def test_the_quick_scan_never_decides_other_than_the_parse(source: bytes, expected: set[str]) -> None:
    files = {"main.py": source}
    assert third_party_imports(files, STDLIB_ONLY) == expected
    own = {name.removesuffix(".py") for name in files}
    parsed = {m for m in detect_imports(files) if m not in STDLIB_ONLY.stdlib | STDLIB_ONLY.installed | own}
    assert parsed == expected


def test_a_large_stdlib_only_script_is_decided_without_parsing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    source = b"import os, sys\n" + b"x = 1  # a line\n" * 20_000
    monkeypatch.setattr("app.images.deps.detect_imports", lambda files: pytest.fail("parsed"))
    assert third_party_imports({"main.py": source}, STDLIB_ONLY) == set()


@pytest.mark.parametrize(
    "source",
    [
        b"import a" + b" " * 40_000 + b"!",
        b"from " + b"a" * 40_000 + b"!import x",
        b"from " + b"." * 40_000 + b"!import x",
    ],
    ids=["import", "from", "relative"],
)
def test_a_long_line_is_scanned_without_backtracking(source: bytes) -> None:
    """A request's scan holds the interpreter: patterns that backtrack took minutes on these lines, hours at 1 MiB."""
    start = time.perf_counter()
    third_party_imports({"main.py": source}, STDLIB_ONLY)
    assert time.perf_counter() - start < 2


def test_spaces_in_a_requirement_file_line_cost_no_backtracking() -> None:
    start = time.perf_counter()
    with pytest.raises(ValidationFailed):
        parse_requirements(["a" + " " * 20_000 + "x"])
    assert time.perf_counter() - start < 2
