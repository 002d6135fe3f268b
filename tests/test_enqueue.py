"""Enqueueing by task type on fakeredis: JSON payloads, queue policy, options, and running only registered code."""

from __future__ import annotations

import json
import random
import zlib

import pytest
from rq.job import JobStatus
from rq.queue import Queue

from app.errors import InvalidJobError, UnknownQueueError, UnknownTaskError
from app.runtime.enqueue import COMPRESS_FROM, PRIORITIES, JobOptions, enqueue, retry_intervals
from app.runtime.jobs import SERIALIZER, fetch_job, get_queue
from app.runtime.worker import build_worker
from app.tasks import get_queue_spec, queue_keys
from queues import Backoff, BackoffType


def ping(conn, data=None, **options):
    return enqueue(conn, "system.ping", data, {"queue": "sync", **options})


def test_job_lands_on_the_chosen_queue_as_json(fake_redis):
    job = enqueue(fake_redis, "system.ping", {"echo": {"n": 1}}, {"queue": "harvest"})
    assert job.origin == "harvest"
    assert get_queue("harvest", fake_redis).job_ids == [job.id]
    assert get_queue("sync", fake_redis).count == 0
    raw = fake_redis.hget(f"rq:job:{job.id}", "data")  # small data is stored as it is, JSON
    assert json.loads(raw) == ["system.ping", None, [], {"echo": {"n": 1}}]
    stored = fetch_job(job.id, fake_redis)
    assert stored.func_name == "system.ping"
    assert stored.task_type == "system.ping"
    assert stored.kwargs == {"echo": {"n": 1}}
    assert stored.get_status() == JobStatus.QUEUED


def test_large_data_is_stored_compressed_as_rq_stores_it_and_both_read_back(fake_redis):
    text = "x" * COMPRESS_FROM
    job = enqueue(fake_redis, "system.ping", {"echo": text}, {"queue": "harvest"})
    raw = fake_redis.hget(f"rq:job:{job.id}", "data")
    assert len(raw) < COMPRESS_FROM and json.loads(zlib.decompress(raw))[3] == {"echo": text}
    assert fetch_job(job.id, fake_redis).kwargs == {"echo": text}  # RQ's reader
    assert fetch_job(ping(fake_redis, {"echo": 1}).id, fake_redis).kwargs == {"echo": 1}


def test_queue_policy_applies_by_default(fake_redis):
    job = enqueue(fake_redis, "system.ping", {}, {"queue": "reports"})
    spec = get_queue_spec("reports")
    assert job.timeout == 300
    assert job.result_ttl == spec.result_ttl
    assert job.failure_ttl == spec.failure_ttl
    assert (job.priority, job.attempts) == (PRIORITIES["normal"], spec.attempts)
    stored = fetch_job(job.id, fake_redis)
    assert (stored.priority, stored.attempts, stored.attempt) == (PRIORITIES["normal"], spec.attempts, 1)
    assert job.retries_left == spec.attempts - 1


def test_each_priority_waits_in_its_own_lane_in_fifo_order(fake_redis):
    first = ping(fake_redis)
    low = ping(fake_redis, priority="low")
    urgent = ping(fake_redis, priority="high")
    second = ping(fake_redis)
    keys = queue_keys("sync")
    assert get_queue("sync", fake_redis).job_ids == [first.id, second.id]  # RQ's list holds normal priority
    assert fake_redis.lrange(keys.lane(1), 0, -1) == [urgent.id.encode()]
    assert fake_redis.lrange(keys.lane(10), 0, -1) == [low.id.encode()]
    assert fetch_job(urgent.id, fake_redis).priority == 1


def test_notifications_are_high_priority_by_default(fake_redis):
    first = enqueue(fake_redis, "system.ping", {}, {"queue": "notifications"})
    second = enqueue(fake_redis, "system.ping", {}, {"queue": "notifications"})
    assert second.priority == PRIORITIES["high"]
    lane = queue_keys("notifications").lane(PRIORITIES["high"])
    assert fake_redis.lrange(lane, 0, -1) == [first.id.encode(), second.id.encode()]


