"""The service's one Docker client: one keep-alive pool for the engine's socket, and closed means closed."""

from __future__ import annotations

import docker
import pytest
import requests

from app.errors import DockerUnavailable
from app.sandbox.docker_gateway import DockerGateway


def _pools(gateway: DockerGateway) -> dict[str, object]:
    pools = gateway.client.api.adapters["http+docker://"].pools  # urllib3's RecentlyUsedContainer: no iteration
    urls = pools.keys()
    return {url: pools[url] for url in urls}


def test_calls_about_different_containers_share_one_pool_of_kept_alive_connections(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """docker-py would key a pool by each container's URL: a new connection for nearly every call."""
    gateway = DockerGateway()
    try:
        api = gateway.client.api
        for _ in range(3):
            cid = api.create_container(base_image, command=["true"], network_disabled=True)["Id"]
            api.start(cid)
            api.wait(cid, timeout=30)
            api.inspect_container(cid)
            api.remove_container(cid, force=True)
        pools = _pools(gateway)
        assert len(pools) == 1
        (pool,) = pools.values()
        assert pool.num_connections <= 2  # type: ignore[attr-defined]  # 15 calls, one after the other
    finally:
        gateway.close()


def test_a_closed_gateway_refuses_calls_rather_than_open_connections_nobody_closes(
    docker_client: docker.DockerClient,
) -> None:
    gateway = DockerGateway()
    api = gateway.client.api  # what a run that outlives the service's shutdown still holds
    assert api.ping()
    gateway.close()
    with pytest.raises(DockerUnavailable, match="shutting down"):
        gateway.client  # noqa: B018  # the property is the call under test
    with pytest.raises(requests.ConnectionError, match="shutting down"):
        api.ping()
    assert not gateway.ping()
