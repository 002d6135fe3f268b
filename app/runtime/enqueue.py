"""Enqueueing by task type: the one helper that turns (type, data, options) into a job under its queue's policy."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import re
import time
import zlib
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring_ascii
from typing import Any, NamedTuple

from redis import Redis
from rq.job import JobStatus

from app.config import size_limits
from app.connections import SLOT, CommandTemplate
from app.errors import InvalidJobError, JobDataTooLargeError
from app.runtime.jobs import BullJob, fetch_job
from app.runtime.leases import rq_time
from app.runtime.redis_scripts import SCRIPTS
from app.store.rows import stream_cap
from app.tasks import get_queue_spec, get_task, queue_keys
from queues import JOB_KEY_PREFIX, PRIORITY_RANGE, QUEUES_SET, Backoff, BackoffType, QueueKeys, QueueSpec

logger = logging.getLogger(__name__)

#: named priorities; numbers 1 (most urgent) to 10 are accepted too, as in Bull
PRIORITIES = {"high": 1, "normal": 5, "low": 10}
#: seconds: the longest delay or timeout an option may ask for (30 days)
MAX_SECONDS = 30 * 24 * 3600
MAX_ATTEMPTS = 100
_OPTION_NAMES = (
    "queue", "priority", "delay", "attempts", "backoff", "timeout", "jobId", "dependsOn", "onParentFailure", "group",
    "groupConcurrency",
)  # fmt: skip
#: the most jobs of one group a per-job `groupConcurrency` may allow at once
MAX_GROUP_CONCURRENCY = 1000
#: what a job does when a parent fails for good or is canceled: end failed (naming it), end canceled, or run anyway
PARENT_FAILURE_MODES = ("fail", "cancel", "ignore")
#: parents one job may wait for
MAX_PARENTS = 100
#: what RQ allows in a job id
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_DEDUP_KEY = re.compile(r"^[A-Za-z0-9._:/@-]{1,200}$")
_JITTER = random.Random()
#: seconds a dedup key outlives its job's due time plus timeout (it is freed as soon as its job ends): the key's
#: TTL is delay + timeout + this at enqueue, and is pushed back by every delayed retry (finish-9.lua)
DEDUP_TTL = 7 * 24 * 3600
#: seconds: the longest wait an exponential backoff grows to (a longer base delay is kept as it is)
MAX_BACKOFF = 24 * 3600
#: bytes of job data (JSON) from which it is stored compressed, as RQ stores it; below, it is stored as it is (RQ's
#: readers and ours take both): deflating a few dozen bytes saves nothing and costs a compressor's state per job
COMPRESS_FROM = 1024
#: job data as RQ's JSON serializer reads it; NaN and Infinity are not JSON, whatever Python writes
_JOB_DATA = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


# `_JOB_DATA.encode`'s C encoder, built once (`JSONEncoder.encode` builds one per call: most of its time for a
# small job); circular data raises RecursionError instead of ValueError
_c_encoder = c_make_encoder and c_make_encoder(None, _not_json, encode_basestring_ascii, None, ":", ",", False, False,
                                               False)  # fmt: skip


def to_json(value: Any) -> str:
    """`value` as job data's JSON. Raises TypeError, ValueError (NaN, Infinity) or RecursionError."""
    return "".join(_c_encoder(value, 0)) if _c_encoder else _JOB_DATA.encode(value)


