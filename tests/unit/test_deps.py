"""Import detection, name mapping and requirement parsing: pure logic, no Docker."""

from __future__ import annotations

import pytest

from app.deps import (
    ImageEnvironment,
    canonical_set,
    detect_imports,
    distributions_for,
    parse_requirements,
    third_party_imports,
)
from app.errors import ValidationFailed
from app.images import deps_key

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


def test_requirements_keep_pins_and_markers() -> None:
    lines = ["# comment", "", "greetpkg==1.0", "requests>=2 ; python_version >= '3.8'  # why", "PyYAML"]
    assert parse_requirements(lines) == ("greetpkg==1.0", 'requests>=2; python_version >= "3.8"', "PyYAML")


@pytest.mark.parametrize(
    "line",
    ["-r other.txt", "--index-url http://x", "pkg @ https://x/p.whl", "bad name!!", "-e .", "foo===${PIP_INDEX_URL}"],
)
def test_options_urls_variables_and_nonsense_are_refused(line: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_requirements([line])


def test_the_same_set_in_any_order_or_spelling_has_one_key() -> None:
    a = canonical_set(["PyYAML", "greet_pkg==1.0", "pyyaml"])
    b = canonical_set(["greet-pkg==1.0", "pyyaml"])
    assert a == b == ("greet-pkg==1.0", "pyyaml")
    assert deps_key(a) == deps_key(b) != deps_key(canonical_set(["greet-pkg==2.0", "pyyaml"]))
    assert deps_key(()) == "nodeps"
