"""Times as the API shows them: RFC 3339 in UTC with milliseconds (`2026-11-30T01:57:15.417Z`)."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(epoch_s: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC, or None."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """RFC 3339 (with `Z` or an offset; a time without one is refused) as Unix seconds.

    :raises ValueError: not such a time.
    """
    moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("a time needs its offset from UTC, e.g. 2026-11-30T01:57:15Z")
    return moment.timestamp()
