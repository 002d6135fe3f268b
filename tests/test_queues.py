"""queues.py: the seven queues, their seed policies, lookup and key naming."""

from __future__ import annotations

import pytest

from app.errors import UnknownQueueError
from app.tasks import get_queue_spec
from queues import KEY_PREFIX, QUEUES, Isolation, key, queue_names

EXPECTED = ["sync", "reports", "cache-cleanup", "documents", "notifications", "harvest", "embeddings"]


def test_all_seven_queues_are_declared_in_order():
    assert queue_names() == EXPECTED
    assert all(QUEUES[name].name == name for name in EXPECTED)


def test_seed_policies():
    assert get_queue_spec("notifications").priority == "high"
    assert all(QUEUES[name].priority == "normal" for name in EXPECTED if name != "notifications")
    assert get_queue_spec("reports").timeout == 300
    assert get_queue_spec("sync").concurrency == 5
    assert get_queue_spec("reports").concurrency == 3
    assert get_queue_spec("documents").isolation is Isolation.FORK


def test_specs_are_frozen():
    with pytest.raises(AttributeError):
        QUEUES["sync"].timeout = 1  # type: ignore[misc]


def test_unknown_queue_lists_the_valid_names():
    with pytest.raises(UnknownQueueError) as excinfo:
        get_queue_spec("emails")
    assert excinfo.value.name == "emails"
    assert excinfo.value.valid == EXPECTED
    assert "emails" in str(excinfo.value)
    assert all(name in str(excinfo.value) for name in EXPECTED)


def test_key_is_prefix_queue_kind_parts():
    assert KEY_PREFIX == "bullrq"
    assert key("sync", "paused") == "bullrq:sync:paused"
    assert key("cache-cleanup", "rate", "2024", "1") == "bullrq:cache-cleanup:rate:2024:1"
