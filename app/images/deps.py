"""Which packages a run needs: explicit requirements, or the imports found in its files."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from app.errors import ValidationFailed

REQUIREMENTS_FILE = "requirements.txt"
MAX_REQUIREMENTS = 50
_NAME_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_NAME = re.compile(_NAME_PATTERN)
_OPERATOR = r"(?:==|!=|<=|>=|~=|<|>)"
_VERSION = r"[A-Za-z0-9.+!*_-]+"  # PEP 440 characters; SpecifierSet then checks the version itself
_SP = r"[ \t]*+"  # spaces between the parts; never inside a name or a version
_CLAUSE = re.compile(rf"{_OPERATOR}{_SP}{_VERSION}")
_REQUIREMENT = re.compile(
    rf"{_SP}(?P<name>{_NAME_PATTERN}){_SP}"
    rf"(?:\[(?P<extras>{_SP}{_NAME_PATTERN}{_SP}(?:,{_SP}{_NAME_PATTERN}{_SP})*)\])?{_SP}"
    rf"(?P<clauses>{_CLAUSE.pattern}(?:{_SP},{_SP}{_CLAUSE.pattern})*)?{_SP}"
)
# Checked first, so that the answer says why; the grammar above refuses them too.
_REFUSED = [
    (re.compile(r"\x00"), "it contains a NUL byte"),
    (re.compile(r"^\s*-"), "pip options are not allowed"),
    (re.compile(r"^\s*\."), "it starts with '.'"),
    (re.compile(r"@|://"), "URLs and direct references are not allowed; name a package from the index"),
    (re.compile(r"[/\\]"), "paths ('/' or '\\') are not allowed"),
    (re.compile(r"\$"), "'$' is not allowed (pip expands environment variables)"),
    (re.compile(r";"), "environment markers (';') are not allowed"),
    (re.compile(r"==="), "arbitrary equality ('===') is not allowed"),
    (re.compile(r"~(?!=)"), "'~' is only allowed in the '~=' operator"),
]
_ARCHIVE = re.compile(r"\.(whl|zip|tar|tgz|tbz|txz|tlz|tar\.(gz|bz2|xz|lz|lzma))\Z", re.IGNORECASE)
MAX_REQUIREMENT_CHARS = 200
_PLAIN = "Use a package name, optional [extras], and version clauses such as '==1.2', '>=1,<2' or '~=1.4'."


@dataclass(frozen=True)
class ImageEnvironment:
    """What the base image already provides: its Python's stdlib and the importable names installed in it."""

    stdlib: frozenset[str]
    installed: frozenset[str]


def detect_imports(files: Mapping[str, bytes]) -> set[str]:
    """Top-level names of absolute imports anywhere in the .py files (functions, try blocks included)."""
    found: set[str] = set()
    for name, source in files.items():
        if not name.endswith(".py"):
            continue
        try:
            tree = ast.parse(source, filename=name)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue  # the run will show the script's own error (absurd nesting included)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found


IMPORT_WORD = re.compile(rb"import")  # a literal search is ~15x faster than with \b; the line checks decide
FROM_LINE = re.compile(rb"[ \t]*from[ \t]+([A-Za-z_][A-Za-z0-9_]*+)[A-Za-z0-9_.]*+[ \t]+import\b[^\\;]*")
RELATIVE_LINE = re.compile(rb"[ \t]*from[ \t]+\.++[A-Za-z0-9_.]*+[ \t]+import\b[^\\;]*")
IMPORT_LINE = re.compile(rb"[ \t]*import[ \t]++([A-Za-z0-9_., \t]*+)(?:#[^\\]*)?")


def _lines_with(word: re.Pattern[bytes], source: bytes) -> Iterator[bytes]:
    """Each line of `source` where `word` occurs, once (found from the occurrences, not by reading every line)."""
    after = 0
    for hit in word.finditer(source):
        if hit.start() < after or _in_identifier(source, hit.start(), hit.end()):
            continue
        start = source.rfind(b"\n", 0, hit.start()) + 1
        end = source.find(b"\n", hit.end())
        after = len(source) if end == -1 else end
        yield source[start:after].rstrip(b"\r")


def _in_identifier(source: bytes, start: int, end: int) -> bool:
    """Whether source[start:end] is part of a longer name (importlib, reimport_all)."""
    before = source[start - 1 : start]
    return (before.isalnum() or before == b"_") or (source[end : end + 1].isalnum() or source[end : end + 1] == b"_")


def scan_imports(files: Mapping[str, bytes]) -> set[str] | None:
    """A quick superset of the top-level imports, from lines alone; None when a line is not plainly an import.

    Every line with the word `import` must be a plain `import a, b.c as d` or `from a.b import ...` statement (not
    continued with a backslash); its names are taken. A line in a string that looks like an import adds a name the
    script may not import: callers confirm anything that matters with `detect_imports`.
    """
    found: set[str] = set()
    for name, source in files.items():
        if not name.endswith(".py"):
            continue
        for line in _lines_with(IMPORT_WORD, source):
            if match := FROM_LINE.fullmatch(line):
                found.add(match[1].decode())
            elif match := IMPORT_LINE.fullmatch(line):
                parts = [part.split() for part in match[1].decode().split(",")]
                names = [words[0].partition(".")[0] if words else "" for words in parts]
                if not all(name.isidentifier() for name in names):
                    return None
                found.update(names)
            elif not RELATIVE_LINE.fullmatch(line):  # `from . import x` names the client's own package
                return None
    return found