@dataclass(frozen=True)
class JobOptions:
    """Per-job options; None means "the queue's default"."""

    queue: str | None = None
    priority: int | None = None
    delay: float | None = None  #: seconds
    attempts: int | None = None
    backoff: Backoff | None = None
    timeout: int | None = None  #: seconds
    dedup: str | None = None  #: a second job with this key, while the first is pending, is not created
    depends_on: tuple[str, ...] = ()  #: ids of jobs that must complete first; the job waits "deferred" until then
    on_parent_failure: str = "fail"  #: when a parent fails for good or is canceled: fail | cancel | ignore
    group: str | None = None  #: workers take a queue's jobs in turns across groups (e.g. one per workspace)
    group_concurrency: int | None = None  #: most jobs of its group running at once (None: the queue's default)

    @classmethod
    def parse(cls, raw: dict | None) -> JobOptions:
        """Options from their JSON form (`{"queue", "priority", "delay", "attempts", "backoff", "timeout", "jobId",
        "dependsOn", "onParentFailure", "group", "groupConcurrency"}`).

        Raises:
            InvalidJobError: an option is unknown or out of range; the message names it.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidJobError(f"options must be a JSON object, not {type(raw).__name__}")
        unknown = sorted(set(raw) - set(_OPTION_NAMES))
        if unknown:
            raise InvalidJobError(f"unknown option {unknown[0]!r}; known options: {', '.join(_OPTION_NAMES)}")
        dedup = raw.get("jobId")
        if dedup is not None and (not isinstance(dedup, str) or not _DEDUP_KEY.match(dedup)):
            raise InvalidJobError("option 'jobId' must be 1 to 200 characters: letters, digits and . _ : / @ -")
        group = raw.get("group")
        if group is not None and not _is_group(group):
            raise InvalidJobError("option 'group' must be a text of 1 to 200 characters, without NUL")
        queue = raw.get("queue")
        if queue is not None:
            if not isinstance(queue, str):
                raise InvalidJobError("option 'queue' must be a queue name")
            get_queue_spec(queue)
        depends_on = _parents(raw.get("dependsOn"))
        mode = "fail" if raw.get("onParentFailure") is None else raw["onParentFailure"]
        if mode not in PARENT_FAILURE_MODES:
            raise InvalidJobError("option 'onParentFailure' must be fail, cancel or ignore")
        if depends_on and raw.get("delay"):
            raise InvalidJobError("options 'delay' and 'dependsOn' cannot be combined: a dependent job runs as soon "
                                  "as its parents have completed")
        return cls(
            queue=queue,
            priority=_priority(raw.get("priority")),
            delay=_number(raw, "delay", 0, MAX_SECONDS),
            attempts=_integer(raw, "attempts", 1, MAX_ATTEMPTS),
            backoff=_backoff(raw.get("backoff")),
            timeout=_integer(raw, "timeout", 1, MAX_SECONDS),
            dedup=dedup,
            depends_on=depends_on,
            on_parent_failure=mode,
            group=group,
            group_concurrency=_integer(raw, "groupConcurrency", 1, MAX_GROUP_CONCURRENCY),
        )


def parsed_options(raw: dict | None) -> JobOptions:
    """`JobOptions.parse(raw)`, remembered for options of plain values (most callers send the same few): a
    producer pays the checks once per distinct options, not once per job."""
    if not raw:
        return JobOptions.parse(raw)
    try:  # each value with its type: 1, 1.0 and True are equal keys, and options tell them apart
        return _parsed_options(tuple((name, value.__class__, value) for name, value in raw.items()))
    except (AttributeError, TypeError):  # not a dict, or a value that is a list or a dict (unhashable)
        return JobOptions.parse(raw)


@functools.lru_cache(maxsize=256)
def _parsed_options(items: tuple) -> JobOptions:
    return JobOptions.parse({name: value for name, _kind, value in items})


def _is_group(value: Any) -> bool:
    """A group name: any text a key can hold (a workspace's name, say), bounded; "" stands for no group."""
    return isinstance(value, str) and 1 <= len(value) <= 200 and "\x00" not in value


def _parents(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not 1 <= len(value) <= MAX_PARENTS
            or not all(isinstance(v, str) and _JOB_ID.match(v) for v in value)):  # fmt: skip
        raise InvalidJobError(f"option 'dependsOn' must be a job id or a list of 1 to {MAX_PARENTS} job ids")
    return tuple(dict.fromkeys(value))


def _number(raw: dict, name: str, low: float, high: float) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidJobError(f"option {name!r} must be a number from {low} to {high}")
    return value


def _integer(raw: dict, name: str, low: int, high: int) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobError(f"option {name!r} must be a whole number from {low} to {high}")
    return value


def _priority(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10:
        return value
    raise InvalidJobError("option 'priority' must be high, normal, low or a whole number from 1 (first) to 10")


def _backoff(value: Any) -> Backoff | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"type", "delay"}:
        raise InvalidJobError('option \'backoff\' must look like {"type": "fixed" | "exponential", "delay": seconds}')
    try:
        kind = BackoffType(value.get("type", BackoffType.EXPONENTIAL.value))
    except ValueError:
        raise InvalidJobError("option 'backoff.type' must be fixed or exponential") from None
    delay = _number(value, "delay", 0, MAX_SECONDS)
    return Backoff(kind, delay if delay is not None else Backoff().delay)


def retry_intervals(backoff: Backoff, retries: int, rng: random.Random | None = None) -> list[int]:
    """Seconds to wait before each retry: fixed, or doubling per retry with +-20 % jitter up to `MAX_BACKOFF` (or
    the base delay, when longer); whole seconds, as RQ takes them."""
    if backoff.type is BackoffType.FIXED:
        return [max(0, round(backoff.delay))] * retries
    cap, doubled = _doubling(backoff.delay, retries)
    jitter = (rng or _JITTER).random  # uniform(0.8, 1.2) without its call, and rounding without round()'s
    intervals = []
    for delay in doubled:
        seconds = int(delay * (0.8 + 0.4 * jitter()) + 0.5)
        intervals.append(cap if seconds > cap else seconds or 1)
    return intervals


@functools.lru_cache(maxsize=64)
def _doubling(delay: float, retries: int) -> tuple[int, tuple[float, ...]]:
    """An exponential backoff's cap and its delays before jitter (the same for every job of a queue)."""
    # 2**n stops growing once past the cap (100 attempts would otherwise reach 10**30 seconds)
    return max(MAX_BACKOFF, round(delay)), tuple(delay * 2 ** min(n, 40) for n in range(retries))


def new_job_id() -> str:
    """A random job id in uuid4's form (what `str(uuid.uuid4())` gives, in a third of its time)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Enqueued(NamedTuple):
    """What `enqueue_many` reports per request."""

    id: str
    queue: str
    type: str
    created: bool  #: False: a pending job held the dedup key; `id` is that job's


@functools.cache
def max_job_data_bytes() -> int:
    """MAX_JOB_DATA_BYTES, read once per process."""
    return size_limits().max_job_data_bytes


def enqueue(
    connection: Redis,
    task_type: str,
    data: dict | None = None,
    options: JobOptions | dict | None = None,
    *,
    schedule_id: str | None = None,
    schedule_slot: float | None = None,
    job_id: str | None = None,
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
) -> EnqueuedJob:
    """Create a job of a registered task type under its queue's policy.

    Args:
        connection: the Redis connection.
        task_type: a registered task type, e.g. `system.ping`.
        data: the job's JSON object; its keys are the handler's keyword arguments (camelCase accepted).
        options: `JobOptions` or their JSON form.
        schedule_id: the schedules.yaml entry that fires this job (recorded with its runs).
        schedule_slot: the due time it fires for, epoch seconds (None: run on request).
        job_id: the id to give the job (the scheduler claims a slot with it before enqueueing).
        wait_replicas: with Redis replicas (Sentinel), wait until this many have the job, or `wait_timeout`
            seconds pass. Replication is asynchronous: a job only the master had is lost if the master dies.

    Returns:
        An `EnqueuedJob`: `id`, `origin` (its queue), `func_name` (its task type), `created` (False when a dedup
        key matched a pending job: that earlier job's id is given and nothing was created) and, with
        `wait_replicas`, `replicas` (how many replicas confirmed having it; fewer than asked when the wait timed
        out). Any other attribute of an RQ job loads the job from Redis on first use.

    Raises:
        UnknownTaskError: the type is not registered.
        UnknownQueueError: `options.queue` names no declared queue.
        InvalidJobError: the data or options are not acceptable for this type.
    """
    request = _prepare(task_type, data, options, schedule_id=schedule_id, schedule_slot=schedule_slot, job_id=job_id)
    outcomes, replicas = _submit(connection, [request], wait_replicas, wait_timeout)
    return EnqueuedJob(outcomes[0], replicas, connection)


class EnqueuedJob:
    """What `enqueue` returns: what it knows without asking Redis again (most callers read the id only); any other
    attribute of an RQ job (`get_status()`, `key`, `enqueued_at`...) loads the job from Redis once, as it is now."""

    __slots__ = ("id", "origin", "func_name", "created", "replicas", "_connection", "_job")

    def __init__(self, outcome: Enqueued, replicas: int | None, connection: Redis):
        self.id, self.origin, self.func_name, self.created = outcome.id, outcome.queue, outcome.type, outcome.created
        self.replicas = replicas
        self._connection = connection
        self._job: BullJob | None = None
        if not self.created:  # the earlier job's own queue and type (a dedup key may be held by another type)
            self._job = fetch_job(self.id, connection)
            if self._job is not None:
                self.origin, self.func_name = self._job.origin, self._job.func_name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy and pickle probe dunders: no Redis round trip for those
            raise AttributeError(name)
        if self._job is None:
            self._job = fetch_job(self.id, self._connection)
            if self._job is None:
                raise AttributeError(f"{name}: job {self.id} is no longer in Redis")
        return getattr(self._job, name)

    def __repr__(self) -> str:
        return f"<EnqueuedJob {self.id} {self.func_name} on {self.origin}{'' if self.created else ' (existing)'}>"


def enqueue_many(connection: Redis, requests: list[tuple[str, dict | None, JobOptions | dict | None]]) -> list:
    """Create many jobs in one round trip (same rules as `enqueue`); every request is validated before any is sent.

    Returns:
        An `Enqueued` per request, in order.
    """
    return _submit(connection, [_prepare(*request) for request in requests])[0]


def request_from_json(body: Any, what: str = "") -> tuple[str, Any, Any]:
    """(type, data, options) of a job's JSON form `{"type", "data", "options"}` (data and options are checked when
    the job is prepared); `what` names the job in errors.

    Raises:
        InvalidJobError: `body` is not of that form.
    """
    if not isinstance(body, dict):
        raise InvalidJobError(f"{what}a job must be a JSON object: {{type, data, options}}")
    if not isinstance(body.get("type"), str):
        raise InvalidJobError(f"{what}'type' (a registered task type) is required")
    unknown = sorted(set(body) - {"type", "data", "options"})
    if unknown:
        raise InvalidJobError(f"{what}unknown field {unknown[0]!r}; fields: type, data, options")
    return body["type"], body.get("data"), body.get("options")


class _Request(NamedTuple):
    id: str
    queue: str
    type: str
    command: tuple  #: the enqueue script's call
    parents: tuple[str, ...] = ()


def check_parents(connection: Redis, requests: list[_Request]) -> None:
    """Raise InvalidJobError for the first parent that is neither in Redis nor one of the earlier `requests` (one
    round trip, only when a request has parents): nothing is sent while one is missing."""
    wanted = list(dict.fromkeys(p for request in requests for p in request.parents))
    if not wanted:
        return
    with connection.pipeline(transaction=False) as pipe:
        for parent in wanted:
            pipe.exists(JOB_KEY_PREFIX + parent)
        exists = dict(zip(wanted, pipe.execute(), strict=True))
    earlier: set[str] = set()
    for request in requests:
        for parent in request.parents:
            if not exists[parent] and parent not in earlier:
                raise missing_parent(parent)
        earlier.add(request.id)


def missing_parent(parent: str) -> InvalidJobError:
    return InvalidJobError(f"option 'dependsOn': no job {parent!r} (it never existed, or it ended and expired)")


def _submit(
    connection: Redis, requests: list[_Request], wait_replicas: int = 0, wait_timeout: float = 1.0
) -> tuple[list[Enqueued], int | None]:
    """Send the requests in one round trip; returns their outcomes and, with `wait_replicas`, WAIT's answer."""
    check_parents(connection, requests)
    calls = [request.command for request in requests]
    if wait_replicas:  # in the same round trip: WAIT counts the writes of its own connection
        calls.append(("WAIT", wait_replicas, max(1, int(wait_timeout * 1000))))
    replies = SCRIPTS.run(connection, calls)
    for created, job_id in replies[: len(requests)]:
        if created == -1:  # expired since it was checked
            raise missing_parent(job_id.decode())
    outcomes = [
        Enqueued(job_id.decode(), request.queue, request.type, bool(created))
        for request, (created, job_id) in zip(requests, replies[: len(requests)], strict=True)
    ]
    return outcomes, (replies[-1] if wait_replicas else None)


def _prepare(
    task_type: str,
    data: dict | None,
    options: JobOptions | dict | None,
    schedule_id: str | None = None,
    schedule_slot: float | None = None,
    job_id: str | None = None,
    batch_id: str | None = None,
    held: bool = False,
) -> _Request:
    """Validate one request and build its job hash (RQ's layout), script keys and arguments; no Redis call.

    `batch_id`: the batch the job joins (counted into it), or with `held`, whose end releases it (a callback)."""
    task = get_task(task_type)
    opts = options if isinstance(options, JobOptions) else parsed_options(options)
    kwargs = task.bind({} if data is None else data)
    try:  # RQ's job data: (func, instance, args, kwargs)
        payload = to_json((task.name, None, [], kwargs)).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidJobError(f"data for {task.name} is not JSON-serializable: {exc}") from None
    if len(payload) > max_job_data_bytes():
        raise JobDataTooLargeError(len(payload), max_job_data_bytes())

    if task.queue is not None and opts.queue not in (None, task.queue):
        raise InvalidJobError(f"{task.name} runs only on queue {task.queue!r}, not {opts.queue!r}")
    queue_name = opts.queue or task.queue
    if queue_name is None:
        raise InvalidJobError(f"{task.name} runs on any queue: choose one with option 'queue'")
    spec = get_queue_spec(queue_name)
    group = opts.group or task.group_of(kwargs)
    if group and not _is_group(group):
        raise InvalidJobError(f"{task.name}: its group {group[:50]!r} must be a text of 1 to 200 characters, without "
                              "NUL")  # fmt: skip

    job_id = job_id or new_job_id()
    now = time.time()
    created_at = rq_time(now)
    data = zlib.compress(payload) if len(payload) >= COMPRESS_FROM else payload
    description = call_string(task.name, kwargs)
    attempts = opts.attempts or spec.attempts
    intervals = None
    if attempts > 1:
        intervals = f"[{','.join(map(str, retry_intervals(opts.backoff or spec.backoff, attempts - 1)))}]"  # JSON
    if not (opts.delay or schedule_id or schedule_slot is not None or opts.depends_on or opts.dedup or batch_id
            or held or group):  # fmt: skip
        # a plain job (most are): its command is its queue's template with this job's values
        template = _plain_template(task.name, queue_name, spec, opts, stream_cap(), retried=intervals is not None)
        values = (JOB_KEY_PREFIX + job_id, job_id, created_at, data, description, created_at)
        command = template.fill(*values, intervals) if intervals else template.fill(*values)
    else:
        command = _enqueue_command(
            task.name, queue_name, spec, opts, stream_cap(), JOB_KEY_PREFIX + job_id, job_id, created_at, data,
            description, intervals, due=now + opts.delay if opts.delay else 0, schedule_id=schedule_id,
            schedule_slot=rq_time(schedule_slot) if schedule_slot is not None else None, batch_id=batch_id, held=held,
            group=group,
        )  # fmt: skip
    return _Request(job_id, queue_name, task.name, command, opts.depends_on)


@functools.lru_cache(maxsize=256)
def _plain_template(
    task_name: str, queue_name: str, spec: QueueSpec, opts: JobOptions, cap: int, retried: bool
) -> CommandTemplate:
    """The command of a plain job of this type, queue policy and options, with a SLOT for each job's own values
    (packing is most of an enqueue's own time, and most of the arguments are the same for every job); `retried`:
    the job has retry delays (a slot of their own)."""
    return CommandTemplate(_enqueue_command(
        task_name, queue_name, spec, opts, cap, SLOT, SLOT, SLOT, SLOT, SLOT, SLOT if retried else None,
    ))  # fmt: skip


def _enqueue_command(
    task_name: str,
    queue_name: str,
    spec: QueueSpec,
    opts: JobOptions,
    cap: int,
    job_key: Any,
    job_id: Any,
    created_at: Any,
    data: Any,
    description: Any,
    intervals: Any,
    due: float = 0,
    schedule_id: str | None = None,
    schedule_slot: str | None = None,
    batch_id: str | None = None,
    held: bool = False,
    group: str | None = None,
) -> tuple:
    """The enqueue script's call for one job: its keys, arguments and job hash (RQ's layout), as enqueue-5.lua reads
    them. With SLOT for the job's own values, in their order here (job key, id, created_at, data, description,
    enqueued_at = created_at, retry intervals), it is a template (`_plain_template`)."""
    keys = _keys_of(queue_name)
    attempts = opts.attempts or spec.attempts
    priority = opts.priority or PRIORITIES[spec.priority]
    timeout = opts.timeout or spec.timeout
    fields = [
        "created_at", created_at,
        "data", data,
        "origin", queue_name,
        "description", description,
        "timeout", timeout,
        "result_ttl", spec.result_ttl,
        "failure_ttl", spec.failure_ttl,
        "status", _SCHEDULED if due else _QUEUED,
        "priority", priority,
        "attempts", attempts,
    ]  # fmt: skip
    if not due:
        fields += ("enqueued_at", created_at)
    if schedule_id:
        fields += ("schedule_id", schedule_id)
    if schedule_slot is not None:
        fields += ("schedule_slot", schedule_slot)
    if opts.depends_on:  # RQ's fields, so RQ's Job and rq-dashboard show the parents
        fields += ("dependency_ids", to_json(list(opts.depends_on)), "on_parent_failure", opts.on_parent_failure)
    if batch_id:  # a callback is not one of its batch's jobs: its end is not counted into the batch
        fields += ("callback_of" if held else "batch_id", batch_id)
    if group:
        fields += ("group", group)
    if attempts > 1:
        fields += ("retries_left", attempts - 1, "retry_intervals", intervals)
    script_keys = [job_key, keys.lanes[priority], keys.marker, keys.scheduled, QUEUES_SET]
    dedup_ttl = DEDUP_TTL
    if opts.dedup:
        dedup_key = keys.of.dedup(opts.dedup)
        dedup_ttl = timeout + DEDUP_TTL  # past the job's due time
        fields += ("dedup_key", dedup_key, "dedup_ttl", dedup_ttl)
        script_keys.append(dedup_key)
    args = [job_id, keys.queue, due, 0, math.ceil((opts.delay or 0) + dedup_ttl), cap, len(opts.depends_on),
            *opts.depends_on, opts.on_parent_failure, batch_id or "", int(held), group or "",
            opts.group_concurrency or "", *fields]  # fmt: skip
    return SCRIPTS.enqueue.command(script_keys, args)


_QUEUED, _SCHEDULED = JobStatus.QUEUED.value, JobStatus.SCHEDULED.value


class _QueueKeys(NamedTuple):
    """The keys an enqueue writes, built once per queue (a queue's keys follow from its name alone)."""

    of: QueueKeys
    queue: str
    lanes: dict[int, str]  #: by priority
    marker: str
    scheduled: str


@functools.cache
def _keys_of(queue_name: str) -> _QueueKeys:
    keys = queue_keys(queue_name)
    return _QueueKeys(keys, keys.queue, {p: keys.lane(p) for p in PRIORITY_RANGE}, keys.marker, keys.scheduled)


def call_string(name: str, kwargs: dict) -> str:
    """RQ's description of a job, `name(a=1, b='x')`: arguments sorted, each value's repr cut to 75 characters
    (`rq.utils.get_call_string` with max_length=75)."""
    if not kwargs:
        return f"{name}()"
    return f"{name}({', '.join(sorted(f'{k}={_cut(repr(v))}' for k, v in kwargs.items()))})"


def _cut(text: str) -> str:
    return text if len(text) <= 75 else text[:75] + "..."
