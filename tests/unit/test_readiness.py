"""/readyz: one check serves every caller for READY_MAX_AGE_S; draining is answered at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from app.health import Readiness, ReadinessCheckFailed
from app.services import EXTENSION


class CountingCheck:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s

    def __call__(self, draining: bool) -> dict[str, Any]:
        self.calls += 1
        time.sleep(self.delay_s)
        return {"status": "unavailable" if draining else "ok", "draining": draining, "check": self.calls}


def together(task: Any, count: int, stagger_s: float = 0.0) -> None:
    """`task` in `count` threads started `stagger_s` apart; returns once all have ended."""
    threads = [threading.Thread(target=task) for _ in range(count)]
    for t in threads:
        t.start()
        time.sleep(stagger_s)
    for t in threads:
        t.join()


def test_one_check_serves_every_caller_until_it_is_older_than_the_max_age() -> None:
    check = CountingCheck()
    ready = Readiness(check, max_age_s=0.2)
    assert [ready(False)["check"] for _ in range(50)] == [1] * 50
    time.sleep(0.25)
    assert ready(False)["check"] == 2


def test_callers_arriving_during_a_check_wait_for_it_instead_of_starting_their_own() -> None:
    check = CountingCheck(delay_s=0.3)
    ready = Readiness(check, max_age_s=5)
    answers: list[int] = []
    together(lambda: answers.append(ready(False)["check"]), 8)
    assert answers == [1] * 8
    assert check.calls == 1


def test_draining_is_answered_at_once_not_after_the_max_age() -> None:
    ready = Readiness(CountingCheck(), max_age_s=60)
    assert ready(False)["status"] == "ok"
    assert ready(True) == {"status": "unavailable", "draining": True, "check": 2}


def test_a_check_slower_than_the_max_age_answers_everyone_waiting_for_it_at_once() -> None:
    check = CountingCheck(delay_s=0.5)
    ready = Readiness(check, max_age_s=0.1)
    waits: list[float] = []

    def ask() -> None:
        started = time.monotonic()
        ready(False)
        waits.append(time.monotonic() - started)

    together(ask, 5, stagger_s=0.02)
    assert check.calls == 1  # one after another, each waiting for the last: 5 checks, the last caller 2.5 s
    assert max(waits) < 1.0


def test_a_draining_service_does_not_wait_behind_a_check_under_way() -> None:
    ready = Readiness(CountingCheck(delay_s=1.0), max_age_s=60)
    slow = threading.Thread(target=ready, args=(False,))
    slow.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert ready(True)["status"] == "unavailable"
    assert time.monotonic() - started < 1.0 + 0.5  # its own check (1 s), not also the one under way
    slow.join()


def test_callers_waiting_for_a_check_that_fails_get_its_error_not_a_check_each() -> None:
    calls = 0

    def failing(draining: bool) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        time.sleep(0.3)
        raise RuntimeError("engine gone")

    ready = Readiness(failing, max_age_s=60)
    errors: list[str] = []

    def ask() -> None:
        try:
            ready(False)
        except ReadinessCheckFailed as e:
            errors.append(str(e.__cause__))

    together(ask, 5, stagger_s=0.02)
    assert errors == ["engine gone"] * 5
    assert calls == 1


def test_a_draining_service_is_answered_from_one_check_per_max_age_too() -> None:
    check = CountingCheck()
    ready = Readiness(check, max_age_s=60)
    assert {ready(True)["check"] for _ in range(20)} == {1}


def test_a_failing_check_lets_the_next_caller_check_again() -> None:
    calls = 0

    def failing(draining: bool) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise RuntimeError("engine gone")

    ready = Readiness(failing, max_age_s=60)
    for _ in range(2):
        with pytest.raises(ReadinessCheckFailed):
            ready(False)
    assert calls == 2


def test_a_caller_changing_its_answer_changes_nothing_for_the_next() -> None:
    ready = Readiness(CountingCheck(), max_age_s=60)
    ready(False)["status"] = "changed"
    assert ready(False)["status"] == "ok"


def test_readyz_asks_the_engine_once_for_a_burst_of_requests(make_app) -> None:
    app = make_app(base_image="datapane-no-such-image:none")
    gateway = app.extensions[EXTENSION].docker
    pings = 0
    real_ping = gateway.ping

    def counted_ping() -> bool:
        nonlocal pings
        pings += 1
        return bool(real_ping())

    gateway.ping = counted_ping
    http = app.test_client()
    statuses = {http.get("/readyz").status_code for _ in range(20)}
    assert statuses == {503}
    assert pings == 1
