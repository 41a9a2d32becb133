"""A dependency image found current is not asked of Docker again while the pool holds a container of it.

Against a stand-in for docker-py's image inspect that counts the looks (what is tested is when the service asks;
building and running real dependency images is in tests/integration/test_dependencies.py).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import docker
import pytest

from app.images import client_images
from app.images.client_images import BuildHooks, ClientImages
from app.sandbox.container import LABEL

TAG = "datapane-run-acme:abc123"


class Engine:
    """Knows the base image and one dependency image built from `built_from`."""

    def __init__(self) -> None:
        self.base, self.built_from, self.looks = "sha256:base1", "sha256:base1", 0

    def inspect_image(self, ref: str) -> dict[str, Any]:
        if ref == TAG:
            self.looks += 1
            return {"Id": "sha256:deps", "Config": {"Labels": {f"{LABEL}.base-id": self.built_from}}}
        return {"Id": self.base}


def ensure(images: ClientImages, engine: Engine, held: bool) -> str:
    client = cast(docker.DockerClient, SimpleNamespace(api=engine))
    image_id, built = images.ensure(
        client, tag=TAG, client_name="acme", requirements=("pkg==1.0",), hooks=BuildHooks(print, {}),
        held=lambda image_id: held,
    )  # fmt: skip
    assert not built
    return image_id


@pytest.fixture
def images(monkeypatch: pytest.MonkeyPatch) -> ClientImages:
    monkeypatch.setattr(client_images, "BASE_ID_TTL_S", 0.0)  # the base is asked every time: a change is seen
    return ClientImages(base="datapane-py-slim", build_memory_mb=512, build_timeout_s=60, download_mb=100)


def test_a_held_image_found_current_is_taken_without_asking_again(images: ClientImages) -> None:
    engine = Engine()
    assert ensure(images, engine, held=True) == "sha256:deps"  # first: asked
    assert ensure(images, engine, held=True) == "sha256:deps"
    assert engine.looks == 1


def test_an_image_no_container_holds_is_asked_again(images: ClientImages) -> None:
    engine = Engine()
    ensure(images, engine, held=False)
    ensure(images, engine, held=False)
    assert engine.looks == 2


def test_a_new_base_or_an_old_finding_is_asked_again(images: ClientImages, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine()
    ensure(images, engine, held=True)
    engine.base = engine.built_from = "sha256:base2"  # a new base image, and the tag rebuilt from it
    ensure(images, engine, held=True)
    assert engine.looks == 2
    monkeypatch.setattr(client_images, "KNOWN_TTL_S", 0.0)
    ensure(images, engine, held=True)
    assert engine.looks == 3