def test_delay_puts_the_job_in_the_scheduled_registry(fake_redis):
    job = ping(fake_redis, delay=120)
    queue = get_queue("sync", fake_redis)
    assert queue.job_ids == []
    assert queue.scheduled_job_registry.get_job_ids() == [job.id]
    assert fetch_job(job.id, fake_redis).get_status() == JobStatus.SCHEDULED


def test_attempts_and_backoff_become_rq_retries(fake_redis):
    job = ping(fake_redis, attempts=4, backoff={"type": "fixed", "delay": 7}, timeout=42)
    stored = fetch_job(job.id, fake_redis)
    assert stored.retries_left == 3
    assert stored.retry_intervals == [7, 7, 7]
    assert stored.timeout == 42
    assert stored.attempts == 4


def test_queue_backoff_is_the_default(fake_redis):
    job = ping(fake_redis)  # sync: 3 attempts, fixed 30 s
    assert (job.retries_left, job.retry_intervals) == (2, [30, 30])


def test_a_single_attempt_means_no_retry(fake_redis):
    assert ping(fake_redis, attempts=1).retries_left is None


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"retries": 3}, "retries"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": 0}, "priority"),
        ({"priority": 11}, "priority"),
        ({"priority": True}, "priority"),
        ({"delay": -1}, "delay"),
        ({"delay": "10"}, "delay"),
        ({"delay": True}, "delay"),
        ({"attempts": 0}, "attempts"),
        ({"attempts": 2.5}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"timeout": False}, "timeout"),
        ({"backoff": 5}, "backoff"),
        ({"backoff": {"type": "linear", "delay": 5}}, "backoff.type"),
        ({"backoff": {"type": "fixed", "delay": -5}}, "delay"),
        ({"backoff": {"type": "fixed", "every": 5}}, "backoff"),
        ({"queue": 3}, "queue"),
    ],
)
def test_options_parse_rejects_bad_values(raw, message):
    with pytest.raises(InvalidJobError, match=message):
        JobOptions.parse(raw)


def test_options_parse_rejects_an_unknown_queue():
    with pytest.raises(UnknownQueueError, match="valid queues"):
        JobOptions.parse({"queue": "emails"})


def test_options_parse_reads_every_option():
    opts = JobOptions.parse(
        {"queue": "sync", "priority": 3, "delay": 1.5, "attempts": 2, "backoff": {"type": "fixed"}, "timeout": 9}
    )
    assert opts == JobOptions("sync", 3, 1.5, 2, Backoff(BackoffType.FIXED, Backoff().delay), 9)
    assert JobOptions.parse(None) == JobOptions()
    assert JobOptions.parse({"priority": "low"}).priority == PRIORITIES["low"]


def test_ping_needs_a_queue(fake_redis):
    with pytest.raises(InvalidJobError, match="option 'queue'"):
        enqueue(fake_redis, "system.ping", {})


@pytest.mark.parametrize("sleep", [61, -1, True, "5"])
def test_ping_rejects_a_bad_sleep(fake_redis, sleep):
    with pytest.raises(InvalidJobError, match="sleep"):
        ping(fake_redis, {"sleep": sleep})
    assert get_queue("sync", fake_redis).count == 0


def test_data_must_be_json_and_match_the_handler(fake_redis):
    with pytest.raises(InvalidJobError, match="JSON"):
        ping(fake_redis, {"echo": {1, 2}})
    with pytest.raises(InvalidJobError, match="unknown field 'command'; fields: sleep, echo"):
        ping(fake_redis, {"command": "rm -rf /"})


def test_unknown_type_is_rejected(fake_redis):
    with pytest.raises(UnknownTaskError, match="system.ping"):
        enqueue(fake_redis, "os.system", {}, {"queue": "sync"})


def test_fixed_retry_intervals():
    assert retry_intervals(Backoff(BackoffType.FIXED, 7.4), 3) == [7, 7, 7]
    assert retry_intervals(Backoff(BackoffType.FIXED, 7), 0) == []


@pytest.mark.parametrize("seed", range(20))
def test_exponential_retry_intervals_double_with_bounded_jitter(seed):
    intervals = retry_intervals(Backoff(BackoffType.EXPONENTIAL, 10), 5, random.Random(seed))
    assert len(intervals) == 5
    for n, seconds in enumerate(intervals):
        assert round(10 * 2**n * 0.8) <= seconds <= round(10 * 2**n * 1.2)
    assert intervals == retry_intervals(Backoff(BackoffType.EXPONENTIAL, 10), 5, random.Random(seed))


