"""The warm pool's bookkeeping over fake runs: bounds, one hand-out each, dead runs, eviction, shutdown: no Docker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest

from app.errors import SandboxError
from app.models import Limits
from app.sandbox import pool as pool_module
from app.sandbox.container import SandboxPolicy
from app.sandbox.docker_gateway import DockerGateway
from app.sandbox.pool import PoolSettings, WarmPool
from tests.helpers import wait_until

LIMITS = Limits(timeout_s=30, memory_mb=256, cpus=1.0)
POLICY = SandboxPolicy(pids_limit=64, tmpfs_mb=64, max_output_bytes=1024, instance="unit-test")


class FakeGateway:
    """Stands in for the Docker gateway: the pool only passes its client on to Run."""

    client = object()


class FakeRun:
    """A container that is never created: it records what the pool does with it."""

    def __init__(
        self,
        client: object,
        image_id: str,
        limits: Limits,
        policy: SandboxPolicy,
        labels: dict[str, str],
        metrics: object = None,
    ) -> None:
        self.client, self.image_id, self.limits, self.policy, self.labels = client, image_id, limits, policy, labels
        self.container_id = f"fake-{id(self):x}"
        self.started = self.dead = self.removed = False
        self.timeout_s: float | None = None

    def start(self) -> None:
        self.started = True

    def alive(self) -> bool:
        return self.started and not self.dead and not self.removed

    def remove(self) -> None:
        self.removed = True

    def set_timeout(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[FakeRun]:
    """Every run the pool makes, in order of creation."""
    made: list[FakeRun] = []

    class RecordedRun(FakeRun):
        def __init__(
            self,
            client: object,
            image_id: str,
            limits: Limits,
            policy: SandboxPolicy,
            labels: dict[str, str],
            metrics: object = None,
        ) -> None:
            super().__init__(client, image_id, limits, policy, labels, metrics)
            made.append(self)

    monkeypatch.setattr(pool_module, "Run", RecordedRun)
    return made


@pytest.fixture
def make_pool() -> Iterator[Callable[..., WarmPool]]:
    """Factory of pools over a fake gateway; each is shut down after the test."""
    made: list[WarmPool] = []

    def make(size_per_image: int = 2, max_images: int = 4, idle_s: float = 300) -> WarmPool:
        settings = PoolSettings(size_per_image=size_per_image, max_images=max_images, idle_s=idle_s, limits=LIMITS)
        pool = WarmPool(cast(DockerGateway, FakeGateway()), POLICY, settings)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown()


def of(runs: list[FakeRun], image_id: str) -> list[FakeRun]:
    return [r for r in runs if r.image_id == image_id]


def take(pool: WarmPool, image_id: str, limits: Limits = LIMITS) -> FakeRun | None:
    """What the pool hands out: one of the fake runs, or None."""
    return cast("FakeRun | None", pool.take(image_id, limits))


def filled(pool: WarmPool, size: int) -> bool:
    """True once the pool holds `size` runs."""
    return wait_until(lambda: pool.size() == size)


def closed(pool: WarmPool) -> bool:
    """True once the pool refuses to hand out: a closed pool does not even count a miss."""
    misses = pool.misses
    return take(pool, "base") is None and pool.misses == misses


def test_a_disabled_pool_never_hands_out_or_starts_anything(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun]
) -> None:
    pool = make_pool(size_per_image=0)
    pool.warm("base")
    pool.replenish("base")
    assert not pool.enabled
    assert take(pool, "base") is None
    assert (runs, pool.size(), pool.hits, pool.misses) == ([], 0, 0, 0)


@pytest.mark.parametrize("limits", [Limits(30, 512, 1.0), Limits(30, 256, 2.0)], ids=["memory", "cpus"])
def test_other_memory_or_cpus_than_the_pools_never_take_from_it(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun], limits: Limits
) -> None:
    pool = make_pool(size_per_image=2)
    pool.warm("base")
    assert filled(pool, 2)
    assert take(pool, "base", limits) is None
    assert pool.size() == 2
    assert not any(r.removed for r in runs)


def test_a_pooled_run_has_the_pools_limits_policy_and_label(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun]
) -> None:
    pool = make_pool(size_per_image=1)
    pool.warm("base")
    assert filled(pool, 1)
    (run,) = runs
    assert (run.client, run.image_id, run.limits, run.policy) == (FakeGateway.client, "base", LIMITS, POLICY)
    assert run.labels == {"pool": "1"}
    assert run.started


def test_warm_fills_up_to_size_per_image_and_never_beyond(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun], monkeypatch: pytest.MonkeyPatch
) -> None:
    proceed = threading.Event()
    real_start = FakeRun.start

    def held_start(self: FakeRun) -> None:
        proceed.wait(timeout=5)
        real_start(self)

    monkeypatch.setattr(FakeRun, "start", held_start)
    pool = make_pool(size_per_image=3)
    try:
        pool.warm("base")
        # while the first refills are still starting, more requests for the same image must add nothing
        callers = [threading.Thread(target=pool.replenish, args=("base",)) for _ in range(8)]
        callers += [threading.Thread(target=pool.warm, args=("base",)) for _ in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(timeout=5)
    finally:
        proceed.set()
    assert filled(pool, 3)
    pool.replenish("base")  # full: nothing to do
    pool.warm("barrier")  # one refill thread works in order: once this is filled, nothing for base is left to do
    assert filled(pool, 6)
    assert len(of(runs, "base")) == 3
    assert pool.size() == 6


def test_take_hands_each_run_out_at_most_once_and_counts_hits_and_misses(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun]
) -> None:
    pool = make_pool(size_per_image=2)
    pool.warm("base")
    assert filled(pool, 2)
    asked = Limits(timeout_s=7, memory_mb=LIMITS.memory_mb, cpus=LIMITS.cpus)
    first, second, third = (take(pool, "base", asked) for _ in range(3))
    assert first is not None and second is not None and first is not second
    assert third is None
    assert (pool.hits, pool.misses) == (2, 1)
    assert first.timeout_s == 7  # the request's wall clock, set at hand-over
    assert filled(pool, 2)  # the miss asked for replacements
    later = [take(pool, "base", asked) for _ in range(2)]
    handed = [first, second, *later]
    assert None not in handed
    assert len({id(r) for r in handed}) == 4
    assert not any(r.removed for r in handed if r is not None)


def test_concurrent_takes_never_share_a_run(make_pool: Callable[..., WarmPool], runs: list[FakeRun]) -> None:
    pool = make_pool(size_per_image=4)
    pool.warm("base")
    assert filled(pool, 4)
    taken: list[FakeRun | None] = []
    go = threading.Barrier(8)

    def take_one() -> None:
        go.wait(timeout=5)
        taken.append(take(pool, "base"))

    takers = [threading.Thread(target=take_one) for _ in range(8)]
    for t in takers:
        t.start()
    for t in takers:
        t.join(timeout=5)
    handed = [r for r in taken if r is not None]
    assert len(taken) == 8
    assert len({id(r) for r in handed}) == len(handed) >= 4
    assert (pool.hits, pool.misses) == (len(handed), 8 - len(handed))


def test_a_cold_image_misses_once_and_is_then_kept_warm(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun]
) -> None:
    pool = make_pool(size_per_image=2)
    assert take(pool, "client-image") is None
    assert pool.misses == 1
    assert filled(pool, 2)
    assert take(pool, "client-image") is not None
    assert pool.hits == 1


def test_a_dead_run_is_removed_and_never_handed_out(make_pool: Callable[..., WarmPool], runs: list[FakeRun]) -> None:
    pool = make_pool(size_per_image=2)
    pool.warm("base")
    assert filled(pool, 2)
    runs[0].dead = True  # killed behind the pool's back
    taken = take(pool, "base")
    assert taken is runs[1]
    assert runs[0].removed
    assert pool.hits == 1


def test_only_dead_runs_make_a_miss(make_pool: Callable[..., WarmPool], runs: list[FakeRun]) -> None:
    pool = make_pool(size_per_image=2)
    pool.warm("base")
    assert filled(pool, 2)
    for r in runs:
        r.dead = True
    assert take(pool, "base") is None
    assert all(r.removed for r in runs[:2])
    assert (pool.hits, pool.misses) == (0, 1)


def test_beyond_max_images_the_coldest_unpinned_images_runs_are_removed(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun]
) -> None:
    pool = make_pool(size_per_image=1, max_images=2)
    pool.warm("base")  # pinned
    assert filled(pool, 1)
    assert take(pool, "colder") is None
    assert filled(pool, 2)
    assert take(pool, "hotter") is None  # a third image: "colder" goes, the pinned base stays
    assert all(r.removed for r in of(runs, "colder"))
    assert not any(r.removed for r in of(runs, "base"))
    assert filled(pool, 2)
    pool.warm("barrier")
    assert filled(pool, 3)
    assert len(of(runs, "colder")) == 1  # evicted images are no longer refilled


def test_pinned_images_are_never_evicted(make_pool: Callable[..., WarmPool], runs: list[FakeRun]) -> None:
    pool = make_pool(size_per_image=1, max_images=1)
    pool.warm("base-a")
    pool.warm("base-b")
    assert filled(pool, 2)
    assert take(pool, "client-image") is None
    assert filled(pool, 3)
    assert not any(r.removed for r in runs)
    assert take(pool, "base-a") is not None
    assert take(pool, "base-b") is not None


def test_a_run_that_fails_to_start_is_removed_and_the_pool_refills(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = FakeRun.start

    def flaky_start(self: FakeRun) -> None:
        if self is runs[0]:
            raise SandboxError("engine hiccup")
        real_start(self)

    monkeypatch.setattr(FakeRun, "start", flaky_start)
    pool = make_pool(size_per_image=1)
    pool.warm("base")
    assert wait_until(lambda: len(runs) >= 1)
    assert wait_until(lambda: runs[0].removed)
    assert pool.size() == 0
    assert take(pool, "base") is None  # the miss asks again
    assert filled(pool, 1)
    assert take(pool, "base") is runs[1]


def test_shutdown_removes_every_pooled_run_and_stops_refilling(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun]
) -> None:
    pool = make_pool(size_per_image=2)
    pool.warm("base")
    pool.warm("other")
    assert filled(pool, 4)
    taken = take(pool, "base")
    assert taken is not None
    pool.shutdown()
    assert pool.size() == 0
    assert all(r.removed for r in runs if r is not taken)
    assert not taken.removed  # a handed-out run is its caller's to remove
    made = len(runs)
    assert take(pool, "base") is None
    pool.replenish("base")
    pool.warm("third")
    assert len(runs) == made
    assert pool.size() == 0


def test_a_run_starting_during_shutdown_is_removed_not_pooled(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun], monkeypatch: pytest.MonkeyPatch
) -> None:
    starting, proceed = threading.Event(), threading.Event()
    real_start = FakeRun.start

    def slow_start(self: FakeRun) -> None:
        starting.set()
        proceed.wait(timeout=5)
        real_start(self)

    monkeypatch.setattr(FakeRun, "start", slow_start)
    pool = make_pool(size_per_image=1)
    pool.warm("base")
    stopper = threading.Thread(target=pool.shutdown)
    try:
        assert starting.wait(timeout=5)
        stopper.start()
        assert wait_until(lambda: closed(pool)), "shutdown never began"
    finally:
        proceed.set()
        if stopper.ident is not None:
            stopper.join(timeout=5)
    assert not stopper.is_alive()
    (run,) = runs
    assert run.removed
    assert pool.size() == 0


def test_a_run_being_handed_out_is_in_the_pools_or_its_takers_containers_at_every_moment(
    make_pool: Callable[..., WarmPool], runs: list[FakeRun]
) -> None:
    """What a janitor's sweep reads (the pool's containers, then the taker's) never misses it: none is reaped."""
    pool = make_pool(size_per_image=2)
    pool.warm("base")
    assert filled(pool, 2)
    dead = of(runs, "base")[0]
    dead.dead = True
    dead.remove = lambda: time.sleep(0.3)  # type: ignore[method-assign]  # take removes it before it returns
    claimed: set[str] = set()
    views: list[set[str]] = []
    taking = threading.Event()

    def sweep() -> None:
        while taking.is_set():
            views.append(pool.container_ids() | set(claimed))

    taking.set()
    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        taken = pool.take("base", LIMITS, claim=claimed.add)
    finally:
        taking.clear()
        sweeper.join()
    assert taken is not None and taken.container_id in claimed
    assert views and all(taken.container_id in view for view in views)
