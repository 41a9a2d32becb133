"""Which packages a run needs: explicit requirements, or the imports found in its files."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .errors import ValidationFailed

REQUIREMENTS_FILE = "requirements.txt"


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
        except (SyntaxError, ValueError):
            continue  # the run will show the script's own SyntaxError
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found


def third_party_imports(files: Mapping[str, bytes], env: ImageEnvironment) -> set[str]:
    """Imports that are neither stdlib, nor installed in the image, nor the client's own modules."""
    own = {name.removesuffix(".py") for name in files if name.endswith(".py")}
    return {m for m in detect_imports(files) if m not in env.stdlib and m not in env.installed and m not in own}


def distributions_for(imports: Iterable[str]) -> list[str]:
    """PyPI distribution names for import names (yaml -> PyYAML), by pipreqs' maintained mapping."""
    mapping = _pipreqs_mapping()
    return sorted({mapping.get(name, name) for name in imports}, key=str.lower)


@cache
def _pipreqs_mapping() -> dict[str, str]:
    from importlib.resources import files

    text = files("pipreqs").joinpath("mapping").read_text()
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


def parse_requirements(lines: Iterable[str]) -> tuple[str, ...]:
    """Validated requirement specifiers (pins honoured); options, URLs and paths are refused.

    :raises ValidationFailed: naming the offending line.
    """
    parsed: list[str] = []
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise ValidationFailed(f"Requirement {line!r}: pip options are not allowed; list package specifiers only.")
        if "$" in line or "\\" in line:
            raise ValidationFailed(f"Requirement {line!r}: '$' and '\\' are not allowed in specifiers.")
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise ValidationFailed(f"Requirement {line!r} is not a valid specifier: {e}") from e
        if req.url:
            raise ValidationFailed(f"Requirement {line!r}: direct URLs are not allowed; name a package from the index.")
        parsed.append(str(req))
    return tuple(parsed)


def canonical_set(requirements: Iterable[str]) -> tuple[str, ...]:
    """The same set always in the same form: sorted, duplicates removed, names normalised."""
    out = set()
    for r in requirements:
        req = Requirement(r)
        req.name = canonicalize_name(req.name)
        out.add(str(req))
    return tuple(sorted(out))