def test_exponential_jitter_varies_and_never_drops_below_one_second():
    runs = {tuple(retry_intervals(Backoff(BackoffType.EXPONENTIAL, 100), 3, random.Random(s))) for s in range(10)}
    assert len(runs) > 1
    assert retry_intervals(Backoff(BackoffType.EXPONENTIAL, 0), 3, random.Random(0)) == [1, 1, 1]


def test_worker_runs_a_ping_in_process(fake_redis):
    # BullWorker runs inline (no fork) on non-FORK queues, so it works on fakeredis.
    job = enqueue(fake_redis, "system.ping", {"echo": {"ok": [1, 2]}}, {"queue": "sync"})
    worker = build_worker(["sync"], fake_redis, "test")
    assert worker.work(burst=True, with_scheduler=False)
    done = fetch_job(job.id, fake_redis)
    assert done.get_status() == JobStatus.FINISHED
    assert done.return_value() == {"ok": [1, 2]}


def test_a_planted_function_path_fails_instead_of_running(fake_redis, tmp_path):
    marker = tmp_path / "pwned"
    planted = Queue("sync", connection=fake_redis, serializer=SERIALIZER).enqueue("os.system", f"touch {marker}")
    assert planted.func_name == "os.system"
    build_worker(["sync"], fake_redis, "test").work(burst=True, with_scheduler=False)
    job = fetch_job(planted.id, fake_redis)
    assert job.get_status() == JobStatus.FAILED
    assert "UnknownTaskError" in job.latest_result().exc_string
    assert not marker.exists()


def test_enqueue_answers_without_reading_the_job_back(fake_redis):
    """What `enqueue` knows it returns at once; any other job attribute is read from Redis when first asked."""
    job = enqueue(fake_redis, "system.ping", {"echo": 1}, {"queue": "harvest"})
    assert (job.origin, job.func_name, job.created, job.replicas) == ("harvest", "system.ping", True, None)
    assert job.get_status() == JobStatus.QUEUED and job.key == f"rq:job:{job.id}"
    again = enqueue(fake_redis, "system.ping", {}, {"queue": "harvest", "jobId": "once"})
    held = enqueue(fake_redis, "system.ping", {}, {"queue": "harvest", "jobId": "once"})
    assert (held.created, held.id, held.origin) == (False, again.id, "harvest")


def test_rq_time_writes_rqs_date_format():
    from datetime import UTC, datetime

    from rq.utils import utcformat

    from app.runtime.leases import rq_time

    rng = random.Random(4)
    moments = [rng.uniform(0, 4e9) for _ in range(20000)]
    moments += [int(m) + edge for m in moments[:50] for edge in (0.0, 0.5e-6, 0.9999995, 0.9999999)]
    for moment in moments:
        assert rq_time(moment) == utcformat(datetime.fromtimestamp(moment, UTC)), moment


@pytest.mark.parametrize("options", [{"queue": "harvest"}, {"queue": "reports", "attempts": 1, "priority": "high"},
                                     {"queue": "sync", "timeout": 30, "backoff": {"type": "fixed", "delay": 2}}])
def test_a_plain_job_is_sent_as_the_general_path_would_send_it(options):
    """The template a plain job's command is filled into says what `_enqueue_command` says for that job."""
    from hiredis import pack_command

    from app.runtime.enqueue import JOB_KEY_PREFIX, _enqueue_command, _prepare, parsed_options, stream_cap

    request = _prepare("system.ping", {"echo": "hi"}, options)
    command = list(request.command)
    opts = parsed_options(options)
    spec = get_queue_spec(opts.queue)
    fields = dict(zip(command[3 + 5 + 12 :: 2], command[3 + 5 + 13 :: 2], strict=True))
    general = _enqueue_command("system.ping", opts.queue, spec, opts, stream_cap(), JOB_KEY_PREFIX + request.id,
                               request.id, fields["created_at"], fields["data"], fields["description"],
                               fields.get("retry_intervals"))  # fmt: skip
    assert command == list(general) and request.command.packed == pack_command(general)
