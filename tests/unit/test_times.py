"""Times in the API are RFC 3339 in UTC with milliseconds, and `since=` reads the same format back."""

from __future__ import annotations

import pytest

from app.times import parse_rfc3339, rfc3339


def test_unix_seconds_become_rfc3339_utc_with_milliseconds() -> None:
    assert rfc3339(1764467835.417) == "2025-11-30T01:57:15.417Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(None) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2025-11-30T01:57:15.417Z", 1764467835.417),
        ("2025-11-30T01:57:15Z", 1764467835.0),
        ("2025-11-30T02:57:15.417+01:00", 1764467835.417),
        ("2025-11-30t01:57:15z", 1764467835.0),
    ],
)
def test_rfc3339_reads_back(text: str, seconds: float) -> None:
    assert parse_rfc3339(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2025-11-30T01:57:15", "yesterday", "1764467835", ""])
def test_a_time_without_an_offset_or_not_a_time_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)
