"""Per-run limits: what a request asks for, bounded by the server's maxima."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.config import Settings
from app.errors import ValidationFailed
from app.models import Limits


def resolve_limits(requested: Mapping[str, Any], settings: Settings) -> Limits:
    """Requested limits, defaulted from settings. :raises ValidationFailed: above a server maximum."""
    rules = (
        ("timeout", settings.timeout_s, settings.max_timeout_s, "seconds"),
        ("memory_mb", settings.memory_mb, settings.max_memory_mb, "MiB"),
        ("cpus", settings.cpus, settings.max_cpus, "cores"),
    )
    values, errors = {}, {}
    for field, default, maximum, unit in rules:
        value = requested.get(field)
        value = min(default, maximum) if value is None else value
        if value > maximum:
            errors[field] = [f"Must be at most {maximum:g} {unit} (the server maximum)."]
        values[field] = value
    if errors:
        raise ValidationFailed("A requested limit is above the server maximum.", details=errors)
    return Limits(timeout_s=float(values["timeout"]), memory_mb=int(values["memory_mb"]), cpus=float(values["cpus"]))
