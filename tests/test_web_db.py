"""The web app's PostgreSQL pool (app.web.db): one per app, however many requests open it at once."""

from __future__ import annotations

import threading

import pytest

from app.web.db import get_pool

pytestmark = pytest.mark.postgres


def test_requests_arriving_together_open_one_pool(app):
    pools, start = [], threading.Barrier(8)

    def first_request():
        with app.app_context():
            start.wait(timeout=10)
            pools.append(get_pool())

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pools) == 8 and all(pool is app.extensions["bullrq.db"] for pool in pools)
