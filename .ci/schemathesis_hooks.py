"""Loaded by .ci/schemathesis (SCHEMATHESIS_HOOKS): a workaround inside the test tool, not in the service.

While it builds data for some schemas, Hypothesis names a lambda by parsing its source file. On CPython 3.11 that
parse can raise `SystemError: AST constructor recursion depth mismatch` (a CPython bug, gh-106905) when the stack is
deep, and schemathesis reports the operation as a runtime error. The name only labels the strategy; an unknown one
changes no generated request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis.internal import lambda_sources

_describe = lambda_sources.lambda_description


def lambda_description(f: Callable[..., Any]) -> str:
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources.lambda_description = lambda_description
