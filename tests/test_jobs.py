"""app.runtime.jobs: RQ statuses under Bull's state names."""

from __future__ import annotations

import pytest
from rq.job import JobStatus

from app.runtime.jobs import State, state_of


@pytest.mark.parametrize(
    "status, state",
    [
        (JobStatus.QUEUED, "waiting"),
        (JobStatus.SCHEDULED, "delayed"),
        (JobStatus.DEFERRED, "deferred"),
        (JobStatus.STARTED, "active"),
        (JobStatus.FINISHED, "completed"),
        (JobStatus.FAILED, "failed"),
        (JobStatus.STOPPED, "canceled"),
        (JobStatus.CANCELED, "canceled"),
    ],
)
def test_state_of_maps_rq_status_to_bull_name(status, state):
    assert state_of(status) == state
    assert state_of(status.value) is State(state)  # the raw string read from Redis maps the same


def test_every_rq_status_has_a_state():
    assert {state_of(status) for status in JobStatus} == set(State)
    assert state_of(JobStatus.CREATED) is State.WAITING  # between create_job and its enqueue


def test_no_status_has_no_state():
    assert state_of(None) is None
