"""Fixtures of the engine tests: one local Ray instance for the whole session."""

import secrets
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_token() -> Iterator[str]:
    """Token authentication on, with a token of the tests' own, for every Ray process."""
    token = secrets.token_hex(16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", token)
        yield token


@pytest.fixture(scope="session")
def local_ray(ray_token: str) -> Iterator[None]:
    """A local Ray instance of 2 CPUs for the whole session (the engine joins it)."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()
