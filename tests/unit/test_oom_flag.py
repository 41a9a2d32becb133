"""Docker's OOM flag may come after the exit: the service looks again before it calls a SIGKILL a plain kill.

How it reads the flag, against a stand-in for docker-py's API whose flag comes late (a real engine cannot be
made to send it late on demand; the real OOM runs are in tests/integration/test_run_statuses.py).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar, cast

import docker

from app.models import Limits, Status
from app.sandbox.container import Run, SandboxPolicy


class LateFlag:
    """inspect_container says OOMKilled only from its `late`-th call on."""

    _version, timeout = "1.41", 60
    adapters: ClassVar[dict[str, object]] = {}  # no unix socket adapter: docker-py's own calls
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, late: int) -> None:
        self.late, self.looks = late, 0

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_container_config(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_container_from_config(self, config: dict[str, Any]) -> dict[str, str]:
        return {"Id": "c0ffee"}

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        self.looks += 1
        return {"State": {"OOMKilled": self.looks >= self.late}}


def run_on(api: LateFlag) -> Run:
    client = cast(docker.DockerClient, SimpleNamespace(api=api))
    return Run(client, "image", Limits(10, 64, 0.5), SandboxPolicy(64, 64, 1000, "test"), {})


def test_a_sigkill_nobody_here_sent_waits_for_a_late_oom_flag() -> None:
    api = LateFlag(late=3)
    assert run_on(api)._judge(137, None).status is Status.OOM_KILLED
    assert api.looks == 3


def test_a_plain_sigkill_is_looked_at_for_about_a_second_then_is_a_failure() -> None:
    api = LateFlag(late=1000)
    assert run_on(api)._judge(137, None).status is Status.FAILED
    assert 5 <= api.looks <= 12


def test_a_kill_the_service_sent_or_another_exit_code_is_looked_at_once() -> None:
    api = LateFlag(late=2)
    run = run_on(api)
    run._timed_out.set()
    assert run._judge(137, None).status is Status.TIMED_OUT
    assert api.looks == 1
    other = LateFlag(late=2)
    assert run_on(other)._judge(1, None).status is Status.FAILED
    assert other.looks == 1
