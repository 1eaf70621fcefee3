"""Fault tests run on a server of their own, which they may stop and restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster
from tests.support.postgres import Databases, with_dbname


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    server = Cluster()
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def cluster_databases(cluster: Cluster) -> Databases:
    return Databases(cluster.url())


@pytest.fixture
def database_url(cluster: Cluster, cluster_databases: Databases) -> Iterator[str]:
    """A fresh database on this module's own server."""
    if not cluster.is_running():
        cluster.start()
    name = cluster_databases.create()
    yield with_dbname(cluster.url(), name)
    if cluster.is_running():
        cluster_databases.drop(name)
