"""Marking client images used: the order of last use stays exact, without a store write for every run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.images import cache
from app.images.cache import ImageCache
from app.store import Store


@pytest.fixture
def marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ImageCache, list[str], Store]]:
    store = Store(tmp_path / "runner.sqlite3")
    written: list[str] = []
    touch = store.touch_image

    def counted(engine: str, tag: str, when: float) -> None:
        written.append(tag)
        touch(engine, tag, when)

    monkeypatch.setattr(store, "touch_image", counted)
    images = ImageCache(store, lambda: "e1", prefix="p", max_images=5, max_mb=100, client_max_images=5)
    yield images, written, store
    store.close()


def use(images: ImageCache, *tags: str) -> None:
    for tag in tags:
        with images.using(tag):
            pass


def test_runs_of_one_image_in_a_row_mark_it_once(marks: tuple[ImageCache, list[str], Store]) -> None:
    images, written, _ = marks
    use(images, "a", "a", "a")
    assert written == ["a"]


def test_another_image_in_between_is_marked_at_once_and_keeps_the_order(
    marks: tuple[ImageCache, list[str], Store],
) -> None:
    images, written, store = marks
    use(images, "a", "b", "a")
    assert written == ["a", "b", "a"]
    last_used = store.image_last_used("e1")
    assert last_used["a"] >= last_used["b"]


def test_the_same_image_is_marked_again_after_a_while(
    marks: tuple[ImageCache, list[str], Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, written, _ = marks
    use(images, "a")
    monkeypatch.setattr(cache, "RETOUCH_S", 0.0)
    use(images, "a")
    assert written == ["a", "a"]
