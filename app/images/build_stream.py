"""Reading a Docker build's answer: the one loop over its stream of JSON entries, for every image we build."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class DockerBuildError(Exception):
    """The build reported an error (a failed step); the message is Docker's."""


def build_output(entries: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The non-empty lines a Docker build prints, in order (pull progress bars left out).

    :raises DockerBuildError: the build reported an error.
    """
    for entry in entries:
        if entry.get("error"):
            raise DockerBuildError(str(entry["error"]).strip())
        if "stream" in entry:
            text = str(entry["stream"])
        elif "status" in entry and not entry.get("progressDetail"):
            text = " ".join(filter(None, (entry.get("id"), str(entry["status"]))))
        else:
            continue
        for line in text.splitlines():
            if line.strip():
                yield line.rstrip()