def third_party_imports(files: Mapping[str, bytes], env: ImageEnvironment) -> set[str]:
    """Imports that are neither stdlib, nor installed in the image, nor the client's own modules.

    A quick scan of the lines decides when it finds only such names (a large script importing the standard
    library costs a few milliseconds, not a full parse); otherwise the parsed source does.
    """
    own = {name.removesuffix(".py") for name in files if name.endswith(".py")}

    def third_party(names: set[str]) -> set[str]:
        return {m for m in names if m not in env.stdlib and m not in env.installed and m not in own}

    quick = scan_imports(files)
    if quick is not None and not third_party(quick):
        return set()
    return third_party(detect_imports(files))


def check_detected_count(files: Mapping[str, bytes], installed: frozenset[str]) -> None:
    """Refuse early a script importing more packages than a run may install (stdlib and `installed` aside).

    :raises ValidationFailed: more than MAX_REQUIREMENTS candidates.
    """
    env = ImageEnvironment(stdlib=frozenset(sys.stdlib_module_names), installed=installed)
    check_count(len(distributions_for(third_party_imports(files, env))), "imported packages")


def distributions_for(imports: Iterable[str]) -> list[str]:
    """PyPI distribution names for import names (yaml -> PyYAML), by pipreqs' maintained mapping."""
    mapping = _pipreqs_mapping()
    names = {mapping.get(name, name) for name in imports}
    return sorted((n for n in names if is_distribution_name(n)), key=str.lower)


@cache
def _pipreqs_mapping() -> dict[str, str]:
    text = files("pipreqs").joinpath("mapping").read_text()
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


def parse_requirements(lines: Iterable[str]) -> tuple[str, ...]:
    """Validated plain index requirements (see check_requirement), in the form pip will be given.

    Blank lines and `#` comments are skipped.
    :raises ValidationFailed: naming the offending line, or when there are more than MAX_REQUIREMENTS.
    """
    parsed: list[str] = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        parsed.append(check_requirement(line))
    check_count(len(parsed), "requirements")
    return tuple(parsed)


def check_requirement(line: str) -> str:
    """A plain index requirement rebuilt from its validated parts: name, extras, version clauses.

    Anything pip could read as a path, a URL, an option, a marker or an arbitrary version is refused.
    :raises ValidationFailed: naming the line and what is wrong with it.
    """
    if len(line) > MAX_REQUIREMENT_CHARS:
        raise ValidationFailed(f"Requirement {_shown(line)} is longer than {MAX_REQUIREMENT_CHARS} characters.")
    for pattern, why in _REFUSED:
        if pattern.search(line):
            raise ValidationFailed(f"Requirement {_shown(line)} is not allowed: {why}. {_PLAIN}")
    match = _REQUIREMENT.fullmatch(line)
    if match is None:
        raise ValidationFailed(f"Requirement {_shown(line)} is not a plain requirement. {_PLAIN}")
    extras = [e.strip() for e in (match["extras"] or "").split(",") if e.strip()]
    try:
        clauses = (re.sub(r"[ \t]", "", c) for c in _CLAUSE.findall(match["clauses"] or ""))
        specifiers = SpecifierSet(",".join(clauses))
    except InvalidSpecifier as e:
        raise ValidationFailed(f"Requirement {_shown(line)} has an invalid version: {e}. {_PLAIN}") from e
    name = canonicalize_name(match["name"])
    rebuilt = name + (f"[{','.join(sorted(canonicalize_name(e) for e in extras))}]" if extras else "") + str(specifiers)
    if _ARCHIVE.search(rebuilt):  # pip would read the line as a local archive file's path
        raise ValidationFailed(f"Requirement {_shown(line)} ends like a file name. {_PLAIN}")
    return rebuilt


def is_distribution_name(name: str) -> bool:
    """Whether `name` is a valid distribution name (ASCII letters, digits, '.', '_', '-'; alphanumeric ends)."""
    return _NAME.fullmatch(name) is not None


def check_count(count: int, what: str) -> None:
    """:raises ValidationFailed: more than MAX_REQUIREMENTS packages for one run."""
    if count > MAX_REQUIREMENTS:
        raise ValidationFailed(f"A run may install at most {MAX_REQUIREMENTS} packages; {count} {what} were given.")


def _shown(line: str) -> str:
    return repr(line if len(line) <= 100 else line[:100] + "...")


def canonical_set(requirements: Iterable[str]) -> tuple[str, ...]:
    """The same set always in the same form: each checked and rebuilt, sorted, duplicates removed.

    :raises ValidationFailed: a requirement is not a plain index requirement.
    """
    return tuple(sorted({check_requirement(r) for r in requirements}))
